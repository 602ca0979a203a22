-- Records keys "<set>-0" .. "<set>-(count-1)" through the proxy, cycling over them until
-- `count` answers were first-time (2xx without Idempotent-Replayed) ones, then stops its thread
-- and creates the file `marker`, which tells bench.py to end wrk (SIGINT).
-- Run with one thread (-t1). Args: set count marker [path]
local common = require "common"
local head, tail, set, count, marker
local nxt = 0
firsts, replays, bad = 0, 0, 0   -- globals: done() reads them with thread:get
local stopped = false
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  set = args[1]
  count = tonumber(args[2])
  marker = args[3]
  head, tail = common.split_request(args[4] or "/pay/charges", true)
end

function request()
  local i = nxt
  nxt = (nxt + 1) % count
  return head .. set .. "-" .. i .. tail
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    local replayed = false
    for name, value in pairs(headers) do
      if name:lower() == "idempotent-replayed" then replayed = true end
    end
    if replayed then replays = replays + 1 else firsts = firsts + 1 end
  else
    bad = bad + 1
  end
  if firsts >= count and not stopped then
    stopped = true
    local f = io.open(marker, "w")
    if f then f:write("done\n") f:close() end
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local f, r, b = 0, 0, 0
  for _, t in ipairs(threads) do
    f = f + (t:get("firsts") or 0)
    r = r + (t:get("replays") or 0)
    b = b + (t:get("bad") or 0)
  end
  io.write(string.format('PRELOADJSON {"firsts":%d,"replays":%d,"bad":%d}\n', f, r, b))
  common.done(summary, latency, requests)
end
