#!/usr/bin/env bash
# Reconciling a day of 100,000 bill rows (payments and refunds) against the database, on
# SQLite and PostgreSQL: download, parse with exact fen, read the day's records, compare.
#
#   scripts/bench-reconcile.sh                 # both engines (PostgreSQL at DATABASE_URL)
#   TRANSACTIONS=200000 scripts/bench-reconcile.sh
#
# The database is seeded through the gateway's own store (not timed); the bill is written by
# the protocol crate's bill writer (the simulator's) and served from the benchmark process.
# No open-source peer reconciles against the bill, so there is no ratio to report; the
# target is <= 10 s.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${TRANSACTIONS:-100000}"
PG_ADMIN="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
cargo build --release -q -p wxpay-bench
echo "== SQLite (synchronous=FULL)"
./target/release/wxpay-bench reconcile --transactions "$N"
if command -v psql >/dev/null && psql "$PG_ADMIN" -qc "SELECT 1" >/dev/null 2>&1; then
  DB="wxpay_bench_reconcile_$$"
  psql "$PG_ADMIN" -qc "CREATE DATABASE $DB"
  trap 'psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"' EXIT
  echo "== PostgreSQL"
  ./target/release/wxpay-bench reconcile --transactions "$N" --database "${PG_ADMIN%/*}/$DB"
else
  echo "(PostgreSQL not reachable at $PG_ADMIN: skipped)"
fi
