-- wrk script for the benchmarks: POST one fixed body over and over, then print wrk's figures as one JSON line.
-- The body file and its content type come from the environment (FEDAD_WRK_BODY, FEDAD_WRK_TYPE), so one script
-- serves every batch size and both encodings:
--   FEDAD_WRK_BODY=/tmp/b1.json FEDAD_WRK_TYPE=application/json wrk -t1 -c4 -d5s -s benchmarks/post.lua URL
local path = os.getenv("FEDAD_WRK_BODY")
local file = assert(io.open(path, "rb"), "FEDAD_WRK_BODY must name the request body file")
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = os.getenv("FEDAD_WRK_TYPE") or "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'FEDAD_RESULT {"requests": %d, "duration_s": %.6f, "bytes": %d, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}, "latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, ' ..
    '"mean": %.1f}}\n',
    summary.requests, summary.duration / 1e6, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
