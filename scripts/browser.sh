#!/usr/bin/env bash
# The demo and the operator console in a real browser: Debian's chromium (installed here with
# apt-get when missing) driven by playwright-core (pinned in scripts/browser/package-lock.json,
# installed with npm; no browser download). Starts `wxpay demo` on a free data directory, runs
# scripts/browser/demo-and-console.mjs against it, and keeps the screenshots in
# target/browser/.
#
#   scripts/browser.sh          # needs target/debug/wxpay: cargo build -q -p wxpay-cli
#
# Environment: WXPAY_BIN (default target/debug/wxpay), PORT (default 18295).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${WXPAY_BIN:-target/debug/wxpay}
PORT=${PORT:-18295}
OUT=target/browser
for name in "${!WXPAY_@}"; do
    unset "$name"
done
if [[ ! -x "$BIN" ]]; then
    echo "browser: $BIN is not an executable; build it first (cargo build -q -p wxpay-cli) or set WXPAY_BIN" >&2
    exit 2
fi
# Chromium, and a Chinese font, without which the screenshots show boxes for every character.
if ! command -v chromium >/dev/null 2>&1 || ! fc-list :lang=zh | grep -q .; then
    echo "browser: installing Debian's chromium and fonts-wqy-zenhei"
    apt-get install -y -q chromium fonts-wqy-zenhei >/dev/null
fi
(cd scripts/browser && npm ci --no-audit --no-fund --silent)

rm -rf "$OUT"
mkdir -p "$OUT"
"$BIN" demo --listen "127.0.0.1:$PORT" --data-dir "$OUT/demo" >"$OUT/demo.log" 2>&1 &
demo=$!
trap 'kill $demo 2>/dev/null || true; wait $demo 2>/dev/null || true' EXIT
line=""
for _ in $(seq 1 100); do
    line=$(grep -m1 '^console: ' "$OUT/demo.log" || true)
    [[ -n "$line" ]] && curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break
    sleep 0.1
done
if [[ -z "$line" ]]; then
    echo "browser: the demo did not start:" >&2
    cat "$OUT/demo.log" >&2
    exit 1
fi
# console: <base>/console password: <password>
password=${line##* }
BASE="http://127.0.0.1:$PORT" PASSWORD="$password" SHOTS="$OUT" node scripts/browser/demo-and-console.mjs
