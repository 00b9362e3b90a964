"""POST /detect on a real worker, driven from a separate load-generator process, beside its references measured in
the same run:

  (a) the HTTP ceiling: the same uvicorn settings serving a FastAPI route that returns a constant (benchmarks/
      trivial_app.py), driven exactly like the worker;
  (b) the compute floor: the served onnxruntime session called in this process on ready model inputs;
  (c) torch eager on the same inputs.

The worker is trained for real first (aggregator + one worker on loopback, ``--rounds`` of ``--epochs``), then the
aggregator stops and the worker keeps serving its model. Request bodies are real held-out SKAB rows: JSON
(``{"samples": [[...], ...]}``, numbers as SKAB writes them) and the float32 binary body
(``application/octet-stream``). The load generator is wrk with benchmarks/post.lua (Debian package ``wrk``), or
benchmarks/loadgen.py when wrk is missing (slower: it measures itself). Everything stays on 127.0.0.1.

    python -m benchmarks.detect                                    # BENCHMARKS.md's figures (~3 min)
    python -m benchmarks.detect --worker valve2 --batches 1,16 --duration 1 --repeat 1 --inproc-number 16 \
        --inproc-repeat 1 --connections 2 --bulk-connections 1      # the smoke test

Figures are medians over ``--repeat`` rounds; in each round the reference and every configuration run once, one
after the other, so load from other processes hits them alike. ``server CPU µs/req`` is the server process's own
CPU time per answered request (from /proc): less sensitive than req/s to what else the machine runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

from benchmarks.common import (
    LOOPBACK,
    REPO,
    Federation,
    Process,
    Profile,
    base_env,
    best_of,
    cpu_seconds,
    emit_json,
    free_port,
    median,
    print_header,
    rss_mib,
    workdir,
)

JSON = "application/json"
BINARY = "application/octet-stream"
TARGETS = {"batch1_vs_constant": 0.60, "binary4096_vs_floor": 0.50, "json4096_vs_floor": 0.25,
           "int8_vs_torch_batch1": 5.0}


# -- load generation ---------------------------------------------------------------------------------------------------
def loadgen_kind(choice: str) -> str:
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if choice == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install wrk, or --loadgen python")
    return choice


def drive(kind: str, url: str, body_file: Path, content_type: str, connections: int, duration: int,
          server_pid: int) -> dict:
    """One load run against ``url``; adds the server's CPU seconds used during the run."""
    if kind == "wrk":
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s",
                str(REPO / "benchmarks" / "post.lua"), url]
    else:
        argv = [sys.executable, "-m", "benchmarks.loadgen", "--url", url, "--body", str(body_file), "--type",
                content_type, "-c", str(connections), "-d", str(duration)]
    return measure(argv, base_env(FEDAD_WRK_BODY=str(body_file), FEDAD_WRK_TYPE=content_type), server_pid, duration)


def measure(argv: list[str], env: dict, server_pid: int, duration: int) -> dict:
    """Run a load generator that prints ``FEDAD_RESULT {json}``; add req/s and the server's CPU per request."""
    cpu_before = cpu_seconds(server_pid)
    out = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=duration + 60)
    cpu_used = cpu_seconds(server_pid) - cpu_before
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("FEDAD_RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"load generator failed ({out.returncode}): {out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    result = orjson.loads(line.removeprefix("FEDAD_RESULT "))
    result["req_per_s"] = result["requests"] / result["duration_s"]
    result["server_cpu_us_per_req"] = cpu_used / max(result["requests"], 1) * 1e6
    result["server_cpu_share"] = cpu_used / result["duration_s"]
    return result


# -- bodies ------------------------------------------------------------------------------------------------------------
def held_out_rows(settings, worker_id: str, n: int) -> np.ndarray:
    """The worker's own held-out SKAB rows (after the first train_rows of each file), at least ``n`` of them."""
    from services.data.sources import load_node

    node = load_node(settings, settings.worker(worker_id))
    rows = np.concatenate([run.values[~mask] for run, mask in zip(node.runs, node.masks, strict=True)])
    if len(rows) < n:
        rows = np.concatenate([rows] * (n // len(rows) + 1))
    return rows[:n].astype(np.float32)


def json_body(rows: np.ndarray) -> bytes:
    """Numbers as short as float32 allows (as SKAB's CSV writes them), not float64's 17 digits."""
    return orjson.dumps({"samples": [[float(str(v)) for v in row] for row in rows]})


def binary_body(rows: np.ndarray) -> bytes:
    return np.ascontiguousarray(rows, dtype="<f4").tobytes()


def check_answers(url: str, rows: np.ndarray, bodies: dict) -> None:
    """Before any timing: every body gets 200 with one score per row, and JSON and binary bodies score alike."""
    with httpx.Client(timeout=60) as client:
        for n, (json_file, binary_file) in bodies.items():
            a = client.post(url, content=json_file.read_bytes(), headers={"Content-Type": JSON})
            b = client.post(url, content=binary_file.read_bytes(), headers={"Content-Type": BINARY})
            for r in (a, b):
                if r.status_code != 200 or len(r.json()["scores"]) != n:
                    raise RuntimeError(f"/detect answered {r.status_code} to a batch of {n}: {r.text[:300]}")
            sa, sb = np.asarray(a.json()["scores"]), np.asarray(b.json()["scores"])
            if not np.allclose(sa, sb, rtol=1e-5, atol=1e-7):
                raise RuntimeError(f"JSON and binary bodies of {n} rows score differently")


# -- in-process references ---------------------------------------------------------------------------------------------
def in_process(settings, state_dir: Path, rows: np.ndarray, batches: list[int], number: int, repeat: int) -> dict:
    """(b) raw onnxruntime session, (c) torch eager, and the served path's stages, per call, best of ``repeat``."""
    import onnxruntime as ort
    import torch

    from services.data.windows import Preprocessing, Reference
    from services.model.autoencoder import build_autoencoder, set_flat_weights
    from services.model.detector import AnomalyDetector, DetectorSpec
    from services.model.layout import count_parameters
    from services.model.scoring import INPUT_NAME
    from services.worker.parsing import _rows, fast_json_rows, parse_binary
    from services.worker.serving import ServedModel
    from services.worker.state import WorkerStore

    torch.set_num_threads(1)
    state = WorkerStore(state_dir).load(count_parameters(settings.input_width, settings.model.hidden))
    prep = Preprocessing.from_settings(settings.data)
    reference = Reference(**state.reference)
    detector = AnomalyDetector.restore(DetectorSpec.from_settings(settings), state.weights, state.onnx_fp32,
                                       state.onnx_int8, reference, state.threshold)
    served = ServedModel(detector, state.model_round)

    def raw_session(onnx_bytes: bytes):  # the exported model as it is stored, with the worker's session options
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])

    int8, fp32 = raw_session(state.onnx_int8), raw_session(state.onnx_fp32)
    net = build_autoencoder(settings.input_width, settings.model.hidden)
    set_flat_weights(net, state.weights)
    net.eval()
    features = settings.data.features
    out: dict = {"served_model": state.served, "input_width": settings.input_width,
                 "hidden": settings.model.hidden, "batches": {}}
    for n in batches:
        part = rows[:n]
        x = detector.inputs(part)
        xt = torch.from_numpy(x)
        body, raw = json_body(part), binary_body(part)
        calls = max(1, number // n)

        def t(fn):
            return best_of(fn, repeat, calls)

        with torch.inference_mode():
            torch_forward = t(lambda: net(xt))
            torch_scores = t(lambda: ((net(xt) - xt) ** 2).mean(dim=1).numpy())
        scores = served.score(part)
        stages = {
            "ort_int8_raw": t(lambda: int8.run(None, {INPUT_NAME: x})),
            "ort_fp32_raw": t(lambda: fp32.run(None, {INPUT_NAME: x})),
            "torch_eager_forward": torch_forward,
            "torch_eager_scores": torch_scores,
            "served_session_scores": t(lambda: detector.score_inputs(x)),
            "parse_json_exact": t(lambda: _rows(orjson.loads(body)["samples"], features, "row")),
            "parse_json_fast": t(lambda: fast_json_rows(body, len(features), 10**9)),
            "parse_binary": t(lambda: parse_binary(raw, features, 10**9, None)),
            "inputs_preprocessing": t(lambda: prep.inputs(part, reference)),
            "inputs_served_pipeline": t(lambda: detector.inputs(part)),
            "answer_orjson": t(lambda: orjson.dumps(
                {"scores": scores, "is_anomaly": detector.is_anomaly(scores), "threshold": served.threshold,
                 "model_round": served.model_round, "model": served.kind}, option=orjson.OPT_SERIALIZE_NUMPY)),
            "served_score_total": t(lambda: served.score(part)),
        }
        out["batches"][n] = {k: v * 1e6 for k, v in stages.items()}  # µs per call
    return out


# -- report ------------------------------------------------------------------------------------------------------------
def summarise(runs: list[dict]) -> dict:
    return {
        "req_per_s": median([r["req_per_s"] for r in runs]),
        "p50_us": median([r["latency_us"]["p50"] for r in runs]),
        "p99_us": median([r["latency_us"]["p99"] for r in runs]),
        "server_cpu_us_per_req": median([r["server_cpu_us_per_req"] for r in runs]),
        "server_cpu_share": median([r["server_cpu_share"] for r in runs]),
        "errors": sum(sum(r["errors"].values()) for r in runs),
        "runs": [round(r["req_per_s"], 1) for r in runs],
    }


def verdict(ratio: float, target: float) -> str:
    return f"{'met' if ratio >= target else 'NOT met'} (target >= {target:g})"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", default="valve1", help="worker id from config.yaml (its SKAB partition)")
    parser.add_argument("--rounds", type=int, default=1, help="federated rounds to train before serving")
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--batches", default="1,256,4096", help="rows per request, comma-separated")
    parser.add_argument("--duration", type=int, default=5, help="seconds per load run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of runs; figures are medians")
    parser.add_argument("--connections", type=int, default=4, help="concurrent connections, batch 1")
    parser.add_argument("--bulk-connections", type=int, default=2, help="concurrent connections, larger batches")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--inproc-number", type=int, default=4000, help="rows per in-process timing loop")
    parser.add_argument("--inproc-repeat", type=int, default=7)
    parser.add_argument("--workdir", help="keep state and logs here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--profile", metavar="FILE", help="after the measured runs, py-spy the worker during one more "
                        "run of batch-1 JSON and of the largest batch (JSON and binary); collapsed stacks to "
                        "FILE-<config>.txt, summaries printed")
    args = parser.parse_args(argv)
    batches = sorted({int(b) for b in args.batches.split(",")})
    kind = loadgen_kind(args.loadgen)
    machine = print_header("POST /detect: req/s, latency and rows/s beside the HTTP ceiling and the compute floor",
                           argv)
    print(f"# load generator: {kind}; {args.duration}s per run, {args.repeat} rounds; connections "
          f"{args.connections} (batch 1) / {args.bulk_connections} (larger)")

    from services.config import load_settings

    settings = load_settings()
    result: dict = {"machine": machine, "args": vars(args), "loadgen": kind}
    with workdir(args.workdir) as wd:
        fed = Federation(wd, [args.worker], rounds=args.rounds, epochs=args.epochs)
        constant = None
        try:
            started = time.time()
            fed.start()
            fed.wait_trained()
            fed.aggregator.stop()  # the worker's loop is done; it only serves from here on
            print(f"# trained {args.rounds} round(s) x {args.epochs} epoch(s) in {time.time() - started:.1f}s; "
                  f"serving {args.worker} at {fed.worker_url(args.worker)}")
            worker = fed.services[args.worker]
            port = free_port()
            constant = Process("constant", [sys.executable, "-m", "benchmarks.trivial_app", "--port", str(port)],
                               base_env(), wd, f"http://{LOOPBACK}:{port}").start().wait_healthy()

            rows = held_out_rows(settings, args.worker, max(batches))
            bodies = {}
            for n in batches:
                jf, bf = wd / f"rows{n}.json", wd / f"rows{n}.f32"
                jf.write_bytes(json_body(rows[:n]))
                bf.write_bytes(binary_body(rows[:n]))
                bodies[n] = (jf, bf)
            detect_url = f"{fed.worker_url(args.worker)}/detect"
            check_answers(detect_url, rows, bodies)
            rss_before = rss_mib(worker.pid)

            configs = [("constant", f"{constant.url}/detect", constant.pid, bodies[batches[0]][0], JSON,
                        args.connections, batches[0])]
            for n in batches:
                c = args.connections if n == 1 else args.bulk_connections
                configs.append((f"json {n}", detect_url, worker.pid, bodies[n][0], JSON, c, n))
                configs.append((f"binary {n}", detect_url, worker.pid, bodies[n][1], BINARY, c, n))
            runs: dict[str, list[dict]] = {name: [] for name, *_ in configs}
            for i in range(args.repeat):
                for name, url, pid, body, ctype, conns, _ in configs:
                    runs[name].append(drive(kind, url, body, ctype, conns, args.duration, pid))
                print(f"# round {i + 1}/{args.repeat} done; load average {os.getloadavg()[0]:.2f}", flush=True)
            rss_serving = rss_mib(worker.pid)
            profiles = {}
            if args.profile:  # separate runs: sampling slows the server down, so none of the figures above has it
                for name, url, pid, body, ctype, conns, _ in configs:
                    if name in ("json 1", f"json {max(batches)}", f"binary {max(batches)}"):
                        base = Path(args.profile)
                        prof = Profile(pid, base.with_name(f"{base.stem}-{name.replace(' ', '')}{base.suffix}"))
                        try:
                            drive(kind, url, body, ctype, conns, args.duration, pid)
                        finally:
                            prof.stop()
                        profiles[name] = prof.top(12)
            http = {name: {**summarise(r), "rows": n, "body_bytes": body.stat().st_size, "connections": conns}
                    for (name, url, pid, body, ctype, conns, n), r in zip(configs, runs.values(), strict=True)}
            for v in http.values():
                v["rows_per_s"] = v["req_per_s"] * v["rows"]
            ref = in_process(settings, wd / args.worker, rows, batches, args.inproc_number, args.inproc_repeat)
        finally:
            if constant:
                constant.stop()
            fed.stop()

    result.update(http=http, in_process=ref, worker_rss_mib={"before_load": rss_before, "after_load": rss_serving},
                  profiles=profiles)
    report(result, batches)
    emit_json(args.json, result)
    return result


def report(result: dict, batches: list[int]) -> None:
    http, ref = result["http"], result["in_process"]
    const = http["constant"]
    print()
    print("HTTP (one uvicorn process each, load generator in its own process):")
    print(f"  {'config':<12} {'rows':>5} {'body B':>8} {'conns':>5} {'req/s':>9} {'rows/s':>11} {'p50 µs':>8} "
          f"{'p99 µs':>8} {'srv CPU µs/req':>14} {'vs (a)':>7}  req/s per round")
    for name, v in http.items():
        print(f"  {name:<12} {v['rows']:>5} {v['body_bytes']:>8} {v['connections']:>5} {v['req_per_s']:>9.0f} "
              f"{v['rows_per_s']:>11.0f} {v['p50_us']:>8.0f} {v['p99_us']:>8.0f} {v['server_cpu_us_per_req']:>14.1f} "
              f"{v['req_per_s'] / const['req_per_s']:>7.2f}  {v['runs']}" + (f"  errors {v['errors']}" if v["errors"]
                                                                            else ""))
    print()
    print(f"in-process, µs per call (best of repeats; {ref['served_model']} model served, input width "
          f"{ref['input_width']}, hidden {ref['hidden']}):")
    stages = list(next(iter(ref["batches"].values())))
    print(f"  {'stage':<24}" + "".join(f"{'batch ' + str(n):>14}" for n in ref["batches"]))
    for s in stages:
        print(f"  {s:<24}" + "".join(f"{ref['batches'][n][s]:>14.1f}" for n in ref["batches"]))
    print(f"\nworker RSS: {result['worker_rss_mib']['before_load']:.0f} MiB before the load runs, "
          f"{result['worker_rss_mib']['after_load']:.0f} MiB after")

    for name, lines in result.get("profiles", {}).items():
        print(f"\nprofile of the worker, {name} (py-spy, separate run):")
        print("\n".join(lines))

    ratios = {}
    print("\ntargets:")
    if 1 in batches:
        for enc in ("json", "binary"):
            r = http[f"{enc} 1"]["req_per_s"] / const["req_per_s"]
            ratios[f"batch1_{enc}_vs_constant"] = r
            print(f"  batch-1 {enc} req/s / constant handler (a): {r:.2f}  {verdict(r, TARGETS['batch1_vs_constant'])}")
        b1 = ref["batches"][1]
        r = b1["torch_eager_forward"] / b1["ort_int8_raw"]
        ratios["int8_vs_torch_batch1"] = r
        print(f"  int8 ORT vs torch eager, batch 1 forward: {b1['ort_int8_raw']:.1f} vs {b1['torch_eager_forward']:.1f}"
              f" µs = {r:.2f}x  {verdict(r, TARGETS['int8_vs_torch_batch1'])}")
        r2 = b1["torch_eager_scores"] / b1["served_session_scores"]
        ratios["int8_served_vs_torch_scores_batch1"] = r2
        print(f"    (scores, as served: session with in-graph score {b1['served_session_scores']:.1f} µs vs torch "
              f"forward + score {b1['torch_eager_scores']:.1f} µs = {r2:.2f}x; fp32 ORT "
              f"{b1['torch_eager_forward'] / b1['ort_fp32_raw']:.2f}x)")
    big = max(batches)
    if big > 1:
        floor = big / (ref["batches"][big]["ort_int8_raw"] / 1e6)
        for enc, key in (("binary", "binary4096_vs_floor"), ("json", "json4096_vs_floor")):
            r = http[f"{enc} {big}"]["rows_per_s"] / floor
            ratios[f"{enc}{big}_vs_floor"] = r
            print(f"  batch-{big} {enc} rows/s / raw int8 session rows/s (b) ({floor:,.0f}): {r:.2f}  "
                  f"{verdict(r, TARGETS[key])}")
    result["ratios"] = ratios


if __name__ == "__main__":
    main()
