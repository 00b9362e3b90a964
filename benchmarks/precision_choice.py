"""What ``serving.model: auto`` costs a worker at each install, against the install it replaces, in the same run.

A worker installs every global round: ``AnomalyDetector.calibrate`` (fp32 graph, static int8 quantisation on the
node's normal inputs, the served session, its threshold) and one scoring of its held-out rows for the evaluation and
the gate. ``auto`` adds a second session (the other precision, with its own threshold) and one more scoring of the
held-out rows by it (services/model/precision.py). Reference: (a) calibrate + score the held-out rows once, what an
install did before; measured: (b) calibrate + ``choose_precision`` (both sessions score them). The model is real:
trained on the worker's SKAB training rows (torch, as the worker does); rows are its held-out SKAB rows. One thread.

    python -m benchmarks.precision_choice [--worker valve1] [--repeat 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import emit_json, print_header


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", default="valve1")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    machine = print_header("serving.model auto: the install's cost with and without the precision check", argv)

    import onnxruntime as ort
    import torch

    from services.config import load_settings
    from services.data.sources import load_node
    from services.model.detector import AnomalyDetector, DetectorSpec
    from services.protocol.messages import TrainingPlan
    from services.protocol.scaling import FeatureStats

    torch.set_num_threads(1)
    ort.set_default_logger_severity(3)
    settings = load_settings()
    node = load_node(settings, settings.worker(args.worker))
    scaler = FeatureStats.from_rows(node.train_raw()).scaler()
    train, held, labels = node.windows(scaler, "train"), node.windows(scaler, "held_out"), node.held_out_labels()
    spec = DetectorSpec.from_settings(settings)
    trained = AnomalyDetector(spec)
    trained.partial_fit(train, TrainingPlan.from_settings(settings), seed=0, epochs=args.epochs)
    weights, reference = trained.get_weights(), node.default_reference(scaler)

    def before(work: Path) -> None:
        detector = AnomalyDetector(spec, weights).calibrate(train, reference, workdir=work)
        detector.evaluate(held, labels)

    def auto(work: Path):
        detector = AnomalyDetector(spec, weights).calibrate(train, reference, workdir=work)
        served, choice = detector.choose_precision("auto", train, held, labels)
        served.evaluate(held, labels)
        return choice

    results: dict[str, list[float]] = {"before": [], "auto": []}
    choice = None
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):  # alternate, so load from other processes hits both alike
            for name, fn in (("before", before), ("auto", auto)):
                started = time.process_time()
                out = fn(Path(tmp))
                results[name].append(time.process_time() - started)
                choice = out or choice
    best = {k: min(v) for k, v in results.items()}
    print(f"worker {args.worker}: {len(train)} training inputs, {len(held)} held-out rows, "
          f"model {settings.model_shape}")
    print(f"(a) install before (calibrate + score held-out once):  {1000 * best['before']:7.1f} ms CPU (best of "
          f"{args.repeat})")
    print(f"(b) install with auto (+ second session, both score):  {1000 * best['auto']:7.1f} ms CPU")
    print(f"ratio (b)/(a): {best['auto'] / best['before']:.2f}; the choice: {choice.reason if choice else '?'}")
    print(f"median over repeats: (a) {1000 * np.median(results['before']):.1f} ms, (b) "
          f"{1000 * np.median(results['auto']):.1f} ms")
    print("\ntargets: none; measured, so the cost of a choice made at every install is known")
    emit_json(args.json, {"machine": machine, "worker": args.worker, "train_inputs": len(train),
                          "held_out_rows": len(held), "cpu_ms": {k: [1000 * x for x in v] for k, v in results.items()},
                          "ratio": best["auto"] / best["before"], "choice": choice.as_dict() if choice else None})


if __name__ == "__main__":
    main()
