-- wrk script for bench/run.sh. Configured through the environment:
--   BENCH_METHOD    GET (default) or POST
--   BENCH_BODY      request body (POST); sent with Content-Type: application/json
--   BENCH_TIMELINE  when set, count responses per BENCH_BUCKET_MS (default 100) wall-clock bucket, split
--                   into 2xx and other statuses. This adds a Lua call per response, so it is only used for the
--                   reload run, where the steady state and the reload window are measured in the same run.
-- `done` prints one machine-readable line, `BENCH key=value ...`, and with the timeline one
-- `BUCKET <start_ms> <responses> <non_2xx>` line per bucket.

local method = os.getenv("BENCH_METHOD") or "GET"
local body = os.getenv("BENCH_BODY")
local timeline = os.getenv("BENCH_TIMELINE") ~= nil
local bucket_ms = tonumber(os.getenv("BENCH_BUCKET_MS") or "100")

wrk.method = method
if body ~= nil and body ~= "" then
   wrk.body = body
   wrk.headers["Content-Type"] = "application/json"
end

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

if timeline then
   local ffi = require("ffi")
   ffi.cdef [[
      typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
      int clock_gettime(int clk_id, bench_timespec *tp);
   ]]
   local ts = ffi.new("bench_timespec")
   local CLOCK_REALTIME = 0

   function init(args)
      counts = {}
      bad = {}
   end

   function response(status, headers, body)
      ffi.C.clock_gettime(CLOCK_REALTIME, ts)
      local ms = tonumber(ts.tv_sec) * 1000 + math.floor(tonumber(ts.tv_nsec) / 1000000)
      local b = ms - ms % bucket_ms
      counts[b] = (counts[b] or 0) + 1
      if status < 200 or status > 299 then
         bad[b] = (bad[b] or 0) + 1
      end
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d " ..
      "connect=%d read=%d write=%d status=%d timeout=%d\n",
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout))
   if timeline then
      local all, allbad = {}, {}
      for _, t in ipairs(threads) do
         for k, v in pairs(t:get("counts") or {}) do all[k] = (all[k] or 0) + v end
         for k, v in pairs(t:get("bad") or {}) do allbad[k] = (allbad[k] or 0) + v end
      end
      local keys = {}
      for k in pairs(all) do table.insert(keys, k) end
      table.sort(keys)
      for _, k in ipairs(keys) do
         io.write(string.format("BUCKET %d %d %d\n", k, all[k], allbad[k] or 0))
      end
   end
end
