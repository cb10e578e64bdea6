#!/usr/bin/env bash
# The APIv3 protocol benchmarks beside their physical ceiling and the peers, in one run:
#
#   scripts/bench-protocol-v3.sh
#   PEER_BENCH=/tmp/peer-bench scripts/bench-protocol-v3.sh   # and wechatpayv3 (Python)
#
# `openssl speed rsa2048` (one core) is the ceiling of RSA signing on this machine; it runs
# before and after the criterion benchmarks (crates/wxpay-protocol/benches/v3.rs) and the
# mean is compared with wxpay's signing. Targets (issue 12): RSA sign >= 90 % of openssl's;
# a notification verified, decrypted and read >= 30,000/s on one thread.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${BENCH_SECONDS:-3}"
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh
echo "== openssl speed rsa2048, one core"
BEFORE="$(openssl_signs)"; echo "$BEFORE signs/s"
echo "== wxpay criterion benchmarks (v3)"
LOG="$(mktemp)"
if ! cargo bench -q -p wxpay-protocol --bench v3 -- --warm-up-time 1 --measurement-time "$SECS" >"$LOG" 2>&1; then
  cat "$LOG"; exit 1
fi
echo "== openssl speed rsa2048, one core, again"
AFTER="$(openssl_signs)"; echo "$AFTER signs/s"
PEER_OUT=""
if [ -n "${PEER_BENCH:-}" ]; then
  PEER_OUT="$(mktemp)"
  echo "== peer: wechatpayv3 (Python), ${SECS}s per benchmark"
  (cd "$PEER_BENCH" && .venv/bin/python micro/bench_wechatpayv3.py --duration "$SECS") | tee "$PEER_OUT"
fi
python3 - "$BEFORE" "$AFTER" "$PEER_OUT" <<'PY'
import json, os, sys
before, after, peer_file = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
openssl = (before + after) / 2
def per_sec(bench):
    with open(os.path.join("target/criterion/v3", bench, "new", "estimates.json")) as f:
        return 1e9 / json.load(f)["mean"]["point_estimate"]
peer = {}
if peer_file:
    for line in open(peer_file):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        peer[rec["bench"]] = float(rec["ops_per_s"])
rows = [
    ("RSA-2048 sign (SHA256withRSA)", "rsa_sign", "v3.rsa_sign", f"{per_sec('rsa_sign') / openssl:.0%} of openssl's {openssl:,.0f}/s (target >= 90 %)"),
    ("Authorization header", "authorization", "extra.v3.build_authorization", ""),
    ("verify a notification's signature", "rsa_verify", "v3.rsa_verify", ""),
    ("AES-256-GCM decrypt a resource", "aes_gcm_decrypt", "v3.aes_gcm_decrypt", ""),
    ("notification: verify + decrypt + read", "notify_verify_decrypt", "extra.v3.notify_callback", "target >= 30,000/s"),
]
print(f"\n{'operation':40} {'wxpay':>12} {'wechatpayv3':>14}  note")
for name, bench, peer_name, note in rows:
    w = per_sec(bench)
    p = peer.get(peer_name)
    ps = f"{p:,.0f}/s ({w / p:.1f}x)" if p else "-"
    print(f"{name:40} {w:>10,.0f}/s {ps:>14}  {note}")
PY
