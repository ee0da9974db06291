-- wrk script for bench/ingest.py: every request is a distinct, pre-signed webhook.
--
-- Usage: wrk ... -s bench/ingest.lua URL -- EVENTS_PREFIX
-- Thread N reads EVENTS_PREFIX.N (lines of "webhook-id TAB timestamp TAB signature TAB body"),
-- formats every request once in init() (before wrk starts its clock), and request() only hands
-- them out in turn. Should a thread run out it wraps around and counts it: bench/ingest.py then
-- throws the run away and runs it again with more events, so no figure ever counts a duplicate.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("index", #threads)
end

local requests = {}
local count, next_one = 0, 0
wrapped = 0

function init(args)
  for line in io.lines(args[1] .. "." .. index) do
    local id, timestamp, signature, body = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)\t(.*)$")
    count = count + 1
    requests[count] = wrk.format("POST", wrk.path, {
      ["Content-Type"] = "application/json",
      ["webhook-id"] = id,
      ["webhook-timestamp"] = timestamp,
      ["webhook-signature"] = signature,
    }, body)
  end
end

function request()
  next_one = next_one + 1
  if next_one > count then
    next_one = 1
    wrapped = wrapped + 1
  end
  return requests[next_one]
end

-- One parseable line; bench/ingest.py reads it. Times are microseconds.
function done(summary, latency, rates)
  local wraps = 0
  for _, thread in ipairs(threads) do
    wraps = wraps + (thread:get("wrapped") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d non2xx=%d connect=%d read=%d write=%d timeout=%d p50_us=%d p99_us=%d wrapped=%d\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50.0), latency:percentile(99.0), wraps))
end
