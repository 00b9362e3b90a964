"""``fedad evaluate`` and ``fedad report``: run the evaluation, print the comparison table, render the report."""

from __future__ import annotations

from pathlib import Path

from services.config import REPO_ROOT, Settings
from services.data.source import DataError
from services.evaluation.runner import KINDS, MODES, describe_data, run_evaluation
from services.evaluation.table import MODE_NAMES, SKAB_LEADERBOARD, is_skab, table_rows


def _resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path.cwd() / p


def format_table(results: dict) -> str:
    labelled = results.get("labelled", True)
    if labelled:
        lines = [f"{'detector':<32} {'F1':>6} {'FAR %':>7} {'MAR %':>7} {'ROC-AUC':>8} {'PR-AUC':>7}"]
        for r in table_rows(results):
            lines.append(f"{r['name']:<32} {r['f1']:>6.3f} {r['far']:>7.2f} {r['mar']:>7.2f} "
                         f"{r.get('roc_auc', float('nan')):>8.4f} {r.get('pr_auc', float('nan')):>7.4f}")
    else:
        lines = ["no labels: alarm rate on held-out rows, and held-out score / threshold quantiles",
                 f"{'detector':<32} {'rows':>7} {'alarms %':>9} {'p50':>7} {'p90':>7} {'p99':>7}"]
        for r in table_rows(results):
            lines.append(f"{r['name']:<32} {r['rows']:>7} {r['alarm_rate']:>9.2f} {r.get('ratio_p50', 0):>7.3f} "
                         f"{r.get('ratio_p90', 0):>7.3f} {r.get('ratio_p99', 0):>7.3f}")
    if labelled and is_skab(results):
        lines.append("SKAB leaderboard (their README, test set):")
        for name, f1, far, mar in SKAB_LEADERBOARD[:3] + SKAB_LEADERBOARD[7:8]:
            lines.append(f"  {name:<30} {f1:>6.2f} {far:>7.2f} {mar:>7.2f}")
    lines.append("per worker (F1 / FAR % / MAR %):" if labelled else "per worker (alarms % of held-out rows):")
    entries = [(f"{MODE_NAMES[mode]} {kind}", entry["kinds"][kind]["workers"])
               for mode, entry in results["modes"].items() for kind in KINDS]
    if "reference" in results:
        entries.append((results["reference"]["name"], results["reference"]["workers"]))
    for name, workers in entries:
        cells = "  ".join(f"{w} {m['f1']:.3f}/{m['far']:.1f}/{m['mar']:.1f}" if labelled
                          else f"{w} {m['alarm_rate']:.2f}" for w, m in workers.items())
        lines.append(f"  {name:<18} {cells}")
    lines.append("checks:")
    for name, check in results["checks"].items():
        lines.append(f"  [{'ok' if check['ok'] else 'NO'}] {name}: {check['value']}")
    return "\n".join(lines)


def evaluate_command(settings: Settings, out: str, modes: str) -> None:
    chosen = tuple(m.strip() for m in modes.split(",") if m.strip())
    unknown = [m for m in chosen if m not in MODES]
    if unknown or not chosen:
        raise SystemExit(f"--modes: unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    s = settings
    print(f"evaluating {', '.join(chosen)} and a reference IsolationForest on {describe_data(s)}; "
          f"{s.federation.rounds} rounds × {s.model.local_epochs} epochs", flush=True)
    try:
        results = run_evaluation(settings, _resolve(out), chosen, echo=lambda m: print(m, flush=True))
    except DataError as exc:
        raise SystemExit(f"data error: {exc}") from None
    print("\n" + format_table(results))
    print(f"\nevaluation took {results['seconds']:.0f}s; `make report` (or fedad report) renders the report")


def report_command(results_dir: str, out: str) -> None:
    from services.evaluation.report import write_report  # here, not above: matplotlib is the optional report extra

    folder = _resolve(results_dir)
    if not (folder / "results.json").is_file():
        raise SystemExit(f"no evaluation results in {folder}: run `make evaluate` (fedad evaluate) first")
    path = write_report(folder, _resolve(out))
    try:
        shown = path.relative_to(REPO_ROOT)
    except ValueError:
        shown = path
    print(f"report written: {shown} ({path.stat().st_size // 1024} kB, self-contained HTML)")
