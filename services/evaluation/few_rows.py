"""What the federation is worth to a node with little data: its held-out figures when it trains and calibrates on only
``N`` normal rows, served the federation's model vs a model of its own.

For each chosen node and each ``N``:
- **federated**: the federation as ``fedad evaluate`` runs it (services/evaluation/runner.py ``train_federated``: the
  aggregator's round state machine, every worker's ``AnomalyDetector.partial_fit``), where the other nodes keep
  all their training rows and the small node joins and trains with its ``N`` rows (its FedAvg weight is ``N``);
  the global model is then calibrated (threshold, int8 scales) on the small node's ``N`` rows;
- **local-only**: a model trained on the same ``N`` rows alone, for as many epochs as the federation runs
  (rounds × local epochs), calibrated on them.
Both are scored on exactly the held-out rows of the standard protocol (``data.training``: SKAB, every row after the
first ``rows`` of each run), so the figures stand beside the per-node figures of ``make evaluate``, which are
printed too (``N`` = all: the node with its standard training rows).

Which ``N`` rows: the node's earliest training rows in run order (SKAB: the first ``N`` rows of its first run; a new
node that has seen one run start). The training rows between them and the held-out part are neither trained on nor
scored. One thing still reads them: with ``data.baseline: run`` each run is scaled by its own first rows (its
reference, what a /detect stream's ``baseline`` rows are in service), for both models alike; with
``FEDAD__DATA__BASELINE=node`` the node scales with its ``N`` rows only and nothing else of its training part is read.

    python -m services.evaluation.few_rows [--rows 100,400] [--workers valve1,valve2,other] [--seeds 0,1,2]
        [--baselines run,node] [--no-full] [--out reports/few-rows]      # make evaluate-few-rows; docs/quality.md

Figures are means over ``--seeds`` (``model.seed``: initial weights and every node's shuffling) with min and max.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.config import ConfigError, Settings, load_settings
from services.data.node import NodeData
from services.data.source import DataError
from services.evaluation.runner import (
    KINDS,
    Progress,
    describe_data,
    load_nodes,
    score_trained,
    train_federated,
    train_local_only,
)
from services.protocol.scaling import Scaler

FIGURES = ("f1", "far", "mar", "roc_auc")
MODELS = ("federated", "local")


def earliest_rows(masks: list[np.ndarray], budget: int) -> list[np.ndarray]:
    """The first ``budget`` True rows of ``masks`` taken run after run: a node that has recorded only that much."""
    out, left = [], budget
    for mask in masks:
        keep = np.zeros_like(mask)
        chosen = np.flatnonzero(mask)[:left]
        keep[chosen] = True
        left -= len(chosen)
        out.append(keep)
    return out


@dataclass
class FewRowsNode(NodeData):
    """A node whose training (and threshold calibration) is cut to ``budget`` rows while its held-out rows, and each
    run's reference rows, stay those of the standard protocol."""

    budget: int = 0
    standard_masks: list = field(default_factory=list, repr=False)

    def __post_init__(self):
        super().__post_init__()
        self.standard_masks = self.masks
        self.masks = earliest_rows(self.standard_masks, self.budget)
        if not any(m.any() for m in self.masks):
            raise DataError(f"no training rows left with N = {self.budget}")

    @classmethod
    def of(cls, node: NodeData, budget: int) -> FewRowsNode:
        return cls(node.runs, node.prep, node.selection, budget=budget)

    @property
    def rows(self) -> int:
        return int(sum(m.sum() for m in self.masks))

    def run_inputs(self, scaler: Scaler | None) -> list[np.ndarray]:
        key = None if scaler is None else (tuple(scaler.mean), tuple(scaler.std))
        if self._cache.get("key") != key or "inputs" not in self._cache:
            self._cache.clear()
            inputs = [self.prep.inputs(run.values, self.reference(run, standard, scaler))
                      for run, standard in zip(self.runs, self.standard_masks)]
            self._cache.update(key=key, inputs=inputs)
        return self._cache["inputs"]

    def windows(self, scaler: Scaler | None, part: str) -> np.ndarray:
        if part == "train":
            return np.concatenate([x[m] for x, m in zip(self.run_inputs(scaler), self.masks)])
        return np.concatenate([x[~m] for x, m in zip(self.run_inputs(scaler), self.standard_masks)])

    def held_out_labels(self) -> np.ndarray | None:
        if not self.labelled:
            return None
        parts = []
        for run, m in zip(self.runs, self.standard_masks):
            assert run.labels is not None  # labelled: every run has its labels
            parts.append(run.labels[~m])
        return np.concatenate(parts)


def _figures(scored: dict, kind: str) -> dict:
    metrics = scored[kind]["metrics"]
    return {**{k: metrics[k] for k in (*FIGURES, "alarm_rate") if k in metrics},
            "threshold": float(scored[kind]["threshold"])}


def _with_seed(settings: Settings, seed: int) -> Settings:
    seeded = settings.model_copy(deep=True)
    seeded.model.seed = seed
    return seeded


def _summary(per_seed: list[dict]) -> dict:
    """Mean, min and max of each figure over the seeds."""
    keys = [k for k in per_seed[0] if all(isinstance(p.get(k), (int, float)) for p in per_seed)]
    return {k: {"mean": float(np.mean([p[k] for p in per_seed])), "min": float(min(p[k] for p in per_seed)),
                "max": float(max(p[k] for p in per_seed))} for k in keys}


def evaluate_node(settings: Settings, nodes: dict[str, NodeData], worker: str, budget: int | None, workdir: Path,
                  seeds: tuple[int, ...] = (0,)) -> dict:
    """Federated and local-only figures of ``worker`` with ``budget`` training rows (None: its standard rows), one
    training of each per ``model.seed`` in ``seeds`` (initial weights and every node's shuffling)."""
    small = nodes[worker] if budget is None else FewRowsNode.of(nodes[worker], budget)
    fleet = {**nodes, worker: small}
    label = "all" if budget is None else budget
    held = small.standard_masks if isinstance(small, FewRowsNode) else small.masks
    entry: dict[str, Any] = {"worker": worker, "n": label, "rows": len(small.train_raw()),
             "held_out_rows": int(sum((~m).sum() for m in held)), "seeds": {}, "models": {}}
    for seed in seeds:
        seeded = _with_seed(settings, seed)
        trained = {"federated": train_federated(seeded, fleet, Progress(None)),
                   "local": train_local_only(seeded, {worker: small}, Progress(None))}
        entry["local_rows_trained"] = len(small.train_raw())
        run: dict[str, dict[str, Any]] = {}
        for model in MODELS:
            scored = score_trained(seeded, {worker: small}, trained[model], workdir / f"{worker}-{label}-{model}")
            run[model] = {kind: _figures(scored[worker], kind) for kind in (*KINDS, "served")}
            run[model]["train_seconds"] = round(trained[model].seconds, 1)
        entry["seeds"][seed] = run
    for model in MODELS:
        entry["models"][model] = {kind: _summary([entry["seeds"][s][model][kind] for s in seeds])
                                  for kind in (*KINDS, "served")}
    return entry


def run_few_rows(settings: Settings, budgets: tuple[int, ...], workers: tuple[str, ...] | None, out_dir: Path,
                 echo=print, full: bool = True, seeds: tuple[int, ...] = (0,)) -> dict:
    """Every chosen node × every ``N`` (and the node with all its training rows, ``full``) × every seed; writes
    few_rows.json to ``out_dir`` and returns it."""
    torch.set_num_threads(1)
    progress = Progress(echo)
    nodes = load_nodes(settings)
    chosen = workers or tuple(nodes)
    unknown = [w for w in chosen if w not in nodes]
    if unknown:
        raise ConfigError(f"--workers: unknown worker(s) {unknown}; known: {', '.join(nodes)}")
    labelled = all(n.labelled for n in nodes.values())
    served = "served" if settings.serving.model == "auto" else settings.serving.model  # auto: each node's choice
    results: dict[str, Any] = {
        "data": describe_data(settings), "labelled": labelled, "served": served, "seeds": list(seeds),
        "rounds": settings.federation.rounds, "local_epochs": settings.model.local_epochs,
        "baseline": settings.data.baseline, "standard_rows": {w: len(n.train_raw()) for w, n in nodes.items()},
        "entries": []}
    progress(f"{len(chosen)} node(s) × N = {', '.join(map(str, budgets))}{' and all' if full else ''} × seeds "
             f"{', '.join(map(str, seeds))}; {settings.federation.rounds} rounds × {settings.model.local_epochs} "
             f"epochs; baseline {settings.data.baseline}; served {served}")
    with tempfile.TemporaryDirectory(prefix="fedad-few-rows-") as tmp:
        for worker in chosen:
            for budget in (*budgets, None) if full else budgets:
                e = evaluate_node(settings, nodes, worker, budget, Path(tmp), seeds)
                results["entries"].append(e)
                f, c = e["models"]["federated"][served], e["models"]["local"][served]
                key = "f1" if labelled else "alarm_rate"
                progress(f"{worker} N={e['n']} ({e['rows']} rows): {key} federated {f[key]['mean']:.3f}, "
                         f"local-only {c[key]['mean']:.3f}" + (f"; FAR federated {f['far']['mean']:.2f}%, "
                                                               f"local-only {c['far']['mean']:.2f}%" if labelled
                                                               else ""))
    results["seconds"] = round(time.time() - progress.started, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "few_rows.json").write_text(json.dumps(results, indent=1))
    return results


def _cell(figure: dict | None, key: str, spread: bool) -> str:
    if figure is None:
        return "–"
    fmt = "{:.3f}" if key in ("f1", "roc_auc") else "{:.1f}"
    low, high = fmt.format(figure["min"]), fmt.format(figure["max"])
    return fmt.format(figure["mean"]) + (f" ({low}–{high})" if spread and low != high else "")


def format_table(results: dict) -> str:
    """One markdown table: a row per node and N, federated vs local-only held-out figures of the served model; with
    several seeds the mean and (min–max)."""
    kind, spread = results["served"], len(results["seeds"]) > 1
    keys = FIGURES if results["labelled"] else ("alarm_rate",)
    names = {"f1": "F1", "far": "FAR %", "mar": "MAR %", "roc_auc": "ROC-AUC", "alarm_rate": "alarms %"}
    head = "| node | N rows | " + " | ".join(f"{names[k]} fed. | {names[k]} local" for k in keys) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for e in results["entries"]:
        fed, loc = e["models"]["federated"][kind], e["models"]["local"][kind]
        n = f"all ({e['rows']})" if e["n"] == "all" else str(e["n"])
        lines.append(f"| {e['worker']} | {n} | " + " | ".join(
            f"{_cell(fed.get(k), k, spread)} | {_cell(loc.get(k), k, spread)}" for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="100,400", help="comma-separated N: training rows of the small node")
    parser.add_argument("--workers", default="", help="comma-separated nodes to shrink in turn (default: every one)")
    parser.add_argument("--baselines", default="", help="comma-separated data.baseline values to run in turn "
                                                       "(default: the config's)")
    parser.add_argument("--seeds", default="0", help="comma-separated model.seed values; figures: mean (min–max)")
    parser.add_argument("--no-full", action="store_true", help="skip the row with the node's standard training rows")
    parser.add_argument("--out", default="reports/few-rows",
                        help="folder for few_rows.json (per baseline: baseline-<b>/)")
    args = parser.parse_args(argv)
    try:
        budgets = tuple(int(n) for n in args.rows.split(",") if n.strip())
        seeds = tuple(int(n) for n in args.seeds.split(",") if n.strip()) or (0,)
    except ValueError:
        raise SystemExit("--rows, --seeds: whole numbers, comma-separated") from None
    if not budgets or min(budgets) < 1:
        raise SystemExit("--rows: at least one N, each >= 1")
    workers = tuple(w.strip() for w in args.workers.split(",") if w.strip()) or None
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()] or [None]
    started = time.time()
    for baseline in baselines:
        environ = {**os.environ, **({"FEDAD__DATA__BASELINE": baseline} if baseline else {})}
        out = Path(args.out) / (f"baseline-{baseline}" if baseline else "")
        try:
            results = run_few_rows(load_settings(environ=environ), budgets, workers, out,
                                   echo=lambda m: print(m, flush=True), full=not args.no_full, seeds=seeds)
        except (ConfigError, DataError) as exc:
            raise SystemExit(f"error: {exc}") from None
        print(f"\n{results['data']}; {results['rounds']} rounds × {results['local_epochs']} epochs; held-out "
              f"figures of the served {results['served']} model, federated vs local-only"
              + (f", mean (min–max) over model.seed {results['seeds']}" if len(results["seeds"]) > 1 else "")
              + ":\n")
        print(format_table(results) + "\n", flush=True)
    print(f"took {time.time() - started:.0f}s; results in {args.out}/")


if __name__ == "__main__":
    main()
