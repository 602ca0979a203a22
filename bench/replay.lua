-- Replays keys "<set>-<i>" with i uniformly random in [first, count), all preloaded before.
-- Args: set count [path] [first]
local common = require "common"
local head, tail, set, count, first
local nthreads = 0

function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
end

function init(args)
  set = args[1]
  count = tonumber(args[2])
  head, tail = common.split_request(args[3] or "/pay/charges", true)
  first = tonumber(args[4] or "0")
  math.randomseed(os.time() + 7919 * (tid or 0))
end

function request()
  return head .. set .. "-" .. math.random(first, count - 1) .. tail
end

done = common.done
