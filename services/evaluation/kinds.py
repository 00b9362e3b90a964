"""The model kinds side by side on one data set: dense, conv1d and lstm, each trained federated, centralised and
local-only, scored fp32 and int8, with what each costs.

Each kind goes through the evaluation's own path (services/evaluation/runner.py: ``train_federated`` drives the
aggregator's round state machine with every worker's ``AnomalyDetector.partial_fit``; ``train_centralised`` and
``train_local_only`` the same training on pooled or lone data; ``score_trained`` exports, quantises, calibrates and
scores as a worker installs a model), with the config as it is except what the kind needs: ``conv1d`` and ``lstm``
read raw windows (``data.window_stats: []``), lstm is served fp32 (``INT8_REFUSED``), and a conv1d kernel longer
than the window is cut to it (a window of 1, as on Shuttle, leaves both kinds a model of one row).

Per kind: pooled F1 / FAR / MAR / ROC-AUC of fp32 and int8 per training mode; parameters; ONNX bytes fp32 / int8;
training seconds per round on one core (in-process, ``torch.set_num_threads(1)``, all workers); onnxruntime µs per
row at batch 1 and 256 (one thread, as /detect runs); and one round of the first worker's local training in the
worker's own training process (services/worker/trainer.py, a child per round as the worker runs it): wall and CPU
seconds and its peak resident memory.

    python -m services.evaluation.kinds [--kinds dense,conv1d,lstm] [--modes federated] [--out reports/kinds]

(``make evaluate-kinds``: SKAB, federated only, the quick look; ``make evaluate`` runs every mode on every labelled
data set, services/evaluation/grid.py.) Sizes and data settings come from config.yaml and ``FEDAD__…`` overrides,
e.g. ``FEDAD__MODEL__CONV1D__KERNEL=7`` or ``FEDAD__DATA__WINDOW=30`` (the window applies to every kind).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from services.config import INT8_REFUSED, MODEL_KINDS, RAW_WINDOW_KINDS, ConfigError, Settings, load_settings
from services.evaluation.runner import (
    MODES,
    Progress,
    load_nodes,
    pooled,
    score_trained,
    timing,
    train_centralised,
    train_federated,
    train_local_only,
)
from services.evaluation.table import format_kinds_table
from services.model.detector import AnomalyDetector, DetectorSpec, node_seed
from services.model.layout import Architecture
from services.protocol.messages import TrainingPlan

PRECISIONS = ("fp32", "int8")
TRAINERS = {"federated": train_federated, "centralised": train_centralised, "local": train_local_only}
KEPT = ("f1", "far", "mar", "roc_auc", "pr_auc", "rows", "anomalies", "labels", "alarm_rate", "ratio_p50",
        "ratio_p99")


def kind_settings(settings: Settings, kind: str) -> Settings:
    """The config with ``model.kind`` set and what that kind needs: raw windows for conv1d / lstm, fp32 serving where
    int8 is refused, a conv1d kernel no longer than the window; validated again as at start-up."""
    raw = settings.model_dump(mode="json")
    raw["model"]["kind"] = kind
    if kind in RAW_WINDOW_KINDS:
        raw["data"]["window_stats"] = []
    if kind in INT8_REFUSED:
        raw["serving"]["model"] = "fp32"
    window = raw["data"]["window"]
    if kind == "conv1d" and raw["model"]["conv1d"]["kernel"] > window:
        raw["model"]["conv1d"]["kernel"] = window if window % 2 else window - 1
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"model.kind {kind}: " + "; ".join(e["msg"] for e in exc.errors())) from None


def kind_note(settings: Settings, kind: str) -> str | None:
    """Why a kind's figures on this data mean less than they seem, or None."""
    if kind in RAW_WINDOW_KINDS and settings.data.window == 1:
        return (f"window 1: rows are scored alone (no time order), so {kind} sees one row"
                + (" (kernel 1): a per-row network, not a sequence model" if kind == "conv1d"
                   else ", a one-step sequence: a per-row network, not a sequence model"))
    return None


def describe_model(settings: Settings) -> str:
    model, data = settings.model, settings.data
    inputs = f"window {data.window} " + ("/".join(data.window_stats) if data.window_stats else "raw")
    if model.kind == "conv1d":
        return f"channels {model.conv1d.channels}, kernel {model.conv1d.kernel}; {inputs}"
    if model.kind == "lstm":
        return f"hidden {model.lstm.hidden}; {inputs}"
    return f"hidden {model.hidden}; {inputs}"


def training_footprint(settings: Settings, nodes: dict, workdir: Path) -> dict:
    """One round of the first worker's local training in the worker's training process, from the seeded start:
    wall and CPU seconds and the process's peak RSS (its VmHWM), as /v1/status ``last_training`` reports them."""
    from services.protocol.scaling import FeatureStats
    from services.worker.trainer import Trainer

    worker_id, node = next(iter(nodes.items()))
    inputs = node.windows(FeatureStats.from_rows(node.train_raw()).scaler(), "train")
    spec = DetectorSpec.from_settings(settings)
    run = Trainer(workdir).train(spec.architecture, AnomalyDetector(spec).get_weights(), inputs,
                                 TrainingPlan.from_settings(settings), node_seed(settings.model.seed, worker_id))
    return {"worker": worker_id, "inputs": len(inputs), "epochs": settings.model.local_epochs,
            "seconds": round(run.seconds, 2), "cpu_seconds": round(run.cpu_seconds, 2),
            "peak_rss_mib": round(run.peak_rss_bytes / 2**20, 1)}


def _metrics(p: dict) -> dict:
    return {k: v for k, v in p.items() if k in KEPT}


def evaluate_kind(settings: Settings, kind: str, modes: tuple[str, ...], workdir: Path, progress: Progress,
                  evaluated: dict | None = None) -> dict:
    """Train ``kind`` in every mode, score fp32 and int8 held out, time serving and one training round: one entry.
    ``evaluated``: ``run_evaluation``'s results for this very kind and config, whose modes are taken, not retrained."""
    settings = kind_settings(settings, kind)
    arch = Architecture.from_settings(settings)
    nodes = load_nodes(settings)
    progress(f"{kind}: {arch.n_params} parameters, input {arch.width} values ({describe_model(settings)}); "
             f"{', '.join(modes)}")
    entry = {"parameters": arch.n_params, "width": arch.width, "spec_hash": arch.spec_hash,
             "served": "served" if settings.serving.model == "auto" else settings.serving.model,  # auto: per node
             "int8_refused": INT8_REFUSED.get(kind),
             "note": kind_note(settings, kind), "model": describe_model(settings),
             "rounds": settings.federation.rounds, "modes": {}}
    first = next(iter(nodes))
    if evaluated is not None and "federated" in evaluated["modes"]:
        _take_evaluated(entry, evaluated, settings.federation.rounds)
    for mode in (m for m in modes if m not in entry["modes"]):
        trained = TRAINERS[mode](settings, nodes, progress)
        scored = score_trained(settings, nodes, trained, workdir / kind / mode)
        result = {"seconds_per_round": round(trained.seconds / settings.federation.rounds, 2)}
        for precision in (*PRECISIONS, "served"):
            result[precision] = _metrics(pooled(nodes, scored, precision))
        entry["modes"][mode] = result
        if "onnx_bytes" not in entry:  # sizes and serving time: the same graph whichever mode trained it
            rows = nodes[first].windows(trained.scalers[first], "held_out")
            entry["onnx_bytes"] = {p: scored[first][p]["bytes"] for p in PRECISIONS}
            entry["serving_us"] = {p: timing(scored[first][p]["onnx"], rows) for p in PRECISIONS}
        progress(f"{kind} {mode}: " + "; ".join(f"{p} {_summary(result[p])}" for p in PRECISIONS))
    entry["training_process"] = training_footprint(settings, nodes, workdir / kind)
    t = entry["training_process"]
    progress(f"{kind}: one round of {first} in the worker's training process: {t['seconds']:.1f}s wall, "
             f"{t['cpu_seconds']:.1f}s CPU, peak {t['peak_rss_mib']:.0f} MiB")
    return entry


def _take_evaluated(entry: dict, results: dict, rounds: int) -> None:
    """The modes ``run_evaluation`` already trained and scored for this kind, with the federated model's sizes and
    serving times."""
    for mode, done in results["modes"].items():
        entry["modes"][mode] = {"seconds_per_round": round(done["train_seconds"] / rounds, 2),
                                **{p: _metrics(done["kinds"][p]["pooled"]) for p in PRECISIONS},
                                "served": _metrics(done["served"]["pooled"])}
        if "timing" in done:
            entry["onnx_bytes"] = dict(done["int8_vs_fp32"]["bytes"])
            entry["serving_us"] = done["timing"]


def _summary(p: dict) -> str:
    if p.get("labels", True) and "f1" in p:
        return f"F1 {p['f1']:.3f} FAR {p['far']:.2f}% MAR {p['mar']:.2f}% ROC-AUC {p.get('roc_auc', np.nan):.4f}"
    return f"alarms {p.get('alarm_rate', 0):.2f}% of held-out rows"


def compare_kinds(settings: Settings, kinds: tuple[str, ...], modes: tuple[str, ...] = MODES,
                  echo=print, progress: Progress | None = None, evaluated: dict | None = None) -> dict:
    """{kind: entry} for one data set (the settings' data), every kind trained in every mode. ``evaluated``: the
    results of ``run_evaluation`` on these settings, reused for the config's own ``model.kind``."""
    torch.set_num_threads(1)  # training time per round on one core
    progress = progress or Progress(echo)
    with tempfile.TemporaryDirectory(prefix="fedad-kinds-") as tmp:
        return {kind: evaluate_kind(settings, kind, modes, Path(tmp), progress,
                                    evaluated if kind == settings.model.kind else None) for kind in kinds}


def parse_list(value: str, known: tuple[str, ...], option: str) -> tuple[str, ...]:
    chosen = tuple(k.strip() for k in value.split(",") if k.strip())
    unknown = [k for k in chosen if k not in known]
    if unknown or not chosen:
        raise SystemExit(f"{option}: unknown value(s) {unknown}; choose from {', '.join(known)}")
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", default=",".join(MODEL_KINDS), help="comma-separated subset of "
                                                                        + ", ".join(MODEL_KINDS))
    parser.add_argument("--modes", default="federated", help="comma-separated subset of " + ", ".join(MODES))
    parser.add_argument("--out", default="reports/kinds", help="folder for kinds.json")
    args = parser.parse_args(argv)
    kinds = parse_list(args.kinds, MODEL_KINDS, "--kinds")
    modes = parse_list(args.modes, MODES, "--modes")
    settings = load_settings()
    started = time.time()
    try:
        comparison = compare_kinds(settings, kinds, modes, echo=lambda m: print(m, flush=True))
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "skab" if settings.data.source.download == "skab" else "config"
    (out / "kinds.json").write_text(json.dumps({name: comparison}, indent=1))
    print(f"\n{settings.federation.rounds} rounds × {settings.model.local_epochs} epochs:\n")
    print(format_kinds_table({name: comparison}))
    print(f"\ntook {time.time() - started:.0f}s; results in {args.out}/kinds.json")


if __name__ == "__main__":
    main()
