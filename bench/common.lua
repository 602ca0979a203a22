-- Shared by the wrk scripts of bench/: the request body and a machine-readable summary.
-- Loaded with require "common" (bench.py puts bench/ on LUA_PATH).
local M = {}

-- A 305-byte JSON payment request (bench.py checks the length).
M.body = '{"amount":2599,"currency":"EUR","customer":"cus_9s6XKzkNRiz8i3",'
  .. '"payment_method":"pm_1NvBenchCard4242","description":"idemproxy benchmark order 42",'
  .. '"metadata":{"order_id":"ord_0000000042","channel":"web","attempt":"1"},"capture":true,'
  .. '"statement_descriptor":"IDEMPROXY BENCH","note":"padding to 305 bytes"}'

-- Formats one request with a placeholder key and splits it around the placeholder, so a
-- per-request key costs two string concatenations instead of a wrk.format call.
function M.split_request(path, with_key)
  local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer bench" }
  if with_key then headers["Idempotency-Key"] = "@@KEY@@" end
  local req = wrk.format("POST", path, headers, M.body)
  if not with_key then return req end
  local head, tail = req:match("^(.-)@@KEY@@(.*)$")
  return head, tail
end

-- done(): one line "BENCHJSON {...}" that bench.py parses. Latencies are in microseconds.
function M.done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"mean_us":%.1f,"max_us":%d,'
      .. '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end

return M
