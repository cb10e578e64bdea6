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
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
clear_wxpay_vars
need_binary browser "$BIN"
# Chromium, and a Chinese font, without which the screenshots show boxes for every character.
if ! command -v chromium >/dev/null 2>&1 || ! fc-list :lang=zh | grep -q .; then
    echo "browser: installing Debian's chromium and fonts-wqy-zenhei"
    apt-get install -y -q chromium fonts-wqy-zenhei >/dev/null
fi
(cd scripts/browser && npm ci --no-audit --no-fund --silent)

rm -rf "$OUT"
mkdir -p "$OUT"
start_demo browser "$BIN" "$PORT" "$OUT/demo"
BASE="http://127.0.0.1:$PORT" PASSWORD="$DEMO_PASSWORD" SHOTS="$OUT" node scripts/browser/demo-and-console.mjs
