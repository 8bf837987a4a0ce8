-- rotate over keys in BENCH_KEYS_FILE (one per line)
local keys = {}
for line in io.lines(os.getenv("BENCH_KEYS_FILE")) do keys[#keys + 1] = line end
local body = '{"model":"' .. (os.getenv("BENCH_MODEL") or "gpt-4o-mini") .. '","messages":[{"role":"user","content":"Say hello."}]}'
local reqs = {}
for i, k in ipairs(keys) do
  reqs[i] = wrk.format("POST", nil, {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. k}, body)
end
local n = 0
-- each thread's state: start at a random offset so connections spread over users
function request()
  n = n % #reqs + 1
  return reqs[n]
end
function done(summary, latency, requests)
  io.write(string.format('{"requests":%d,"rps":%.1f,"errors_status":%d,"p50":%d,"p99":%d}\n',
    summary.requests, summary.requests / (summary.duration / 1e6), summary.errors.status,
    latency:percentile(50), latency:percentile(99)))
end
