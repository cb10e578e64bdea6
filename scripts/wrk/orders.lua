-- wrk: POST /v1/orders, every request a new order number, with the bearer token.
-- Usage: wrk -t T -c C -d D -s scripts/wrk/orders.lua URL -- TOKEN PREFIX
-- An answer counts when it is 201 with pay parameters.
local all_threads = {}

function setup(thread)
  thread:set("index", #all_threads)
  table.insert(all_threads, thread)
end

local headers, prefix
local sequence = 0
answered, succeeded = 0, 0

function init(args)
  headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. args[1] }
  prefix = args[2] .. index .. "x"
end

function request()
  sequence = sequence + 1
  local body = string.format(
    '{"description":"wrk order","amount_fen":8800,"openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o","out_trade_no":"%s%d"}',
    prefix, sequence)
  return wrk.format("POST", "/v1/orders", headers, body)
end

function response(status, headers, body)
  answered = answered + 1
  if status == 201 and body:find("paySign", 1, true) then
    succeeded = succeeded + 1
  end
end

function done(summary, latency, requests)
  local ok = 0
  for _, t in ipairs(all_threads) do
    ok = ok + t:get("succeeded")
  end
  io.write(string.format("WRK requests=%d ok=%d seconds=%.3f p50_ms=%.2f p99_ms=%.2f\n",
    summary.requests, ok, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
