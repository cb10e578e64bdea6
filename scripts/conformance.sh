#!/usr/bin/env bash
# Conformance: the unchanged WeChat Pay SDK `wechatpy` (pinned from PyPI) against the simulator.
#
#   ./scripts/conformance.sh
#
# Makes (or reuses) a venv in target/conformance-venv with scripts/conformance/requirements.txt,
# starts `wxpay simulator --mode explicit` on a free loopback port, waits for
# GET /simulator/health, runs scripts/conformance/wechatpy_conformance.py against it, and
# always stops the simulator. Exits with the Python script's status.
#
# Environment:
#   WXPAY_BIN  the wxpay binary (default target/debug/wxpay; a relative path is taken from the
#              repository root). This script never builds it:
#              run `cargo build` yourself first.
#   PYTHON     the interpreter the venv is made from (default python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

WXPAY_BIN=${WXPAY_BIN:-target/debug/wxpay}
PYTHON=${PYTHON:-python3}
VENV=target/conformance-venv
REQUIREMENTS=scripts/conformance/requirements.txt
SCRIPT=scripts/conformance/wechatpy_conformance.py
SIM_LOG=target/conformance-simulator.log

if [[ ! -x "$WXPAY_BIN" ]]; then
    echo "conformance: $WXPAY_BIN is not an executable; build it first (cargo build) or set WXPAY_BIN" >&2
    exit 2
fi

# --- the venv: reused while the requirements and the interpreter are unchanged ------------
stamp="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1) $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
if [[ -x "$VENV/bin/python" && -f "$VENV/.requirements-stamp" && "$(cat "$VENV/.requirements-stamp")" == "$stamp" ]]; then
    echo "conformance: reusing $VENV"
else
    echo "conformance: creating $VENV"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -r "$REQUIREMENTS"
    "$VENV/bin/python" -m pip check --disable-pip-version-check
    echo "$stamp" > "$VENV/.requirements-stamp"
fi

# --- the simulator ------------------------------------------------------------------------
PORT=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
BASE="http://127.0.0.1:$PORT"

SIM_PID=""
cleanup() {
    if [[ -n "$SIM_PID" ]] && kill -0 "$SIM_PID" 2>/dev/null; then
        kill "$SIM_PID" 2>/dev/null || true
        wait "$SIM_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$(dirname "$SIM_LOG")"
"$WXPAY_BIN" simulator --listen "127.0.0.1:$PORT" --mode explicit >"$SIM_LOG" 2>&1 &
SIM_PID=$!
echo "conformance: simulator (pid $SIM_PID) at $BASE, log in $SIM_LOG"

ready=0
for _ in $(seq 1 100); do
    if ! kill -0 "$SIM_PID" 2>/dev/null; then
        echo "conformance: the simulator exited before it answered; its log:" >&2
        cat "$SIM_LOG" >&2
        exit 1
    fi
    if "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1).read()' \
        "$BASE/simulator/health" 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.1
done
if [[ $ready != 1 ]]; then
    echo "conformance: GET $BASE/simulator/health did not answer within about 10 s; the simulator's log:" >&2
    cat "$SIM_LOG" >&2
    exit 1
fi

# --- the SDK against it ---------------------------------------------------------------------
status=0
"$VENV/bin/python" "$SCRIPT" "$BASE" || status=$?
if [[ $status != 0 ]]; then
    echo "conformance: FAILED (exit $status); the simulator's log ($SIM_LOG) ends with:" >&2
    tail -n 40 "$SIM_LOG" >&2
fi
exit "$status"
