-- wrk script: POST pre-generated bodies (one JSON document per line of BENCH_BODIES) to BENCH_PATH with the
-- benchmark's API key, cycling through them; counts statuses and stops a thread after BENCH_MAX_REQUESTS
-- responses; prints one JSON line (prefixed BENCH_RESULT) with throughput, latency percentiles and statuses.
local bodies_file = os.getenv("BENCH_BODIES")
local path = os.getenv("BENCH_PATH") or "/v1/events"
local key = os.getenv("BENCH_KEY") or ""
local max_requests = tonumber(os.getenv("BENCH_MAX_REQUESTS") or "0")

local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  reqs = {}
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}
  local f = assert(io.open(bodies_file, "rb"))
  for line in f:lines() do
    if #line > 0 then
      reqs[#reqs + 1] = wrk.format("POST", path, headers, line)
    end
  end
  f:close()
  math.randomseed(id * 7919)
  idx = math.random(#reqs)
  ok = 0
  bad = 0
  last_bad = 0
  seen = 0
end

function request()
  idx = idx % #reqs + 1
  return reqs[idx]
end

function response(status, headers, body)
  seen = seen + 1
  if status == 200 then
    ok = ok + 1
  else
    bad = bad + 1
    last_bad = status
  end
  if max_requests > 0 and seen >= max_requests then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local ok_total, bad_total, last = 0, 0, 0
  for _, t in ipairs(threads) do
    ok_total = ok_total + t:get("ok")
    bad_total = bad_total + t:get("bad")
    if t:get("last_bad") ~= 0 then last = t:get("last_bad") end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"duration_us":%d,"requests":%d,"bytes":%d,"ok":%d,"non200":%d,"last_non200":%d,' ..
    '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.duration, summary.requests, summary.bytes, ok_total, bad_total, last,
    e.connect, e.read, e.write, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
