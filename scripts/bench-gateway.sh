#!/usr/bin/env bash
# The gateway's load figures, beside the peer a merchant would run instead, in one run.
#
#   scripts/bench-gateway.sh                      # wxpay on SQLite and PostgreSQL
#   PEER_BENCH=/tmp/peer-bench scripts/bench-gateway.sh   # and the wechatpy + FastAPI peer
#   ONLY_JUNK=1 scripts/bench-gateway.sh          # only genuine notifications beside junk
#
# For each engine: `wxpay serve` with the simulator in auto mode (every order paid after 2 s,
# its notification sent to the gateway) takes `POST /v1/orders` from 64 connections for
# SECONDS_PER_RUN seconds; then, with the simulator in explicit mode, POOL orders are created
# (not measured) and one signed payment notification per order is sent from 64 connections
# (first deliveries only: every one moves an order to paid in its own durable transaction).
# The gateway runs with synchronous=FULL on SQLite and default (synchronous_commit=on)
# PostgreSQL: every acknowledged write is durable; it logs at its default level, info
# (GATEWAY_LOG=warn to compare). wxpay-bench reports the gateway's CPU time per request.
#
# The peer (PEER_BENCH: a copy of ../shared/bench after its setup.sh) is the same load from
# the same generator against its POST /orders and POST /notify, with its own mock upstream.
# Each is measured twice: as fast as answers come (the ceiling; at 64 connections its
# latency is mostly queueing) and open loop at the target rate (ORDER_RATE, NOTIFY_RATE:
# latency counted from when each request was due, so a stall cannot hide).
# Absolute figures drift on shared machines; compare within one run.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${SECONDS_PER_RUN:-15}"
POOL="${POOL:-60000}"
ORDER_RATE="${ORDER_RATE:-3000}"
NOTIFY_RATE="${NOTIFY_RATE:-10000}"
PEER_POOL="${PEER_POOL:-10000}"
JUNK_POOL="${JUNK_POOL:-20000}"
JUNK_NOTIFY_RATE="${JUNK_NOTIFY_RATE:-1000}"
JUNK_CONNECTIONS="${JUNK_CONNECTIONS:-16}"
PORT="${PORT:-18100}"
SIM_PORT="${SIM_PORT:-18101}"
PG_ADMIN="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
TOKEN=bench-token-0123456789abcdef
WORK=target/bench-gateway
mkdir -p "$WORK"
rm -f "$WORK"/*.txt "$WORK"/gateway.log
[ -n "${NO_BUILD:-}" ] || cargo build -q --release -p wxpay-cli -p wxpay-bench
BIN=target/release/wxpay
BENCH=target/release/wxpay-bench
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh
trap 'stop_all; [ -n "${PEER_BENCH:-}" ] && (cd "$PEER_BENCH" && service/run_peer.sh stop >/dev/null 2>&1) || true' EXIT

run_engine() { # name, url-maker
  local name="$1" url
  for mode in closed open; do
    local rate=() what="as fast as answers come"
    if [ "$mode" = open ]; then rate=(--rate "$ORDER_RATE"); what="open loop at ${ORDER_RATE}/s offered"; fi
    echo "== wxpay on $name: create order, ${SECS}s, 64 connections, $what, simulator in auto mode"
    url="$($2)"
    start_simulator auto
    start_gateway "$url"
    "$BENCH" gateway --target "http://127.0.0.1:$PORT" --token "$TOKEN" --only orders --duration "$SECS" "${rate[@]}" --pid "$GW_PID" | tee "$WORK/$name-$mode-orders.txt"
    stop_all
  done
  for mode in closed open; do
    local rate=() what="as fast as answers come"
    if [ "$mode" = open ]; then rate=(--notify-rate "$NOTIFY_RATE"); what="open loop at ${NOTIFY_RATE}/s offered"; fi
    echo "== wxpay on $name: $POOL first-delivery payment notifications, 64 connections, $what"
    url="$($2)"
    start_simulator explicit
    start_gateway "$url"
    "$BENCH" gateway --target "http://127.0.0.1:$PORT" --token "$TOKEN" --only notify --pool "$POOL" "${rate[@]}" --pid "$GW_PID" | tee "$WORK/$name-$mode-notify.txt"
    stop_all
  done
}

# Genuine notifications at JUNK_NOTIFY_RATE/s (open loop) alone, then beside
# JUNK_CONNECTIONS connections sending rejected notifications as fast as they are answered:
# the p99 of the genuine ones should not move (rejections are recorded within a per-minute
# budget, off the request's path).
run_junk() { # name, url-maker
  local name="$1" url
  for junk in 0 "$JUNK_CONNECTIONS"; do
    echo "== wxpay on $name: $JUNK_POOL notifications at ${JUNK_NOTIFY_RATE}/s offered, $junk junk connections beside them"
    url="$($2)"
    start_simulator explicit
    start_gateway "$url"
    "$BENCH" gateway --target "http://127.0.0.1:$PORT" --token "$TOKEN" --only notify --pool "$JUNK_POOL" \
      --notify-rate "$JUNK_NOTIFY_RATE" --junk-connections "$junk" --pid "$GW_PID" | tee "$WORK/$name-junk$junk-notify.txt"
    stop_all
  done
}

if [ -n "${ONLY_JUNK:-}" ]; then
  run_junk sqlite sqlite_url
  psql "$PG_ADMIN" -qc "SELECT 1" >/dev/null 2>&1 && run_junk postgres fresh_pg
  grep -h "^SUMMARY \|^junk" "$WORK"/*junk*-notify.txt
  exit 0
fi

run_engine sqlite sqlite_url
run_junk sqlite sqlite_url
if psql "$PG_ADMIN" -qc "SELECT 1" >/dev/null 2>&1; then
  run_engine postgres fresh_pg
  run_junk postgres fresh_pg
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS wxpay_bench WITH (FORCE)" >/dev/null
else
  echo "== PostgreSQL not reachable at $PG_ADMIN: skipped"
fi

if [ -n "${PEER_BENCH:-}" ]; then
  echo "== peer (wechatpy + FastAPI/uvicorn, 2 workers, SQLite synchronous=NORMAL): create order, ${SECS}s, 64 connections"
  (cd "$PEER_BENCH" && service/run_peer.sh stop >/dev/null 2>&1 || true; service/run_peer.sh start >/dev/null)
  "$BENCH" gateway --api peer --target http://127.0.0.1:8000 --only orders --duration "$SECS" | tee "$WORK/peer-closed-orders.txt"
  echo "== peer: $PEER_POOL first-delivery payment notifications, 64 connections"
  "$BENCH" gateway --api peer --target http://127.0.0.1:8000 --only notify --pool "$PEER_POOL" | tee "$WORK/peer-closed-notify.txt"
  (cd "$PEER_BENCH" && service/run_peer.sh stop >/dev/null)
fi

echo
echo "== summary (same machine, same run)"
for f in "$WORK"/*-orders.txt "$WORK"/*-notify.txt; do
  [ -f "$f" ] && printf '%-28s %s\n' "$(basename "$f" .txt)" "$(grep -h '^SUMMARY ' "$f" | sed 's/^SUMMARY //')"
done
