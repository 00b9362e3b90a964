"""Serving-process memory of every worker after a short federation, here and at a reference revision.

The edge footprint of the serving process (BENCHMARKS.md §4) against an older commit measured in the same run: a
real aggregator, two training workers and a detect-only one (SKAB's valve1, valve2, other) on loopback, ``rounds``
rounds of one epoch, then ``requests`` stream requests of 40 rows to each worker; VmRSS and VmHWM of each worker
from /proc. ``--ref REV`` checks REV out into a temporary git worktree and runs the same there.

The floor, measured in the same run: a process that imports the libraries the worker's serving process imports (the
third-party packages ``import services.worker.__main__`` loads, found in a fresh interpreter) and holds one session
of valve1's served int8 model, opened with the worker's session options and scoring one row. What a worker holds
above it is its own code, its data and its state.

  python -m benchmarks.serving_rss --ref 31f7bff       (the commit before the continual-learning features)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
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
            mib = {w: {k: round(v / 1024, 1) for k, v in status_kib(p.proc.pid).items()}
                   for w, p in federation.services.items()}
            model = max(tmp.rglob("model-*.int8.onnx"), key=lambda f: ("/valve1" in str(f), f.stat().st_mtime))
            mib["floor"] = floor_mib(checkout, model)
            return mib
        finally:
            federation.stop()


LIBRARIES = """
import sys, sysconfig
import services.worker.__main__
site = sysconfig.get_paths()["purelib"]
print(" ".join(sorted({n.split(".")[0] for n, m in list(sys.modules.items())
                       if (getattr(m, "__file__", None) or "").startswith(site)})))
"""
FLOOR = """
import importlib, sys, numpy as np
for name in sys.argv[2].split():
    importlib.import_module(name)
import onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = options.inter_op_num_threads = 1
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
session = ort.InferenceSession(open(sys.argv[1], "rb").read(), options, providers=["CPUExecutionProvider"])
x = np.zeros((1, session.get_inputs()[0].shape[1]), np.float32)
session.run(None, {session.get_inputs()[0].name: x})
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:")))
"""


def floor_mib(checkout: Path, model: Path) -> dict[str, float]:
    """VmRSS of a process with the serving process's libraries and one int8 session of ``model``."""
    env = {"PYTHONPATH": str(checkout), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    libraries = subprocess.run([sys.executable, "-c", LIBRARIES], cwd=checkout, env=env, capture_output=True,
                               text=True, check=True).stdout.split()
    out = subprocess.run([sys.executable, "-c", FLOOR, str(model), " ".join(libraries)], cwd=checkout, env=env,
                         capture_output=True, text=True, check=True).stdout
    print(f"# floor: {len(libraries)} libraries ({' '.join(libraries)}) and one session of {model.name}")
    return {"VmRSS": round(int(out.split()[-1]) / 1024, 1)}


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
    floor = results["this"]["floor"]["VmRSS"]
    print(f"floor (same libraries, one int8 session): {floor} MiB")
    print(f"{'worker':<8} {'VmRSS':>8} {'VmHWM':>8} {'/ floor':>8}" + (f" {'ref VmRSS':>10} {'ratio':>6}" if args.ref
                                                                       else ""))
    for w in WORKERS:
        this = results["this"][w]
        line = f"{w:<8} {this['VmRSS']:>8} {this['VmHWM']:>8} {this['VmRSS'] / floor:>8.2f}"
        if args.ref:
            ref_rss = results["ref"][w]["VmRSS"]
            line += f" {ref_rss:>10} {this['VmRSS'] / ref_rss:>6.3f}"
        print(line)
    print("targets: serving process ≤ 100 MiB, ≤ 1.1 × the floor (BENCHMARKS.md §4)")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "mib": results}, indent=1))


if __name__ == "__main__":
    main()
