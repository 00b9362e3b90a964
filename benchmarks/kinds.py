"""What each model kind costs on one edge node, beside the dense model measured in the same run: training seconds
per round and the training process's peak memory, and serving µs per row at batch 1 and a large batch.

Per kind (config.yaml's sizes; conv1d and lstm over raw windows, lstm served fp32, as
services/evaluation/kinds.kind_settings sets them), on one worker's SKAB partition:

- training: ``--rounds`` rounds of local training, each in the worker's own training process
  (services/worker/trainer.py: a child per round, torch on one thread), each round starting from the last one's
  weights; wall and CPU seconds per round (median) and the process's peak resident memory (its VmHWM, the largest
  over the rounds), as the worker reports them in /v1/status ``last_training``.
- one local epoch in this process (torch on one thread, best of 3): the training alone, without the process start
  (``import torch``) that dominates a dense round.
- serving: the trained model calibrated as a worker installs it (``AnomalyDetector.calibrate``: ONNX, static int8,
  threshold) and scored as /detect scores a request, without HTTP (``decision_function``: rows → windows →
  onnxruntime session on one thread → scores), on the worker's held-out rows: batch 1 and ``--batch`` rows, best of
  ``--repeat`` timings; and the model session alone on ready inputs (the compute floor).

Ratios are to the dense row of the same run (dense is always measured first), which is what carries over to other
machines.

    python -m benchmarks.kinds                                      # BENCHMARKS.md's figures (~1 min idle)
    python -m benchmarks.kinds --kinds conv1d --rounds 1 --repeat 1 --number 200   # the smoke test
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import best_of, emit_json, median, print_header
from benchmarks.detect import held_out_rows

REFERENCE = "dense"


def measure_kind(kind: str, worker_id: str, rounds: int, batch: int, repeat: int, number: int, folder: Path) -> dict:
    from services.config import load_settings
    from services.data.sources import load_node
    from services.evaluation.kinds import describe_model, kind_settings
    from services.model.detector import AnomalyDetector, DetectorSpec, node_seed
    from services.protocol.messages import TrainingPlan
    from services.protocol.scaling import FeatureStats
    from services.worker.trainer import Trainer

    settings = kind_settings(load_settings(), kind)
    spec = DetectorSpec.from_settings(settings)
    node = load_node(settings, settings.worker(worker_id))
    scaler = FeatureStats.from_rows(node.train_raw()).scaler()
    inputs = node.windows(scaler, "train")
    trainer, weights, runs = Trainer(folder / kind), AnomalyDetector(spec).get_weights(), []
    for r in range(rounds):
        run = trainer.train(spec.architecture, weights, inputs, TrainingPlan.from_settings(settings),
                            node_seed(settings.model.seed, worker_id) + r + 1)
        weights = run.weights
        runs.append(run)
    epoch = AnomalyDetector(spec, weights)  # one local epoch in this process: the training alone, no process start
    epoch_seconds = best_of(lambda: epoch.partial_fit(inputs, TrainingPlan.from_settings(settings), 1, epochs=1),
                            min(repeat, 3), 1)
    detector = AnomalyDetector(spec, weights).calibrate(inputs, node.default_reference(scaler), workdir=folder)
    rows = held_out_rows(settings, worker_id, batch)
    model_inputs = detector.inputs(rows)
    calls = max(1, number // batch)
    for warm in (rows[:1], rows):  # the in-graph session of a batch is built on its first call (~10 ms)
        detector.decision_function(warm)
    serving = {
        "batch1_us_per_row": best_of(lambda: detector.decision_function(rows[:1]), repeat, number) * 1e6,
        "batch_us_per_row": best_of(lambda: detector.decision_function(rows), repeat, calls) * 1e6 / batch,
        "session_batch1_us_per_row": best_of(lambda: detector.score_inputs(model_inputs[:1]), repeat, number) * 1e6,
        "session_batch_us_per_row": best_of(lambda: detector.score_inputs(model_inputs), repeat, calls) * 1e6 / batch,
    }
    return {"kind": kind, "model": describe_model(settings), "served": spec.served, "parameters": spec.n_params,
            "training_inputs": len(inputs), "epochs": settings.model.local_epochs,
            "train_seconds_per_round": median([r.seconds for r in runs]),
            "train_cpu_seconds_per_round": median([r.cpu_seconds for r in runs]),
            "train_peak_rss_mib": max(r.peak_rss_bytes for r in runs) / 2**20, "epoch_seconds": epoch_seconds,
            "onnx_bytes": {"fp32": len(detector.onnx_fp32_), "int8": len(detector.onnx_int8_)}, **serving}


FIGURES = [("train_seconds_per_round", "training s / round (wall)", "{:.2f}"),
           ("train_cpu_seconds_per_round", "training CPU s / round", "{:.2f}"),
           ("train_peak_rss_mib", "training process peak MiB", "{:.0f}"),
           ("epoch_seconds", "one local epoch in-process, s (no process start)", "{:.3f}"),
           ("batch1_us_per_row", "serving µs/row, batch 1", "{:.1f}"),
           ("batch_us_per_row", "serving µs/row, batch {batch}", "{:.2f}"),
           ("session_batch1_us_per_row", "model session µs/row, batch 1", "{:.1f}"),
           ("session_batch_us_per_row", "model session µs/row, batch {batch}", "{:.2f}")]


def table(results: dict[str, dict], batch: int) -> str:
    """Markdown: a row per figure, a column per kind with its ratio to dense."""
    kinds = list(results)
    reference = results[REFERENCE]
    lines = ["| figure | " + " | ".join(f"{k} ({results[k]['parameters']:,} parameters, served "
                                           f"{results[k]['served']})" for k in kinds) + " |",
             "|---|" + "---|" * len(kinds)]
    for key, name, fmt in FIGURES:
        cells = []
        for k in kinds:
            value = results[k][key]
            ratio = "" if k == REFERENCE else f" ({value / reference[key]:.1f}×)"
            cells.append(fmt.format(value) + ratio)
        lines.append(f"| {name.format(batch=batch)} | " + " | ".join(cells) + " |")
    lines.append("| ONNX bytes fp32 / int8 | " + " | ".join(
        f"{results[k]['onnx_bytes']['fp32']:,} / {results[k]['onnx_bytes']['int8']:,}" for k in kinds) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default="dense,conv1d,lstm", help="comma-separated; dense is always measured")
    parser.add_argument("--worker", default="valve1", help="worker id from config.yaml (its SKAB partition)")
    parser.add_argument("--rounds", type=int, default=3, help="training rounds per kind, each its own process")
    parser.add_argument("--batch", type=int, default=4096, help="the large batch, rows")
    parser.add_argument("--repeat", type=int, default=5, help="serving timings: best of this many")
    parser.add_argument("--number", type=int, default=2000, help="rows per serving timing loop")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    machine = print_header("model kinds: training round and serving cost, ratio to the dense model", argv)
    kinds = [REFERENCE] + [k.strip() for k in args.kinds.split(",") if k.strip() and k.strip() != REFERENCE]
    import torch

    torch.set_num_threads(1)  # what the worker's serving and training processes use
    results = {}
    with tempfile.TemporaryDirectory(prefix="fedad-bench-kinds-") as tmp:
        for kind in kinds:
            results[kind] = measure_kind(kind, args.worker, args.rounds, args.batch, args.repeat, args.number,
                                         Path(tmp))
            r = results[kind]
            print(f"{kind}: {r['model']}; {r['training_inputs']} training windows × {r['epochs']} epochs: "
                  f"{r['train_seconds_per_round']:.2f}s / round ({r['train_cpu_seconds_per_round']:.2f}s CPU), "
                  f"peak {r['train_peak_rss_mib']:.0f} MiB; serving {r['batch1_us_per_row']:.1f} µs/row batch 1, "
                  f"{r['batch_us_per_row']:.2f} µs/row batch {args.batch}", flush=True)
    print()
    print(table(results, args.batch))
    payload = {"machine": machine, "args": vars(args), "kinds": results,
               "ratios_to_dense": {k: {key: float(np.float64(r[key]) / results[REFERENCE][key])
                                       for key, _, _ in FIGURES} for k, r in results.items()}}
    emit_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
