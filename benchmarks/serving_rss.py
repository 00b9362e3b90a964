"""Serving-process memory of every worker after a short federation, here and at a reference revision.

The edge footprint of the serving process (BENCHMARKS.md §4) against an older commit measured in the same run: a
real aggregator, two training workers and a detect-only one (SKAB's valve1, valve2, other) on loopback, ``rounds``
rounds of one epoch, then ``requests`` stream requests of 40 rows to each worker; VmRSS and VmHWM of each worker
from /proc. ``--ref REV`` checks REV out into a temporary git worktree and runs the same there.

  python -m benchmarks.serving_rss --ref 31f7bff       (the commit before the continual-learning features)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import httpx

from benchmarks.common import REPO, Federation, print_header, workdir

WORKERS = ["valve1", "valve2", "other"]
ROW = [0.0265, 0.0401, 1.33, 0.0547, 79.3, 26.0, 233.1, 32.0]  # SKAB's features, a normal reading


def status_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            fields[line.split(":")[0]] = int(line.split()[1])
    return fields


def measure(checkout: Path, rounds: int, requests: int) -> dict[str, dict[str, float]]:
    """MiB of each worker's serving process after the federation and the stream requests, from ``checkout``."""
    data = REPO.parent / "shared" / "data" / "skab"
    with workdir() as tmp:
        federation = Federation(tmp, WORKERS, rounds, 1, checkout, PYTHONPATH=str(checkout),
                                FEDAD__WORKERS__OTHER__MODE="detect_only", FEDAD__FEDERATION__MIN_WORKERS="2",
                                FEDAD__FEDERATION__QUORUM="2",
                                **({"FEDAD__DATA__SOURCE__DIR": str(data)} if data.exists() else {}))
        federation.start()
        try:
            federation.wait_trained(timeout=600)
            with httpx.Client(timeout=30) as client:
                for w in WORKERS:
                    for _ in range(requests):
                        answer = client.post(f"{federation.worker_url(w)}/detect",
                                             json={"stream": "bench", "samples": [ROW] * 40})
                        answer.raise_for_status()
            return {w: {k: round(v / 1024, 1) for k, v in status_kib(p.proc.pid).items()}
                    for w, p in federation.services.items()}
        finally:
            federation.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", help="a git revision to measure beside this checkout (the reference)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=50, help="stream requests of 40 rows per worker")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print_header("serving-process memory after a federation (MiB)")
    results = {"this": measure(REPO, args.rounds, args.requests)}
    if args.ref:
        with tempfile.TemporaryDirectory(prefix="fedad-ref-") as tmp:
            ref = Path(tmp) / "ref"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(ref), args.ref],
                           check=True)
            try:
                results["ref"] = measure(ref, args.rounds, args.requests)
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(ref)], check=False)
    print(f"{'worker':<8} {'VmRSS':>8} {'VmHWM':>8}" + (f" {'ref VmRSS':>10} {'ratio':>6}" if args.ref else ""))
    for w in WORKERS:
        this = results["this"][w]
        line = f"{w:<8} {this['VmRSS']:>8} {this['VmHWM']:>8}"
        if args.ref:
            ref_rss = results["ref"][w]["VmRSS"]
            line += f" {ref_rss:>10} {this['VmRSS'] / ref_rss:>6.3f}"
        print(line)
    print("targets: serving process ≤ 100 MiB (BENCHMARKS.md §4: not met)")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "mib": results}, indent=1))


if __name__ == "__main__":
    main()
