-- wrk script for `make bench-server` (scripts/bench/server.py).
--
-- Every request carries its own id in the header x-request-id:
-- "<wrk thread>-<counter>", unique within a run, at most 15 bytes for any
-- realistic count (so Swift holds it inline in both server modes). The
-- server checks that every read of its request-scoped value returns it.
--
-- At the end, one line for the driver (latencies in microseconds):
--   WRK requests=<n> duration_us=<t> p50_us=<x> p99_us=<y> connect=<e>
--       read=<e> write=<e> status=<e> timeout=<e>

local next_thread = 0

function setup(thread)
   next_thread = next_thread + 1
   thread:set("thread_number", next_thread)
end

local prefix
local counter = 0
local headers = {}

function init(args)
   prefix = tostring(thread_number) .. "-"
end

function request()
   counter = counter + 1
   headers["x-request-id"] = prefix .. counter
   return wrk.format(nil, nil, headers, nil)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "WRK requests=%d duration_us=%d p50_us=%d p99_us=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      e.connect, e.read, e.write, e.status, e.timeout))
end
