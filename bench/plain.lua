-- POST of the 305-byte JSON body without an Idempotency-Key (backend direct, nginx proxy_pass,
-- idemproxy pass-through route). Args: [path]
local common = require "common"

function init(args)
  wrk.method = "POST"
  wrk.path = args[1] or "/pass/charges"
  wrk.body = common.body
  wrk.headers["Content-Type"] = "application/json"
end

done = common.done
