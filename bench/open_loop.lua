-- wrk script: an open-loop (fixed-rate) load, what wrk2 does, on Debian's wrk. Run with one connection per
-- thread (wrk -tC -cC): wrk's callbacks do not say which connection they are for, but a thread's Lua state
-- then has exactly one, so it knows when that connection's request was due.
--
-- BENCH_RATE requests/s in all for BENCH_SECONDS, starting BENCH_LEAD seconds after wrk starts (time to
-- connect). Request j of connection i (i = 1..C) is due at t0 + (i-1)/RATE + j*C/RATE: together every
-- 1/RATE s. delay() holds each request until it is due; its latency is counted from when it was DUE (or
-- sent, if a ms timer let it go early), so a server that falls behind shows its queueing (no coordinated
-- omission). Requests due but not answered when the run ends count with the time they had waited so far (a
-- lower bound) and are reported as `unanswered`. Prints one JSON line (BENCH_RESULT) with the percentiles.
-- Bodies, path and key as in bodies.lua.
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clock_id, bench_timespec *tp);
]]
local timespec = ffi.new("bench_timespec")
local function now()  -- CLOCK_MONOTONIC, seconds
  ffi.C.clock_gettime(1, timespec)
  return tonumber(timespec.tv_sec) + tonumber(timespec.tv_nsec) * 1e-9
end

local bodies_file = os.getenv("BENCH_BODIES")
local path = os.getenv("BENCH_PATH") or "/v1/events"
local key = os.getenv("BENCH_KEY") or ""
local rate = tonumber(os.getenv("BENCH_RATE"))
local seconds = tonumber(os.getenv("BENCH_SECONDS"))
local lead = tonumber(os.getenv("BENCH_LEAD") or "1")

local threads = {}
local start = now() + lead  -- t0 of the run (the main state's, given to every thread in setup)

function setup(thread)
  thread:set("id", #threads + 1)
  thread:set("t0", start)
  table.insert(threads, thread)
end

function init(args)
  local conns = #threads > 0 and #threads or tonumber(os.getenv("BENCH_CONNECTIONS"))
  reqs = {}
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}
  local f = assert(io.open(bodies_file, "rb"))
  for line in f:lines() do
    if #line > 0 then
      reqs[#reqs + 1] = wrk.format("POST", path, headers, line)
    end
  end
  f:close()
  idx = id % #reqs
  interval = conns / rate
  first = t0 + (id - 1) / rate
  -- this connection's share of the run's requests: those due before t0 + seconds
  scheduled = math.max(0, math.ceil((t0 + seconds - first) / interval))
  sent, answered, ok = 0, 0, 0
  statuses = {}
  lat = {}  -- microseconds, one per answered request
  due_of_sent = 0
  start_of_sent = 0
end

function delay()
  if sent >= scheduled then
    return 3600 * 1000  -- nothing more to send: idle until wrk stops the run
  end
  local wait = first + sent * interval - now()
  return wait > 0 and math.ceil(wait * 1000) or 0
end

function request()
  idx = idx % #reqs + 1
  due_of_sent = first + sent * interval
  start_of_sent = now()
  sent = sent + 1
  return reqs[idx]
end

function response(status, headers, body)
  answered = answered + 1
  if status == 200 then ok = ok + 1 end
  statuses[status] = (statuses[status] or 0) + 1
  lat[#lat + 1] = math.floor((now() - math.min(due_of_sent, start_of_sent)) * 1e6)
end

function done(summary, latency, requests)
  local ended = now()
  local all, n_ok, n_scheduled, unanswered, status_counts = {}, 0, 0, 0, {}
  for _, t in ipairs(threads) do
    for _, v in ipairs(t:get("lat")) do all[#all + 1] = v end
    n_ok = n_ok + t:get("ok")
    local scheduled, answered = t:get("scheduled"), t:get("answered")
    n_scheduled = n_scheduled + scheduled
    local interval, first = t:get("interval"), t:get("first")
    for j = answered, scheduled - 1 do  -- due, never answered: waited at least until now
      all[#all + 1] = math.floor((ended - (first + j * interval)) * 1e6)
      unanswered = unanswered + 1
    end
    for status, n in pairs(t:get("statuses")) do
      status_counts[status] = (status_counts[status] or 0) + n
    end
  end
  table.sort(all)
  local function q(p)
    if #all == 0 then return 0 end
    return all[math.max(1, math.min(#all, math.ceil(p / 100 * #all)))]
  end
  local sum = 0
  for _, v in ipairs(all) do sum = sum + v end
  local parts = {}
  for status, n in pairs(status_counts) do parts[#parts + 1] = string.format('"%d":%d', status, n) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"tool":"wrk open loop","offered_rate":%.1f,"seconds":%.1f,"connections":%d,' ..
    '"scheduled":%d,"ok":%d,"unanswered":%d,"statuses":{%s},' ..
    '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d},' ..
    '"service_us":{"mean":%.1f,"p50":%d,"p99":%d,"max":%d}}\n',
    rate, seconds, #threads, n_scheduled, n_ok, unanswered, table.concat(parts, ","),
    e.connect, e.read, e.write, e.timeout,
    #all > 0 and sum / #all or 0, q(50), q(90), q(99), q(99.9), #all > 0 and all[#all] or 0,
    latency.mean, latency:percentile(50), latency:percentile(99), latency.max))
end
