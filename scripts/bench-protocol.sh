#!/usr/bin/env bash
# The protocol benchmarks of issue 2, with their figures as ops/s and as a fraction of the
# hash alone, plus heap allocations per operation. Optionally the peers in the same run:
#
#   scripts/bench-protocol.sh                      # wxpay only
#   PEER_BENCH=/tmp/peer-bench scripts/bench-protocol.sh
#
# PEER_BENCH is a copy of ../shared/bench prepared as its README says (a .venv with the
# locked requirements, `npm ci`, `micro/gen_fixtures.py`); wechatpy and
# wechatpay-axios-plugin then run their own v2 helpers beside ours.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${BENCH_SECONDS:-3}"
PEER_OUT=""
if [ -n "${PEER_BENCH:-}" ]; then
  PEER_OUT="$(mktemp)"
  echo "== peers (wechatpy, wechatpay-axios-plugin), ${SECS}s per benchmark"
  (cd "$PEER_BENCH" && .venv/bin/python micro/bench_wechatpy.py --duration "$SECS" && node micro/bench_axios_plugin.js --duration "$SECS") | tee "$PEER_OUT"
fi
echo "== wxpay criterion benchmarks"
LOG="$(mktemp)"
if ! cargo bench -q -p wxpay-protocol --bench v2 -- --warm-up-time 1 --measurement-time "$SECS" >"$LOG" 2>&1; then
  cat "$LOG"; exit 1
fi
echo "== wxpay allocations"
cargo bench -q -p wxpay-protocol --bench allocations
python3 - "$PEER_OUT" <<'PY'
import json, os, sys
root = "target/criterion"
def ns(group, bench):
    with open(os.path.join(root, group, bench, "new", "estimates.json")) as f:
        return json.load(f)["mean"]["point_estimate"]
rows = []
for t in ["MD5", "HMAC-SHA256"]:
    h = ns(f"v2_{t}", "hash_only"); s = ns(f"v2_{t}", "sign_12_fields")
    rows.append((f"sign 12-field unifiedorder ({t})", s, f"{h/s:.0%} of hash-only ({1e9/h:,.0f}/s)", "target >= 60%"))
for t in ["MD5", "HMAC-SHA256"]:
    r = ns("v2_request", f"unifiedorder_signed_xml_{t}")
    rows.append((f"signed unifiedorder XML ({t})", r, "", "target >= 400,000/s"))
for t in ["MD5", "HMAC-SHA256"]:
    h = ns("v2_notify", f"hash_only_{t}"); p = ns("v2_notify", f"parse_verify_{t}"); rd = ns("v2_notify", f"read_only_{t}")
    rows.append((f"notification parse + verify ({t})", p, f"{h/p:.0%} of hash-only; read alone {1e9/rd:,.0f}/s", "target >= 300,000/s"))
print()
print(f"{'benchmark':<40} {'ns/op':>8} {'ops/s':>12}  notes")
for name, v, note, target in rows:
    print(f"{name:<40} {v:>8.0f} {1e9/v:>12,.0f}  {note} [{target}]")
peer_file = sys.argv[1]
if peer_file:
    peers = [json.loads(l) for l in open(peer_file) if l.startswith("{")]
    ours = {
        "v2.sign.md5": ns("v2_MD5", "sign_12_fields"),
        "v2.sign.hmac_sha256": ns("v2_HMAC-SHA256", "sign_12_fields"),
        "v2.request_build": ns("v2_request", "unifiedorder_signed_xml_MD5"),
        "v2.notify": ns("v2_notify", "parse_verify_MD5"),
    }
    print()
    print(f"{'peer benchmark':<44} {'peer ops/s':>12} {'wxpay ops/s':>12} {'wxpay/peer':>10}")
    for p in peers:
        if p["bench"] in ours:
            w = 1e9 / ours[p["bench"]]
            print(f"{p['peer'] + ' ' + p['bench']:<44} {p['ops_per_s']:>12,.0f} {w:>12,.0f} {w/p['ops_per_s']:>9.1f}x")
PY
