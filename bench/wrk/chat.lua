-- wrk script for scripts/bench: a non-streaming chat completion per request.
-- env: BENCH_KEY (bearer) or BENCH_KEYS_FILE, BENCH_MODEL. Prints one JSON line of results (latencies in µs).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "sk-test")
wrk.body = '{"model":"' .. (os.getenv("BENCH_MODEL") or "gpt-4o-mini")
  .. '","messages":[{"role":"user","content":"Say hello."}]}'

-- BENCH_KEYS_FILE (scripts/bench with BENCH_USERS > 1): one key per line, used in turn, each
-- request pre-formatted here so the per-request cost is a table lookup.
local keys_file = os.getenv("BENCH_KEYS_FILE")
if keys_file and keys_file ~= "" then
  local reqs = {}
  for key in io.lines(keys_file) do
    if key ~= "" then
      wrk.headers["Authorization"] = "Bearer " .. key
      reqs[#reqs + 1] = wrk.format()
    end
  end
  local n = 0
  request = function()
    n = n % #reqs + 1
    return reqs[n]
  end
end

-- No response() hook: it would make wrk parse every response in Lua. summary.errors.status counts
-- responses with status > 399.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"rps":%.1f,"errors_status":%d,"errors_connect":%d,'
    .. '"errors_read":%d,"errors_write":%d,"errors_timeout":%d,'
    .. '"lat_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    e.status, e.connect, e.read, e.write, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
