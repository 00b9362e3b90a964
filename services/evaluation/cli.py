"""``fedad evaluate`` and ``fedad report``: run the evaluation, print the comparison table, render the report."""

from __future__ import annotations

import time
from pathlib import Path

from services.config import MODEL_KINDS, REPO_ROOT, ConfigError, Settings
from services.data.source import DataError
from services.evaluation.changepoints import format_board
from services.evaluation.runner import KINDS, MODES, Progress, describe_data
from services.evaluation.table import (
    MODE_NAMES,
    SKAB_LEADERBOARD,
    find_comparison,
    format_kinds_table,
    is_skab,
    table_rows,
)


def _resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path.cwd() / p


def format_table(results: dict) -> str:
    labelled = results.get("labelled", True)
    lines = [f"model {results['settings'].get('shape', '?')}; measured on {results.get('cpu', 'an unnamed CPU')} "
             "(int8 scores depend on these flags)"]
    if labelled:
        lines += [f"{'detector':<32} {'F1':>6} {'FAR %':>7} {'MAR %':>7} {'ROC-AUC':>8} {'PR-AUC':>7}"]
        for r in table_rows(results):
            lines.append(f"{r['name']:<32} {r['f1']:>6.3f} {r['far']:>7.2f} {r['mar']:>7.2f} "
                         f"{r.get('roc_auc', float('nan')):>8.4f} {r.get('pr_auc', float('nan')):>7.4f}")
    else:
        lines += ["no labels: alarm rate on held-out rows, and held-out score / threshold quantiles",
                 f"{'detector':<32} {'rows':>7} {'alarms %':>9} {'p50':>7} {'p90':>7} {'p99':>7}"]
        for r in table_rows(results):
            lines.append(f"{r['name']:<32} {r['rows']:>7} {r['alarm_rate']:>9.2f} {r.get('ratio_p50', 0):>7.3f} "
                         f"{r.get('ratio_p90', 0):>7.3f} {r.get('ratio_p99', 0):>7.3f}")
    if labelled and is_skab(results):
        lines.append("SKAB leaderboard (their README, test set):")
        for name, f1, far, mar in SKAB_LEADERBOARD[:3] + SKAB_LEADERBOARD[7:8]:
            lines.append(f"  {name:<30} {f1:>6.2f} {far:>7.2f} {mar:>7.2f}")
    if results.get("changepoints"):
        lines += format_board(results["changepoints"])
    lines.append("per worker (F1 / FAR % / MAR %):" if labelled else "per worker (alarms % of held-out rows):")
    entries = [(f"{MODE_NAMES[mode]} {kind}", entry["kinds"][kind]["workers"])
               for mode, entry in results["modes"].items() for kind in KINDS]
    if "reference" in results:
        entries.append((results["reference"]["name"], results["reference"]["workers"]))
    for name, workers in entries:
        cells = "  ".join(f"{w} {m['f1']:.3f}/{m['far']:.1f}/{m['mar']:.1f}" if labelled
                          else f"{w} {m['alarm_rate']:.2f}" for w, m in workers.items())
        lines.append(f"  {name:<18} {cells}")
    lines.append("served precision per worker (serving.model " + results["settings"].get("serving", "auto") + "):")
    for mode, entry in results["modes"].items():
        if "served" in entry:
            for w, v in entry["served"]["workers"].items():
                lines.append(f"  {MODE_NAMES[mode]:<12} {w:<10} {v['precision']['reason']}")
    lines.append("checks:")
    for name, check in results["checks"].items():
        lines.append(f"  [{'ok' if check['ok'] else 'NO'}] {name}: {check['value']}")
    if results.get("verdict"):
        lines.append(results["verdict"]["line"])
    return "\n".join(lines)


def evaluate_command(settings: Settings, out: str, modes: str, kinds: str | None = None,
                     datasets: str | None = None) -> None:
    """The config's data set (or each of ``datasets``): every mode of the config's kind with the report's figures,
    then every other model kind in the same modes; the comparison of kinds printed as one table."""
    from services.evaluation.grid import DATASETS, dataset_name, evaluate_datasets, evaluate_with_kinds
    from services.evaluation.kinds import parse_list

    chosen = parse_list(modes, MODES, "--modes")
    model_kinds = parse_list(kinds, MODEL_KINDS, "--kinds") if kinds else MODEL_KINDS
    s = settings
    echo = lambda m: print(m, flush=True)  # noqa: E731
    try:
        if datasets:
            names = parse_list(datasets, tuple(DATASETS), "--datasets")
            print(f"evaluating kinds {', '.join(model_kinds)} × {', '.join(chosen)} on {', '.join(names)} "
                  f"(and a reference IsolationForest on each)", flush=True)
            summary = evaluate_datasets(s, names, _resolve(out), chosen, model_kinds, echo=echo)
            for name in summary["comparison"]:
                print(f"\n{name}:\n" + format_table(_load(_resolve(out) / name)))
            print("\nmodel kinds on every data set (figures of the served model; pooled held-out rows):\n")
            print(format_kinds_table(summary["comparison"]))
            for name, reason in summary["skipped"].items():
                print(f"- {name} skipped: {reason}")
            print(f"\nevaluation took {summary['seconds']:.0f}s; {out}/kinds.md holds the table; `make report` "
                  f"(or fedad report) renders the report of {next(iter(summary['comparison']), 'a data set')}")
            return
        print(f"evaluating {', '.join(chosen)} and a reference IsolationForest on {describe_data(s)}; "
              f"{s.federation.rounds} rounds × {s.model.local_epochs} epochs; kinds {', '.join(model_kinds)}",
              flush=True)
        progress = Progress(echo)
        results = evaluate_with_kinds(settings, _resolve(out), chosen, model_kinds, progress)
    except (DataError, ConfigError) as exc:
        raise SystemExit(f"data error: {exc}") from None
    print("\n" + format_table(results))
    if results.get("model_kinds"):
        print("\nmodel kinds (figures of the served model; pooled held-out rows):\n")
        print(format_kinds_table({dataset_name(settings): results["model_kinds"]}))
    print(f"\nevaluation took {time.time() - progress.started:.0f}s; `make report` (or fedad report) renders the "
          "report")


def _load(folder: Path) -> dict:
    import json

    return json.loads((folder / "results.json").read_text())


def report_command(results_dir: str, out: str) -> None:
    from services.evaluation.report import write_report  # here, not above: matplotlib is the optional report extra

    folder = _resolve(results_dir)
    if not (folder / "results.json").is_file():  # `make evaluate` over several data sets: the first one's
        summary = find_comparison(folder)
        if summary and summary["comparison"]:
            folder = folder / next(iter(summary["comparison"]))
    if not (folder / "results.json").is_file():
        raise SystemExit(f"no evaluation results in {folder}: run `make evaluate` (fedad evaluate) first")
    path = write_report(folder, _resolve(out))
    try:
        shown = path.relative_to(REPO_ROOT)
    except ValueError:
        shown = path
    print(f"report written: {shown} ({path.stat().st_size // 1024} kB, self-contained HTML)")
