"""Raw rows → scores in one onnxruntime session (the preprocessing inside the served graph) against the reference
measured in the same run:

  (a) the raw int8 session on ready model inputs — the compute floor;
  (b) today's path: the numpy ``InputPipeline`` (services/data/windows.py) then the same session;
  (c) the in-graph path: one session from raw rows (services/model/preprocess_graph.served_graph), the reference
      baked in; (c') the same with the reference fed on every call (one session for every stream's reference).

The model is real: trained for ``--epochs`` on the worker's SKAB training rows (torch, as the worker does), its
fp32 graph built from the weights without torch (services/model/graph.py) and quantised to static int8 on the
node's own training inputs. Rows are the worker's held-out SKAB rows, scaled by the first run's reference.
Everything runs in this one process with one onnxruntime thread, as the worker does.

    python -m benchmarks.graph                                  # the figures in the report (~1 min)
    python -m benchmarks.graph --batches 1,256 --repeat 2       # quicker

Figures are per call, best of ``--repeat`` rounds; in each round (a), (b) and (c) run one after the other at every
batch size, so load from other processes hits them alike. rows/s is from this process's CPU time (what a gateway's
core pays per row, and steady on a shared machine); wall-clock rows/s is printed beside it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import emit_json, print_header

TARGET = 0.25  # (c)/(a) at the largest batch: raw rows → scores at a quarter of the bare model's rows/s or better


def timed(fn, number: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per call over ``number`` calls."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(number):
        fn()
    return (time.process_time() - cpu) / number, (time.perf_counter() - wall) / number


def build(settings, worker: str, epochs: int, served: str):
    """The worker's data, a trained model's served ONNX (fp32 or int8), the reference and held-out rows."""
    from services.data.sources import load_node
    from services.model.detector import CALIBRATION_ROWS, AnomalyDetector, DetectorSpec, node_seed
    from services.model.graph import autoencoder_graph
    from services.model.quantize import quantize_int8
    from services.protocol.messages import TrainingPlan

    node = load_node(settings, settings.worker(worker))
    spec = DetectorSpec.from_settings(settings)
    if spec.prep.baseline != "run":
        raise SystemExit("this benchmark scales by each run's own reference (data.baseline: run)")
    train = node.windows(None, "train")
    detector = AnomalyDetector(spec)
    detector.partial_fit(train, TrainingPlan.from_settings(settings), seed=node_seed(0, worker), epochs=epochs)
    model = autoencoder_graph(detector.get_weights(), spec.width, list(spec.hidden))
    if served == "int8":
        take = np.linspace(0, len(train) - 1, min(CALIBRATION_ROWS, len(train)), dtype=int)
        with tempfile.TemporaryDirectory() as work:
            model = quantize_int8(model, train[take], Path(work))
    reference = node.reference(node.runs[0], node.masks[0], None)
    held_out = [run.values[~mask] for run, mask in zip(node.runs, node.masks, strict=True)]
    rows = np.concatenate(held_out).astype(np.float32)
    return spec, model, reference, rows, len(settings.data.features)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", default="valve1", help="worker id from config.yaml (its SKAB partition)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs before serving")
    parser.add_argument("--served", choices=("int8", "fp32"), default="int8")
    parser.add_argument("--batches", default="1,256,4096", help="rows per call, comma-separated")
    parser.add_argument("--repeat", type=int, default=7, help="rounds; figures are the best of them")
    parser.add_argument("--loop-rows", type=int, default=8192, help="rows per timing loop (at least 20 calls)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    batches = sorted({int(b) for b in args.batches.split(",")})
    machine = print_header("raw rows → scores: numpy preprocessing + session vs the preprocessing in the graph", argv)

    from services.config import load_settings
    from services.data.windows import InputPipeline
    from services.model.preprocess_graph import RAW_INPUT_NAME, reference_feeds, served_graph
    from services.model.scoring import INPUT_NAME, SCORE_NAME, make_session

    settings = load_settings()
    started = time.time()
    spec, model, reference, rows, n_features = build(settings, args.worker, args.epochs, args.served)
    if len(rows) < max(batches):
        rows = np.concatenate([rows] * (max(batches) // len(rows) + 1))
    session = make_session(model)
    pipeline = InputPipeline(spec.prep, reference)
    graph = make_session(served_graph(model, spec.prep, reference, n_features))
    fed = make_session(served_graph(model, spec.prep, None, n_features))
    feeds = reference_feeds(spec.prep, reference)
    print(f"# {args.served} model, input width {spec.width}, hidden {list(spec.hidden)}, window {spec.prep.window} "
          f"{list(spec.prep.stats) or 'flattened'}, {n_features} raw columns; trained and built in "
          f"{time.time() - started:.1f}s")

    configs = {
        "(a) raw session, ready inputs": lambda x, r: session.run([SCORE_NAME], {INPUT_NAME: x}),
        "(b) InputPipeline + session": lambda x, r: session.run([SCORE_NAME], {INPUT_NAME: pipeline(r)}),
        "(c) in-graph, raw rows": lambda x, r: graph.run([SCORE_NAME], {RAW_INPUT_NAME: r}),
        "(c') in-graph, reference fed": lambda x, r: fed.run([SCORE_NAME], {RAW_INPUT_NAME: r, **feeds}),
    }
    inputs = {n: pipeline(rows[:n]) for n in batches}
    for n in batches:  # before any timing: the in-graph path scores what today's path scores
        today = session.run([SCORE_NAME], {INPUT_NAME: inputs[n]})[0]
        for ours in (graph.run([SCORE_NAME], {RAW_INPUT_NAME: rows[:n]})[0],
                     fed.run([SCORE_NAME], {RAW_INPUT_NAME: rows[:n], **feeds})[0]):
            close = np.isclose(ours, today, rtol=1e-5, atol=0)
            if close.mean() < 0.999:
                raise RuntimeError(f"batch {n}: {np.sum(~close)} of {n} in-graph scores differ from today's path")

    best: dict = {name: {n: (float("inf"), float("inf")) for n in batches} for name in configs}
    for _ in range(args.repeat):
        for n in batches:
            x, r = inputs[n], rows[:n]
            number = max(20, args.loop_rows // n)
            for name, fn in configs.items():
                cpu, wall = timed(lambda: fn(x, r), number)
                best[name][n] = (min(best[name][n][0], cpu), min(best[name][n][1], wall))
    figures = {name: {n: {"cpu_us_per_call": cpu * 1e6, "wall_us_per_call": wall * 1e6,
                          "rows_per_cpu_s": n / cpu, "rows_per_wall_s": n / wall, "cpu_us_per_row": cpu * 1e6 / n}
                      for n, (cpu, wall) in per.items()} for name, per in best.items()}
    a, b, c, c_fed = (figures[name] for name in configs)
    ratios = {n: {"c_vs_a": c[n]["rows_per_cpu_s"] / a[n]["rows_per_cpu_s"],
                  "c_fed_vs_a": c_fed[n]["rows_per_cpu_s"] / a[n]["rows_per_cpu_s"],
                  "b_vs_a": b[n]["rows_per_cpu_s"] / a[n]["rows_per_cpu_s"],
                  "c_vs_b": c[n]["rows_per_cpu_s"] / b[n]["rows_per_cpu_s"],
                  "c_vs_a_wall": c[n]["rows_per_wall_s"] / a[n]["rows_per_wall_s"]} for n in batches}

    print()
    print(f"rows/s from CPU time (wall clock in brackets), best of {args.repeat} rounds:")
    print(f"  {'path':<31}" + "".join(f"{'batch ' + str(n):>26}" for n in batches))
    for name, per in figures.items():
        print(f"  {name:<31}" + "".join(f"{per[n]['rows_per_cpu_s']:>13,.0f} ({per[n]['rows_per_wall_s']:>10,.0f})"
                                        for n in batches))
    print(f"  {'CPU µs per row, (c)':<31}" + "".join(f"{c[n]['cpu_us_per_row']:>26.3f}" for n in batches))
    print(f"  {'CPU µs per row, (c)':<31}".replace("(c)", "(c')") + "".join(f"{c_fed[n]['cpu_us_per_row']:>26.3f}"
                                                                          for n in batches))
    print(f"  {'CPU µs per row, (b)':<31}" + "".join(f"{b[n]['cpu_us_per_row']:>26.3f}" for n in batches))
    print()
    print("ratios (CPU time; wall clock for (c)/(a) in brackets):")
    for key, label in (("c_vs_a", "(c)/(a) in-graph vs raw session"), ("c_fed_vs_a", "(c')/(a) reference fed"),
                       ("b_vs_a", "(b)/(a) today vs raw session"),
                       ("c_vs_b", "(c)/(b) in-graph vs today")):
        print(f"  {label:<31}" + "".join(
            f"{ratios[n][key]:>13.3f}" + (f" ({ratios[n]['c_vs_a_wall']:>10.3f})" if key == "c_vs_a" else " " * 13)
            for n in batches))
    top = max(batches)
    met = min(ratios[top]["c_vs_a"], ratios[top]["c_fed_vs_a"]) >= TARGET
    print(f"\ntarget: (c)/(a) at batch {top} = {ratios[top]['c_vs_a']:.3f}, (c')/(a) = "
          f"{ratios[top]['c_fed_vs_a']:.3f}  {'met' if met else 'NOT met'} (target >= {TARGET:g})")
    result = {"machine": machine, "args": vars(args), "figures": figures, "ratios": ratios,
              "target": {"c_vs_a": TARGET, "batch": top, "met": met}}
    emit_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
