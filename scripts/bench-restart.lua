-- wrk script of scripts/bench-restart.sh: logs one line per request,
--   <start, µs since the epoch> TAB <status> TAB <latency, µs>
-- the same shape as h2load's --log-file, so one awk reads both.
--
-- wrk's Lua hooks do not say which connection a response belongs to, so a
-- request is paired with its response only because every thread drives
-- exactly one connection: run wrk with as many threads as connections.
-- A request that never got a response (its connection failed; wrk does not
-- retry) is logged with status 0 when the thread sends its next one, so
-- errors can be placed in time too.
--
-- BENCH_WRK_LOG_DIR names the directory for the per-thread files
-- wrk-<n>.log. They are fully buffered; stdio flushes them when wrk exits.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local CLOCK_REALTIME = 0
local ts = ffi.new("bench_timespec")

local function now_us()
  ffi.C.clock_gettime(CLOCK_REALTIME, ts)
  return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

-- setup runs in wrk's main Lua state, once per thread.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("bench_id", threads)
end

-- The rest runs in each thread's own Lua state.
local log, req
local start = nil -- start of the request in flight, nil when none
local verifying = false

function init(args)
  local dir = os.getenv("BENCH_WRK_LOG_DIR")
  if dir == nil or dir == "" then
    error("BENCH_WRK_LOG_DIR is not set: run wrk from scripts/bench-restart.sh")
  end
  local path = string.format("%s/wrk-%d.log", dir, bench_id)
  log = assert(io.open(path, "w"))
  req = wrk.format()
  -- wrk 4 calls request() once more in its first thread, right after
  -- init, to check the request; that one is never sent.
  verifying = (bench_id == 1)
end

function request()
  if verifying then
    verifying = false
    return req
  end
  local t = now_us()
  if start ~= nil then
    log:write(string.format("%d\t0\t%d\n", start, t - start))
  end
  start = t
  return req
end

function response(status, headers, body)
  if start == nil then
    error("a response without a request: run wrk with as many threads as connections")
  end
  log:write(string.format("%d\t%d\t%d\n", start, status, now_us() - start))
  start = nil
end
