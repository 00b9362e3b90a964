-- wrk script for benchmarks/streams.py: POST the request bodies of a file (one JSON body per line) in turn, then
-- print wrk's figures as one JSON line (as post.lua does). Each body is one row of one stream:
--   FEDAD_WRK_BODIES=/tmp/rows.jsonl wrk -t1 -c4 -d5s -s benchmarks/stream.lua http://127.0.0.1:8081/detect
local path = os.getenv("FEDAD_WRK_BODIES")
local bodies = {}
for line in assert(io.open(path, "rb"), "FEDAD_WRK_BODIES must name the bodies file"):lines() do
  if #line > 0 then bodies[#bodies + 1] = line end
end
assert(#bodies > 0, "no request body in " .. path)
local i = 0
local headers = {["Content-Type"] = "application/json"}

function request()
  i = i % #bodies + 1
  return wrk.format("POST", nil, headers, bodies[i])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'FEDAD_RESULT {"requests": %d, "duration_s": %.6f, "bytes": %d, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}, "latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, ' ..
    '"mean": %.1f}}\n',
    summary.requests, summary.duration / 1e6, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
