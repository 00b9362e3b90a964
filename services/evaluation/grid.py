"""Every model kind on every labelled data set, in one comparison: what ``make evaluate`` runs.

For each data set the full evaluation of the config's own kind (services/evaluation/runner.py: federated,
centralised and local-only, fp32 and int8, the IsolationForest reference, every figure of the report), then the
other kinds in the same modes (services/evaluation/kinds.py). Data sets by name: ``skab`` is the given config
(config.yaml unless ``--config``), ``shuttle``, ``synthetic`` and ``own-data`` are the examples' configs;
``FEDAD__…`` overrides apply to all. A data set whose files are not on this machine is skipped with the reason, the
others still run.

Written to ``--out``: ``<data set>/results.json`` + ``arrays.npz`` (what ``fedad report`` renders; each results file
also holds its ``model_kinds``), ``comparison.json`` and ``kinds.md`` (the table across data sets).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from services.config import REPO_ROOT, ConfigError, Settings, load_settings
from services.data.source import DataError
from services.evaluation.kinds import compare_kinds
from services.evaluation.runner import Progress, describe_data, json_default, run_evaluation
from services.evaluation.table import COMPARISON, format_kinds_table

DATASETS = {"skab": None, "shuttle": REPO_ROOT / "examples" / "shuttle.yaml",
            "synthetic": REPO_ROOT / "examples" / "synthetic.yaml",
            "own-data": REPO_ROOT / "examples" / "own-data" / "config.yaml"}


def evaluate_with_kinds(settings: Settings, out: Path, modes: tuple[str, ...], kinds: tuple[str, ...],
                        progress: Progress) -> dict:
    """One data set: ``run_evaluation`` of the config's kind, then every other kind; ``results["model_kinds"]``."""
    results = run_evaluation(settings, out, modes, progress=progress)
    if kinds:
        results["model_kinds"] = compare_kinds(settings, kinds, modes, progress=progress, evaluated=results)
        (out / "results.json").write_text(json.dumps(results, indent=1, default=json_default))
    return results


def dataset_name(settings: Settings) -> str:
    """A short name for the data a config reads: skab, synthetic, or its folder's name."""
    source = settings.data.source
    if source.download == "skab":
        return "skab"
    if source.kind == "synthetic":
        return "synthetic"
    return source.dir.name if source.dir else "files"


def dataset_settings(name: str, skab: Settings) -> Settings:
    path = DATASETS[name]
    return skab if path is None else load_settings(path)


def evaluate_datasets(skab: Settings, datasets: tuple[str, ...], out: Path, modes: tuple[str, ...],
                      kinds: tuple[str, ...], echo=print) -> dict:
    """Each named data set into ``out/<name>``; the comparison of kinds across them into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    comparison, skipped, progress = {}, {}, Progress(echo)
    for name in datasets:
        try:
            settings = dataset_settings(name, skab)
            progress(f"== {name}: {describe_data(settings)}; {settings.federation.rounds} rounds × "
                     f"{settings.model.local_epochs} epochs; kinds {', '.join(kinds)}")
            results = evaluate_with_kinds(settings, out / name, modes, kinds, progress)
        except (DataError, ConfigError, FileNotFoundError) as exc:
            skipped[name] = str(exc)
            progress(f"== {name} skipped: {exc}")
            continue
        comparison[name] = results.get("model_kinds", {})
    summary = {"comparison": comparison, "skipped": skipped, "modes": list(modes), "kinds": list(kinds),
               "seconds": round(time.time() - progress.started, 1)}
    (out / COMPARISON).write_text(json.dumps(summary, indent=1, default=json_default))
    (out / "kinds.md").write_text(format_kinds_table(comparison) + "\n")
    return summary
