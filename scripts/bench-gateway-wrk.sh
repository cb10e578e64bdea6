#!/usr/bin/env bash
# The gateway under a third-party load tool (wrk), with its own CPU time per request.
#
#   scripts/bench-gateway-wrk.sh                 # SQLite, then PostgreSQL when reachable
#   ENGINES=sqlite LOG=warn scripts/bench-gateway-wrk.sh
#
# For each engine, at the default log level (LOG=info: every paid order is logged) unless
# LOG says otherwise:
#   orders: `wrk -t2 -c64` posts POST /v1/orders (a new order number each) for SECONDS, the
#     simulator in auto mode (it pays every order 2 s later, so the gateway also takes their
#     notifications);
#   notifications: POOL orders are created first (not measured) and one signed payment
#     notification per order is written to a file by wxpay-bench; `wrk -t2 -c64` posts them
#     for NOTIFY_SECONDS, each a first delivery (a thread that runs out of its share starts
#     again, and the summary says how many were first deliveries).
# The gateway's CPU time (user + system, /proc/<pid>/stat) is read just before and after each
# wrk run and divided by the requests answered: a figure that drifts far less than
# throughput on shared machines. wrk is installed from Debian's packages when missing.
# PERF=1 also samples the gateway with `perf record` during each wrk run (its own CPU time
# then includes the sampling) and prints the top symbols; the data stays in
# target/bench-gateway-wrk/<run>.perf.data for `perf report -i`.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${SECONDS_PER_RUN:-15}"
NOTIFY_SECS="${NOTIFY_SECONDS:-6}"
POOL="${POOL:-80000}"
LOG="${LOG:-info}"
ENGINES="${ENGINES:-sqlite postgres}"
PORT="${PORT:-18110}"
SIM_PORT="${SIM_PORT:-18111}"
PG_ADMIN="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
TOKEN=bench-token-0123456789abcdef
WORK=target/bench-gateway-wrk
mkdir -p "$WORK"
rm -f "$WORK"/*.txt "$WORK"/gateway.log
if ! command -v wrk >/dev/null; then
  echo "== installing wrk (Debian package)"
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq wrk >/dev/null; else sudo apt-get install -y -qq wrk >/dev/null; fi
fi
[ -n "${NO_BUILD:-}" ] || cargo build -q --release -p wxpay-cli -p wxpay-bench
BIN="${BIN:-target/release/wxpay}"
BENCH=target/release/wxpay-bench
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh
trap stop_all EXIT
export GATEWAY_LOG="$LOG"

# Runs wrk against the gateway, then prints one summary line with the gateway's CPU per
# answered request. Arguments: label, then wrk's arguments.
measure() {
  local label="$1"; shift
  local before after line perf_pid=
  if [ "${PERF:-0}" = 1 ] && command -v perf >/dev/null; then
    perf record -q -F 999 -g -p "$GW_PID" -o "$WORK/$label.perf.data" >/dev/null 2>&1 &
    perf_pid=$!
    sleep 0.5
  fi
  before=$(cpu_ticks "$GW_PID")
  wrk "$@" | tee "$WORK/$label.txt"
  after=$(cpu_ticks "$GW_PID")
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" || true
    echo "== $label: the gateway's top symbols (perf, self time)"
    perf report -i "$WORK/$label.perf.data" --no-children --sort dso,symbol --percent-limit 1.5 --stdio 2>/dev/null \
      | grep -E '^ +[0-9]' | head -25 || true
  fi
  line=$(grep '^WRK ' "$WORK/$label.txt")
  local requests
  requests=$(sed -E 's/.* requests=([0-9]+).*/\1/' <<<"$line")
  awk -v label="$label" -v line="$line" -v t0="$before" -v t1="$after" -v n="$requests" 'BEGIN {
    split(line, kv, " "); for (i in kv) { split(kv[i], p, "="); v[p[1]] = p[2] }
    printf "SUMMARY %-22s %8.0f/s p50 %6.2f ms p99 %6.2f ms ok %d/%d CPU %.0f us/req (%.2f s)\n",
      label, v["requests"] / v["seconds"], v["p50_ms"], v["p99_ms"], v["ok"], v["requests"],
      (t1 - t0) * 10000 / n, (t1 - t0) / 100
  }' | tee -a "$WORK/summary.txt"
}

run_engine() { # name, url-maker
  local name="$1" url
  url="$($2)"
  start_simulator auto
  start_gateway "$url"
  measure "$name-orders" -t2 -c64 -d"${SECS}s" --latency -s scripts/wrk/orders.lua \
    "http://127.0.0.1:$PORT" -- "$TOKEN" "K$(date +%s | tail -c 6)"
  stop_all
  url="$($2)"
  start_simulator explicit
  start_gateway "$url"
  "$BENCH" gateway --target "http://127.0.0.1:$PORT" --token "$TOKEN" --only notify --pool "$POOL" \
    --write-notifications "$WORK/notifications.txt"
  measure "$name-notifications" -t2 -c64 -d"${NOTIFY_SECS}s" --latency -s scripts/wrk/notify.lua \
    "http://127.0.0.1:$PORT" -- "$WORK/notifications.txt" 2
  stop_all
}

for engine in $ENGINES; do
  case "$engine" in
    sqlite) run_engine sqlite sqlite_url ;;
    postgres)
      if psql "$PG_ADMIN" -qc "SELECT 1" >/dev/null 2>&1; then
        run_engine postgres fresh_pg
        psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS wxpay_bench WITH (FORCE)" >/dev/null
      else
        echo "== PostgreSQL not reachable at $PG_ADMIN: skipped"
      fi
      ;;
  esac
done
echo
echo "== summary (gateway log level: $LOG)"
cat "$WORK/summary.txt"
