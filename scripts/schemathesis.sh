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
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
clear_wxpay_vars
need_binary schemathesis "$BIN"
python_venv schemathesis "$VENV" "$REQUIREMENTS" "$PYTHON"

rm -rf "$OUT"
mkdir -p "$OUT"
start_demo schemathesis "$BIN" "$PORT" "$OUT/demo"

"$VENV/bin/st" --config-file scripts/schemathesis/schemathesis.toml run \
    "http://127.0.0.1:$PORT/openapi.json" \
    --header "Authorization: Bearer $DEMO_TOKEN" \
    --checks all \
    --max-examples "${MAX_EXAMPLES:-50}" \
    --seed "${SEED:-1}" \
    --workers 1 \
    --generation-database none \
    --no-color \
    --report junit --report-dir "$OUT"
