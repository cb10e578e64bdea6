#!/usr/bin/env bash
# API fuzzing: schemathesis, pinned from PyPI, against `wxpay demo` (the gateway, the simulator
# and SQLite in one process), driven by the gateway's own /openapi.json.
#
#   scripts/schemathesis.sh                 # MAX_EXAMPLES=50 per operation, seed 1
#   MAX_EXAMPLES=500 SEED=7 scripts/schemathesis.sh
#
# Every check schemathesis has runs (`--checks all`), with scripts/schemathesis/schemathesis.toml
# saying which statuses are expected beyond its defaults (and why). It fails on any answer the
# document does not describe (status, content type, body schema), a 500, a schema-valid request
# refused with something other than a documented refusal, or a schema-violating one accepted.
# The venv (target/schemathesis-venv) is made once from requirements.txt and reused while the
# requirements and the interpreter are unchanged. The report goes to target/schemathesis/.
#
# Environment: WXPAY_BIN (default target/debug/wxpay; this script never builds it),
# PYTHON (default python3), MAX_EXAMPLES, SEED, PORT (default 18290).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${WXPAY_BIN:-target/debug/wxpay}
PYTHON=${PYTHON:-python3}
VENV=target/schemathesis-venv
REQUIREMENTS=scripts/schemathesis/requirements.txt
OUT=target/schemathesis
PORT=${PORT:-18290}
for name in "${!WXPAY_@}"; do
    unset "$name"
done
if [[ ! -x "$BIN" ]]; then
    echo "schemathesis: $BIN is not an executable; build it first (cargo build -q -p wxpay-cli) or set WXPAY_BIN" >&2
    exit 2
fi

stamp="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1) $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
if [[ -x "$VENV/bin/st" && -f "$VENV/.requirements-stamp" && "$(cat "$VENV/.requirements-stamp")" == "$stamp" ]]; then
    echo "schemathesis: reusing $VENV"
else
    echo "schemathesis: creating $VENV"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -r "$REQUIREMENTS"
    echo "$stamp" >"$VENV/.requirements-stamp"
fi

rm -rf "$OUT"
mkdir -p "$OUT"
"$BIN" demo --listen "127.0.0.1:$PORT" --data-dir "$OUT/demo" >"$OUT/demo.log" 2>&1 &
demo=$!
trap 'kill $demo 2>/dev/null || true; wait $demo 2>/dev/null || true' EXIT
token=""
for _ in $(seq 1 100); do
    token=$(grep -o 'Bearer demo_[0-9a-f]*' "$OUT/demo.log" | head -1 | cut -d' ' -f2 || true)
    [[ -n "$token" ]] && curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break
    sleep 0.1
done
if [[ -z "$token" ]]; then
    echo "schemathesis: the demo did not start:" >&2
    cat "$OUT/demo.log" >&2
    exit 1
fi

"$VENV/bin/st" --config-file scripts/schemathesis/schemathesis.toml run \
    "http://127.0.0.1:$PORT/openapi.json" \
    --header "Authorization: Bearer $token" \
    --checks all \
    --max-examples "${MAX_EXAMPLES:-50}" \
    --seed "${SEED:-1}" \
    --workers 1 \
    --generation-database none \
    --no-color \
    --report junit --report-dir "$OUT"
