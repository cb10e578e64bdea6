-- wrk: POST /notify/v2/pay, each request the next signed notification of a file written by
-- `wxpay-bench gateway --only notify --write-notifications FILE` (one body per line).
-- Usage: wrk -t T -c C -d D -s scripts/wrk/notify.lua URL -- FILE T
-- Thread k takes lines k, k+T, k+2T, ...; a thread that runs out starts its share again,
-- and those repeats are duplicates (counted apart in the summary line).
local all_threads = {}

function setup(thread)
  thread:set("index", #all_threads)
  table.insert(all_threads, thread)
end

local bodies = {}
local next_body = 0
answered, succeeded, share = 0, 0, 0

function init(args)
  local file, count = args[1], tonumber(args[2])
  local line_no = 0
  for line in io.lines(file) do
    if line_no % count == index then
      bodies[#bodies + 1] = wrk.format("POST", "/notify/v2/pay", { ["Content-Type"] = "text/xml" }, line)
    end
    line_no = line_no + 1
  end
  share = #bodies
  assert(share > 0, "no notification for this thread")
end

function request()
  next_body = next_body % share + 1
  return bodies[next_body]
end

function response(status, headers, body)
  answered = answered + 1
  if status == 200 and body:find("<return_code><![CDATA[SUCCESS]]></return_code>", 1, true) then
    succeeded = succeeded + 1
  end
end

function done(summary, latency, requests)
  local ok, firsts = 0, 0
  for _, t in ipairs(all_threads) do
    ok = ok + t:get("succeeded")
    firsts = firsts + math.min(t:get("answered"), t:get("share"))
  end
  io.write(string.format("WRK requests=%d ok=%d first_deliveries=%d seconds=%.3f p50_ms=%.2f p99_ms=%.2f\n",
    summary.requests, ok, firsts, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
