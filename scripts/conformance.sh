#!/usr/bin/env bash
# Conformance: the unchanged WeChat Pay SDKs `wechatpy` (APIv2) and `wechatpayv3` (APIv3),
# pinned from PyPI, against `wxpay simulator`, and wechatpy against the gateway, `wxpay serve`.
#
#   ./scripts/conformance.sh
#
# Makes (or reuses) a venv in target/conformance-venv with scripts/conformance/requirements.txt,
# then runs scripts/conformance/run.py, which
#   1. starts `wxpay simulator --tls --bills-immediately` and drives it with wechatpy
#      (wechatpy_conformance.py): orders, the payment notification, refunds over mutual TLS
#      with the merchant certificate, the refund notification, an HMAC-SHA256 merchant,
#      downloadbill, wrong keys;
#   2. starts `wxpay simulator` twice more on one keys folder, with --v3-signer public-key and
#      certificate, and drives APIv3 with wechatpayv3 (wechatpayv3_conformance.py): orders,
#      queries, close, refunds, notifications verified and decrypted by the SDK, certificates,
#      the gzip trade bill;
#   3. starts a second simulator (an MD5 and an HMAC-SHA256 merchant) and `wxpay serve` in
#      front of it on SQLite, creates orders and refunds through the gateway's API and posts
#      payment and refund notifications made with the SDK to the gateway's notify URLs
#      (gateway_conformance.py).
# Every server listens on 127.0.0.1:0 and is found by the address it prints; none inherits a
# WXPAY_* variable of the caller (cleared here, and again by conformance/servers.py, which
# starts them); all are stopped at the end. One line per check; exits non-zero at the first
# failure, after the end of the server logs (kept in target/conformance-logs/).
#
# Environment:
#   WXPAY_BIN  the wxpay binary (default target/debug/wxpay; a relative path is taken from the
#              repository root). This script never builds it: run
#              `cargo build -q -p wxpay-cli` yourself first.
#   PYTHON     the interpreter the venv is made from (default python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${WXPAY_BIN:-target/debug/wxpay}
PYTHON=${PYTHON:-python3}
VENV=target/conformance-venv
REQUIREMENTS=scripts/conformance/requirements.txt
LOGS=target/conformance-logs

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
clear_wxpay_vars
need_binary conformance "$BIN"
python_venv conformance "$VENV" "$REQUIREMENTS" "$PYTHON"

# --- the run: databases, configurations and TLS material in a fresh temporary folder -------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/wxpay-conformance.XXXXXX")
status=0
cleanup() {
    if [[ $status == 0 ]]; then
        rm -rf "$WORK"
    else
        echo "conformance: FAILED (exit $status); configurations and databases kept in $WORK, logs in $LOGS" >&2
    fi
}
trap cleanup EXIT
trap 'status=130; exit 130' INT
trap 'status=143; exit 143' TERM

mkdir -p "$LOGS"
"$VENV/bin/python" -B -u scripts/conformance/run.py "$BIN" "$WORK" "$LOGS" || status=$?
exit "$status"
