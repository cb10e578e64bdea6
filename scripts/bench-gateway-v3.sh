#!/usr/bin/env bash
# APIv3 beside APIv2 in one run, on the same machine: the gateway's orders/s and
# notifications/s with its CPU time per request, and the ceiling RSA signing sets.
#
#   scripts/bench-gateway-v3.sh                    # SQLite
#   ENGINES="sqlite postgres" scripts/bench-gateway-v3.sh
#
# Orders: `POST /v1/orders` from 64 connections, the simulator in explicit mode (no payment
# follows, so each order costs exactly three RSA-2048 signatures on APIv3: the gateway's
# Authorization and paySign, and the simulator's signed answer; the verifications cost a
# tenth of a signature each and are left out of the ceiling). The ceiling is the rate at which
# this machine could make those signatures and nothing else, measured in this run two ways:
#   all cores: openssl speed -multi <cores> rsa2048 signs/s (every core signing at once) ÷ 3,
#   one core × cores: openssl speed rsa2048 signs/s on one core × cores ÷ 3 (which assumes
#   the cores sign at once as fast as one alone).
# Notifications: POOL orders seeded (not measured), then one first-delivery payment
# notification each from 64 connections; APIv3's are signed with WeChat Pay's public-key
# private half that the simulator writes, and each costs the gateway one RSA verification and
# one AES-GCM decryption.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${SECONDS_PER_RUN:-15}"
POOL="${POOL:-20000}"
ENGINES="${ENGINES:-sqlite}"
PORT="${PORT:-18110}"
SIM_PORT="${SIM_PORT:-18111}"
PG_ADMIN="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
TOKEN=bench-token-0123456789abcdef
WORK=target/bench-gateway-v3
mkdir -p "$WORK"
rm -f "$WORK"/*.txt "$WORK"/gateway.log
[ -n "${NO_BUILD:-}" ] || cargo build -q --release -p wxpay-cli -p wxpay-bench
BIN=target/release/wxpay
BENCH=target/release/wxpay-bench
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh
trap stop_all EXIT

url_for() { if [ "$1" = postgres ]; then fresh_pg; else sqlite_url; fi; }


echo "== openssl speed rsa2048 (one core, then all cores at once), before"
SIGN_BEFORE="$(openssl_signs)"; ALL_BEFORE="$(openssl_signs_all)"; echo "$SIGN_BEFORE signs/s; all cores $ALL_BEFORE signs/s"
for engine in $ENGINES; do
  for api in v2 v3; do
    echo "== $api on $engine: create order, ${SECS}s, 64 connections, simulator in explicit mode"
    url="$(url_for "$engine")"
    start_simulator explicit
    SIM_PID="${PIDS[-1]}"
    start_gateway "$url" "$api"
    # The simulator's CPU over the whole run (warm-up included), in clock ticks: where the
    # machine's time goes besides the gateway.
    sim_before="$(cpu_ticks "$SIM_PID")"
    "$BENCH" gateway --target "http://127.0.0.1:$PORT" --token "$TOKEN" --only orders --duration "$SECS" --pid "$GW_PID" | tee "$WORK/$engine-$api-orders.txt"
    echo "SIMULATOR-TICKS $(( $(cpu_ticks "$SIM_PID") - sim_before )) $(getconf CLK_TCK)" >>"$WORK/$engine-$api-orders.txt"
    stop_all
    echo "== $api on $engine: $POOL first-delivery payment notifications, 64 connections"
    url="$(url_for "$engine")"
    start_simulator explicit
    start_gateway "$url" "$api"
    v3_args=()
    [ "$api" = v3 ] && v3_args=(--v3-keys "$WORK/simulator-keys")
    "$BENCH" gateway --target "http://127.0.0.1:$PORT" --token "$TOKEN" --only notify --pool "$POOL" "${v3_args[@]}" --pid "$GW_PID" | tee "$WORK/$engine-$api-notify.txt"
    stop_all
  done
done
echo "== openssl speed rsa2048 (one core, then all cores at once), after"
SIGN_AFTER="$(openssl_signs)"; ALL_AFTER="$(openssl_signs_all)"; echo "$SIGN_AFTER signs/s; all cores $ALL_AFTER signs/s"
[ "$ENGINES" = sqlite ] || psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS wxpay_bench WITH (FORCE)" >/dev/null 2>&1 || true

echo
echo "== summary (same machine, same run)"
for f in "$WORK"/*-orders.txt "$WORK"/*-notify.txt; do
  printf '%-22s %s\n' "$(basename "$f" .txt)" "$(grep -h '^SUMMARY ' "$f" | sed 's/^SUMMARY //')"
done
CORES="$(nproc)"
python3 - "$SIGN_BEFORE" "$SIGN_AFTER" "$ALL_BEFORE" "$ALL_AFTER" "$CORES" "$WORK" $ENGINES <<'PY'
import re, sys
before, after, all_before, all_after = (float(a) for a in sys.argv[1:5])
cores, work = int(sys.argv[5]), sys.argv[6]
sign = (before + after) / 2
sign_all = (all_before + all_after) / 2
ceiling_all = sign_all / 3
ceiling_one = cores * sign / 3
print(f"RSA-2048 signs/s (openssl, mean of before/after): one core {sign:,.0f}, all {cores} cores at once "
      f"{sign_all:,.0f} ({sign_all / (cores * sign):.0%} of {cores} x one core)")
print(f"v3 order ceiling: all cores {sign_all:,.0f} / 3 signatures = {ceiling_all:,.0f} orders/s; "
      f"one core x {cores} = {ceiling_one:,.0f} orders/s")
sign_us = 1e6 / sign
for engine in sys.argv[7:]:
    text = open(f"{work}/{engine}-v3-orders.txt").read()
    m = re.search(r"SUMMARY wxpay orders: ([0-9.]+)/s", text)
    if not m:
        continue
    rate = float(m.group(1))
    print(f"{engine}: v3 orders {rate:,.0f}/s = {rate / ceiling_all:.0%} of the all-cores ceiling, "
          f"{rate / ceiling_one:.0%} of one core x {cores} (target >= 80%)")
    # Where an order's CPU goes: the gateway's (measured by wxpay-bench) and the simulator's
    # (its clock ticks over the run, warm-up included, so slightly high), against what the
    # signatures alone cost at openssl's one-core rate.
    gw = re.search(r'"cpu_us_per_request":([0-9.]+)', text)
    req = re.search(r'"requests":([0-9]+)', text)
    ticks = re.search(r"SIMULATOR-TICKS ([0-9]+) ([0-9]+)", text)
    if gw and req and ticks:
        gw_us = float(gw.group(1))
        warm = float(req.group(1)) * (1 + 2 / float(re.search(r'"seconds":([0-9.]+)', text).group(1)))
        sim_us = int(ticks.group(1)) * 1e6 / int(ticks.group(2)) / warm
        print(f"{engine}: per v3 order, gateway {gw_us:,.0f} us CPU (its 2 signatures: {2 * sign_us:,.0f} us, "
              f"{2 * sign_us / gw_us:.0%} of it), simulator ~{sim_us:,.0f} us (its signature: {sign_us:,.0f} us); "
              f"signatures are {3 * sign_us / (gw_us + sim_us):.0%} of the two processes' CPU")
PY
