#!/usr/bin/env bash
# The console's orders page with a million orders in the database, on SQLite and PostgreSQL:
# the latency of each kind of query an operator makes, sequentially, as one browser does.
#
#   scripts/bench-console.sh                          # SQLite, 1,000,000 orders
#   ENGINES="sqlite postgres" ORDERS=1000000 REQUESTS=200 scripts/bench-console.sh
#
# The orders are seeded straight into a migrated database (not through the API: a million
# orders through WeChat Pay's signatures would take the run's hours): 50,000 payers, 60 %
# paid, 20 % closed, 20 % pending, one every 30 s back from now (about a year). Then `wxpay
# serve` runs with the console on, a session is signed in once, and each page below is asked
# REQUESTS times, one at a time; p50, p99 and the largest are printed per page. The target is
# p99 <= 50 ms for every orders page; the overview, which sums 30 days of orders, is shown
# beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINES="${ENGINES:-sqlite}"
ORDERS="${ORDERS:-1000000}"
REQUESTS="${REQUESTS:-200}"
PORT="${PORT:-18120}"
SIM_PORT="${SIM_PORT:-18121}"
PG_ADMIN="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
TOKEN=bench-token-0123456789abcdef
PASSWORD=bench-console-password
WORK=target/bench-console
mkdir -p "$WORK"
[ -n "${NO_BUILD:-}" ] || cargo build -q --release -p wxpay-cli -p wxpay-bench
BIN=target/release/wxpay
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh
trap stop_all EXIT

HASH="$(printf '%s\n' "$PASSWORD" | "$BIN" console hash-password)"
NOW_MS="$(($(date +%s) * 1000))"

seed_sql() { # the INSERT … SELECT over the numbers 1..ORDERS in `n(i)`
  cat <<SQL
INSERT INTO orders (merchant, out_trade_no, appid, mch_id, description, amount_fen, openid, client_ip,
                    status, upstream, prepay_id, transaction_id, created_at, updated_at, expires_at,
                    paid_at, closed_at, request_hash)
SELECT 'default', 'S' || i, 'wxd678efh567hg6787', '1230000109', 'seeded order', 100 + i % 5000,
       'oSeedPayer' || (i % 50000), '127.0.0.1',
       CASE WHEN i % 10 < 6 THEN 'paid' WHEN i % 10 < 8 THEN 'closed' ELSE 'pending' END, 'created',
       'wx' || i, CASE WHEN i % 10 < 6 THEN '420000' || i END,
       $NOW_MS - ($ORDERS - i) * 30000, $NOW_MS - ($ORDERS - i) * 30000,
       $NOW_MS - ($ORDERS - i) * 30000 + 7200000,
       CASE WHEN i % 10 < 6 THEN $NOW_MS - ($ORDERS - i) * 30000 + 60000 END,
       CASE WHEN i % 10 IN (6, 7) THEN $NOW_MS - ($ORDERS - i) * 30000 + 7200000 END, 'seeded'
SQL
}

config() { # database url
  cat >"$WORK/wxpay.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
public_url = "http://127.0.0.1:$PORT"
api_tokens = ["$TOKEN"]

[database]
url = "$1"

[jobs]
enabled = false

[console]
password_hash = "$HASH"

[[merchants]]
name = "default"
appid = "wxd678efh567hg6787"
mch_id = "1230000109"
api_key = "wxpaySimulatorTestKey0000000000A"
base_url = "http://127.0.0.1:$SIM_PORT"
TOML
}

for engine in $ENGINES; do
  echo "== $engine: seeding $ORDERS orders"
  if [ "$engine" = postgres ]; then url="$(fresh_pg)"; else url="$(sqlite_url)"; fi
  config "$url"
  "$BIN" migrate --config "$WORK/wxpay.toml" >/dev/null 2>&1
  start=$(date +%s)
  if [ "$engine" = postgres ]; then
    { echo "BEGIN;"; echo "WITH n(i) AS (SELECT generate_series(1, $ORDERS)::BIGINT)"; seed_sql; echo "FROM n;"; echo "COMMIT; ANALYZE orders;"; } \
      | psql -q -v ON_ERROR_STOP=1 "$url" >/dev/null
  else
    { echo "BEGIN;"; echo "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $ORDERS)"; seed_sql; echo "FROM n;"; echo "COMMIT; ANALYZE;"; } \
      | sqlite3 -bail "${url#sqlite://}"
  fi
  echo "seeded in $(( $(date +%s) - start )) s"
  WXPAY_LOG=warn "$BIN" serve --config "$WORK/wxpay.toml" >>"$WORK/gateway.log" 2>&1 &
  GW_PID=$!
  PIDS+=($GW_PID)
  wait_http "http://127.0.0.1:$PORT/readyz"
  python3 - "$PORT" "$PASSWORD" "$REQUESTS" "$ORDERS" "$engine" <<'PY'
import http.client, re, sys, time, urllib.parse
port, password, n, orders, engine = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
conn = http.client.HTTPConnection("127.0.0.1", int(port))
cookies = {}
def call(method, path, body=None):
    headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, path, body, headers)
    r = conn.getresponse()
    text = r.read().decode()
    for k, v in r.getheaders():
        if k.lower() == "set-cookie":
            name, value = v.split(";")[0].split("=", 1)
            cookies[name] = value
    return r.status, text
status, page = call("GET", "/console/login")
csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
status, _ = call("POST", "/console/login", urllib.parse.urlencode({"password": password, "csrf": csrf}))
assert status == 303, status
last = orders
pages = [
    ("newest", "/console/orders"),
    ("status=pending", "/console/orders?status=pending"),
    ("q=out_trade_no", f"/console/orders?q=S{last // 2}"),
    ("q=transaction_id", f"/console/orders?q=420000{last // 2 - (last // 2) % 10}"),
    ("q=openid", "/console/orders?q=oSeedPayer4242"),
    ("q=no match", "/console/orders?q=oNobody"),
    ("one day, a year ago", "/console/orders?from={0}&to={0}".format(time.strftime("%Y-%m-%d", time.gmtime(time.time() + 8 * 3600 - 330 * 86400)))),
    ("merchant+status+day", "/console/orders?merchant=default&status=paid&from={0}&to={0}".format(time.strftime("%Y-%m-%d", time.gmtime(time.time() + 8 * 3600 - 30 * 86400)))),
    ("page 100 (cursor)", f"/console/orders?cursor={last - 5000}"),
    ("an order", f"/console/orders/S{last // 3}?merchant=default"),
    # Read at most once a minute: the first request sums 30 days, the others reuse it.
    ("overview (30 days)", "/console"),
]
print(f"{'page':24} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  rows")
worst = 0.0
for name, path in pages:
    orders_page = path.startswith("/console/orders")
    times = []
    for _ in range(n):
        t = time.perf_counter()
        status, text = call("GET", path)
        times.append((time.perf_counter() - t) * 1000)
        assert status == 200, (path, status, text[:300])
    rows = text.count("<tr>") - 1 if "<table>" in text else 0
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    if orders_page:
        worst = max(worst, p99)
    print(f"{name:24} {times[len(times) // 2]:8.2f} {p99:8.2f} {times[-1]:8.2f}  {rows}")
print(f"SUMMARY {engine} {orders} orders: worst p99 of the orders pages {worst:.2f} ms (target 50)")
PY
  stop_all
done
[ "$ENGINES" = sqlite ] || psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS wxpay_bench WITH (FORCE)" >/dev/null 2>&1 || true
