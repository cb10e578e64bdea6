# Shared by the load scripts (sourced, not run): start and stop the simulator and the
# gateway, wait for them, make a fresh SQLite or PostgreSQL database, read a process's CPU
# time, measure OpenSSL's RSA signing. The caller sets BIN, WORK,
# PORT, SIM_PORT, TOKEN and PG_ADMIN; GW_PID is the running gateway's pid.
PIDS=()
stop_all() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done; PIDS=(); }
wait_http() { for _ in $(seq 1 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "timeout waiting for $1" >&2; exit 1; }

start_simulator() { # mode
  WXPAY_LOG=warn "$BIN" simulator --listen "127.0.0.1:$SIM_PORT" --mode "$1" --keys-dir "$WORK/simulator-keys" --openid oUpF8uMuAJO_M2pxb1Q9zNjWeS6o >"$WORK/simulator.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$SIM_PORT/simulator/health"
}

start_gateway() { # database url [v3]
  local merchant_api
  if [ "${2:-}" = v3 ]; then
    # The default merchant on APIv3, with the keys the simulator made in its keys folder.
    local keys="$WORK/simulator-keys"
    merchant_api="api_version = \"v3\"
apiv3_key = \"wxpaySimulatorApiV3TestKey000001\"
serial_no = \"$(tr -d '\n' <"$keys/1230000109/apiclient_serial")\"
key_path = \"$keys/1230000109/apiclient_key.pem\"
wechatpay_public_key_path = \"$keys/pub_key.pem\"
wechatpay_public_key_id = \"$(tr -d '\n' <"$keys/pub_key_id")\""
  else
    merchant_api='api_key = "wxpaySimulatorTestKey0000000000A"'
  fi
  cat >"$WORK/wxpay.toml" <<EOF
[server]
listen = "127.0.0.1:$PORT"
public_url = "http://127.0.0.1:$PORT"
api_tokens = ["$TOKEN"]

[database]
url = "$1"
pool_size = 16

[[merchants]]
name = "default"
appid = "wxd678efh567hg6787"
app_secret = "wxpaysimulatortestappsecret00000"
mch_id = "1230000109"
$merchant_api
base_url = "http://127.0.0.1:$SIM_PORT"
sns_base_url = "http://127.0.0.1:$SIM_PORT"
EOF
  # The gateway logs at its default level (every paid order at info) unless GATEWAY_LOG says
  # otherwise: that is what a merchant runs.
  WXPAY_LOG="${GATEWAY_LOG:-info}" "$BIN" serve --config "$WORK/wxpay.toml" >>"$WORK/gateway.log" 2>&1 &
  GW_PID=$!
  PIDS+=($GW_PID)
  wait_http "http://127.0.0.1:$PORT/readyz"
}

fresh_pg() {
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS wxpay_bench WITH (FORCE)" >/dev/null
  psql "$PG_ADMIN" -qc "CREATE DATABASE wxpay_bench" >/dev/null
  echo "${PG_ADMIN%/*}/wxpay_bench"
}

sqlite_url() { rm -f "$WORK"/bench.db*; echo "sqlite://$WORK/bench.db"; }

cpu_ticks() { # pid → user + system clock ticks (USER_HZ = 100)
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# RSA-2048 signs/s on one core: the machine-readable line `+F2:<index>:<bits>:<signs/s>:
# <verifies/s>` (OpenSSL 3), not the table, whose columns differ between OpenSSL versions.
openssl_signs() { openssl speed -mr -seconds 3 rsa2048 2>/dev/null | awk -F: '/^\+F2:/ {print $4}'; }
# The same with every core signing at once (`-multi`, the children's sum): what the machine
# signs in all, which can be less than one core's rate times the cores when the cores share
# execution units or the host's power budget (here 89 % in one run and 104 % in the next:
# these shared machines drift by more than the difference).
openssl_signs_all() { openssl speed -mr -seconds 3 -multi "$(nproc)" rsa2048 2>/dev/null | awk -F: '/^\+F2:/ {print $4}'; }
