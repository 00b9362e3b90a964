"""The model kinds side by side on SKAB's held-out protocol: dense, conv1d and lstm, each trained federated.

Each kind goes through the evaluation's own path (services/evaluation/runner.py: ``train_federated`` drives the
aggregator's round state machine with every worker's ``AnomalyDetector.partial_fit``; ``score_trained`` exports,
quantises, calibrates and scores as a worker installs a model), with the config as it is except what the kind needs:
``conv1d`` and ``lstm`` read raw windows (``data.window_stats: []``). One table: F1 / FAR / MAR / ROC-AUC of the
fp32 and the int8 model, parameters, ONNX bytes, training seconds per round on one core, and onnxruntime µs per row
at batch 1 and 256 (one thread, as /detect runs).

    python -m services.evaluation.kinds [--kinds dense,conv1d,lstm] [--out reports/kinds]

Sizes and data settings come from config.yaml and ``FEDAD__…`` overrides, e.g.
``FEDAD__MODEL__CONV1D__KERNEL=7`` or ``FEDAD__DATA__WINDOW=30`` (the window applies to every kind).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from pydantic import ValidationError

from services.config import INT8_REFUSED, MODEL_KINDS, RAW_WINDOW_KINDS, ConfigError, Settings, load_settings
from services.evaluation.runner import Progress, load_nodes, pooled, score_trained, timing, train_federated
from services.model.layout import Architecture

PRECISIONS = ("fp32", "int8")


def kind_settings(settings: Settings, kind: str) -> Settings:
    """The config with ``model.kind`` set and what that kind needs: raw windows for conv1d / lstm, validated again
    (a window shorter than the kernel is refused here as at start-up)."""
    raw = settings.model_dump(mode="json")
    raw["model"]["kind"] = kind
    if kind in RAW_WINDOW_KINDS:
        raw["data"]["window_stats"] = []
    if kind in INT8_REFUSED:
        raw["serving"]["model"] = "fp32"
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"model.kind {kind}: " + "; ".join(e["msg"] for e in exc.errors())) from None


def evaluate_kind(settings: Settings, kind: str, workdir: Path, progress: Progress) -> dict:
    """Train ``kind`` federated, score fp32 and int8 held out, time serving: one entry of the table."""
    settings = kind_settings(settings, kind)
    arch = Architecture.from_settings(settings)
    nodes = load_nodes(settings)
    progress(f"{kind}: {arch.n_params} parameters, input {arch.width} values; "
             f"{settings.federation.rounds} rounds × {settings.model.local_epochs} epochs")
    trained = train_federated(settings, nodes, progress)
    scored = score_trained(settings, nodes, trained, workdir / kind)
    first = next(iter(nodes))
    rows = nodes[first].windows(trained.scalers[first], "held_out")
    entry = {"parameters": arch.n_params, "width": arch.width, "spec_hash": arch.spec_hash,
             "seconds_per_round": round(trained.seconds / settings.federation.rounds, 2),
             "served": settings.serving.model, "int8_refused": INT8_REFUSED.get(kind),
             "model": _sizes(settings), "precisions": {}}
    for precision in PRECISIONS:
        entry["precisions"][precision] = {**pooled(nodes, scored, precision),
                                          "onnx_bytes": scored[first][precision]["bytes"],
                                          **timing(scored[first][precision]["onnx"], rows)}
    entry["int8_minus_fp32_roc_auc"] = round(entry["precisions"]["int8"]["roc_auc"]
                                             - entry["precisions"]["fp32"]["roc_auc"], 4)
    fp = entry["precisions"]["fp32"]
    progress(f"{kind}: fp32 F1 {fp['f1']:.3f} FAR {fp['far']:.2f}% ROC-AUC {fp['roc_auc']:.4f}; "
             f"int8 − fp32 ROC-AUC {entry['int8_minus_fp32_roc_auc']:+.4f}")
    return entry


def _sizes(settings: Settings) -> str:
    model, data = settings.model, settings.data
    inputs = f"window {data.window} " + ("/".join(data.window_stats) if data.window_stats else "raw")
    if model.kind == "conv1d":
        return f"channels {model.conv1d.channels}, kernel {model.conv1d.kernel}; {inputs}"
    if model.kind == "lstm":
        return f"hidden {model.lstm.hidden}; {inputs}"
    return f"hidden {model.hidden}; {inputs}"


def format_table(results: dict) -> str:
    """One markdown table, a row per kind and precision."""
    head = ("| kind | model | F1 | FAR % | MAR % | ROC-AUC | int8 − fp32 AUC | parameters | ONNX kB | s / round "
            "| µs/row batch 1 | µs/row batch 256 | served |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for kind, e in results["kinds"].items():
        for precision in PRECISIONS:
            p = e["precisions"][precision]
            served = "yes" if e["served"] == precision else ("refused" if precision == "int8" and e["int8_refused"]
                                                             else "")
            lines.append(
                f"| {kind} | {precision} | {p['f1']:.3f} | {p['far']:.2f} | {p['mar']:.2f} | {p['roc_auc']:.4f} | "
                f"{'%+.4f' % e['int8_minus_fp32_roc_auc'] if precision == 'int8' else ''} | {e['parameters']} | "
                f"{p['onnx_bytes'] / 1024:.1f} | {e['seconds_per_round']:.2f} | {p['us_per_row_batch1']:.1f} | "
                f"{p['us_per_row_batch256']:.2f} | {served} |")
    lines.append("")
    for kind, e in results["kinds"].items():
        lines.append(f"- {kind}: {e['model']}" + (f"; int8 not served: {e['int8_refused']}" if e["int8_refused"]
                                                   else ""))
    return "\n".join(lines)


def run_kinds(settings: Settings, kinds: tuple[str, ...], out_dir: Path, echo=print) -> dict:
    torch.set_num_threads(1)  # training time per round on one core
    progress = Progress(echo)
    results = {"rounds": settings.federation.rounds, "local_epochs": settings.model.local_epochs, "kinds": {}}
    with tempfile.TemporaryDirectory(prefix="fedad-kinds-") as tmp:
        for kind in kinds:
            results["kinds"][kind] = evaluate_kind(settings, kind, Path(tmp), progress)
    results["seconds"] = round(time.time() - progress.started, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "kinds.json").write_text(json.dumps(results, indent=1))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", default=",".join(MODEL_KINDS), help="comma-separated subset of "
                                                                        + ", ".join(MODEL_KINDS))
    parser.add_argument("--out", default="reports/kinds", help="folder for kinds.json")
    args = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = [k for k in kinds if k not in MODEL_KINDS]
    if unknown or not kinds:
        raise SystemExit(f"--kinds: unknown kind(s) {unknown}; choose from {', '.join(MODEL_KINDS)}")
    try:
        results = run_kinds(load_settings(), kinds, Path(args.out), echo=lambda m: print(m, flush=True))
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from None
    print(f"\nSKAB held-out, federated ({results['rounds']} rounds × {results['local_epochs']} epochs):\n")
    print(format_table(results))
    print(f"\ntook {results['seconds']:.0f}s; results in {args.out}/kinds.json")


if __name__ == "__main__":
    main()
