"""Fallback load generator when wrk is missing: keep-alive connections in threads, POST one body for a fixed time,
print the same FEDAD_RESULT line as benchmarks/post.lua. It measures itself as much as the server (one Python
process tops out at a few thousand requests a second), so its figures are lower bounds; BENCHMARKS.md uses wrk.

    python -m benchmarks.loadgen --url http://127.0.0.1:8081/detect --body b.json --type application/json -c 4 -d 5
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from urllib.parse import urlsplit

import numpy as np


def run(url: str, body: bytes, content_type: str, connections: int, duration: float) -> dict:
    parts = urlsplit(url)
    if parts.hostname != "127.0.0.1":
        raise SystemExit("the load generator only talks to 127.0.0.1")
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    received = [0] * connections
    stop_at = time.perf_counter() + duration
    headers = {"Content-Type": content_type, "Content-Length": str(len(body))}

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                conn.request("POST", parts.path or "/", body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                errors["read"] += 1
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
                continue
            latencies[k].append(time.perf_counter() - started)
            received[k] += len(data)
            if response.status >= 400:
                errors["status"] += 1
        conn.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    lat = np.concatenate([np.asarray(x) for x in latencies]) * 1e6 if any(latencies) else np.zeros(1)
    return {"requests": int(sum(len(x) for x in latencies)), "duration_s": elapsed, "bytes": sum(received),
            "errors": errors, "latency_us": {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
                                             "p99": float(np.percentile(lat, 99)), "max": float(lat.max()),
                                             "mean": float(lat.mean())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", required=True, help="file holding the request body")
    parser.add_argument("--type", default="application/json")
    parser.add_argument("-c", "--connections", type=int, default=4)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    args = parser.parse_args()
    with open(args.body, "rb") as f:
        body = f.read()
    print("FEDAD_RESULT " + json.dumps(run(args.url, body, args.type, args.connections, args.duration)), flush=True)


if __name__ == "__main__":
    main()
