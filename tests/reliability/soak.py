"""Soak: a real aggregator and workers on loopback, federating round after round, while client threads drive
POST /detect on every worker for a set time. Reports errors (must be 0), latency percentiles, throughput, rounds
completed meanwhile and the memory (RSS) growth of every service process. Not a CI test; the suite runs it briefly.

  .venv/bin/python tests/reliability/soak.py --seconds 600 --concurrency 8 --batch 32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]

from services.config import load_settings  # noqa: E402
from services.data.sources import load_node  # noqa: E402
from support import Stack, wait_until  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def held_out_rows(batch: int) -> list[list[float]]:
    settings = load_settings()
    node = load_node(settings, settings.worker("valve1"))
    return node.runs[0].values[~node.masks[0]][:batch].astype(float).tolist()


def run_soak(seconds: float, concurrency: int = 4, batch: int = 16, workdir: Path | None = None,
             epochs: int = 1) -> dict:
    tmp = Path(workdir or tempfile.mkdtemp(prefix="fedad-soak-"))
    stack = Stack(tmp, rounds=100_000, epochs=epochs)
    stack.start()
    try:
        wait_until(lambda: all(httpx.get(f"{stack.worker_url(w)}/readyz").status_code == 200 for w in stack.workers),
                   180, "every worker to serve a model", interval=0.5)
        services = {"aggregator": stack.aggregator, **stack.worker_services}
        rows = held_out_rows(batch)
        urls = [f"{stack.worker_url(w)}/detect" for w in stack.workers]
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        stop_at = time.time() + seconds

        def client(k: int) -> None:
            mine, bad = [], []
            with httpx.Client(timeout=30) as c:
                i = k
                while time.time() < stop_at:
                    url = urls[i % len(urls)]
                    i += 1
                    started = time.perf_counter()
                    try:
                        r = c.post(url, json={"samples": rows})
                        if r.status_code != 200 or len(r.json()["scores"]) != len(rows):
                            bad.append(f"{url}: {r.status_code} {r.text[:200]}")
                    except httpx.HTTPError as exc:
                        bad.append(f"{url}: {type(exc).__name__} {exc}")
                    mine.append(time.perf_counter() - started)
            with lock:
                latencies.extend(mine)
                errors.extend(bad)

        # warm-up, then the baseline memory
        for url in urls:
            httpx.post(url, json={"samples": rows}, timeout=30)
        rss_before = {name: rss_mb(s.proc.pid) for name, s in services.items()}
        rounds_before = stack.status()["rounds_done"]
        threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
        started = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - started
        rss_after = {name: rss_mb(s.proc.pid) for name, s in services.items()}
        rounds_after = stack.status()["rounds_done"]
        lat = np.array(latencies) * 1000
        return {
            "seconds": round(elapsed, 1), "concurrency": concurrency, "batch_rows": batch,
            "requests": int(lat.size), "errors": len(errors), "error_samples": errors[:5],
            "requests_per_s": round(lat.size / elapsed, 1),
            "latency_ms": {p: round(float(np.percentile(lat, q)), 2) for p, q in
                           (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))} if lat.size else {},
            "rounds_completed_meanwhile": rounds_after - rounds_before,
            "rss_mb": {n: {"before": round(rss_before[n], 1), "after": round(rss_after[n], 1),
                           "growth": round(rss_after[n] - rss_before[n], 1)} for n in services},
        }
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16, help="rows per /detect request")
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round (rounds run all along)")
    args = parser.parse_args()
    report = run_soak(args.seconds, args.concurrency, args.batch, epochs=args.epochs)
    print(json.dumps(report, indent=1))
    raise SystemExit(1 if report["errors"] else 0)


if __name__ == "__main__":
    main()
