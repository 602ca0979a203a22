-- Every request carries a key never sent before: "<run prefix>-<thread>-<counter>".
-- Args: prefix [path]
local common = require "common"
local head, tail, prefix
local counter = 0
local nthreads = 0

function setup(thread)            -- main Lua state, once per thread, before init()
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
end

function init(args)               -- thread's Lua state
  local run = args[1] or (tostring(os.time()) .. tostring(math.random(1, 1e9)))
  head, tail = common.split_request(args[2] or "/pay/charges", true)
  prefix = run .. "-" .. tostring(tid or 0) .. "-"
end

function request()
  counter = counter + 1
  return head .. prefix .. counter .. tail
end

done = common.done
