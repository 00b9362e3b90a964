"""The comparison table's rows: ours per mode and model kind, and SKAB's published leaderboard beside them.

Its own module because both the printed table (cli.py) and the HTML report (report.py) show it, and the report's
figures need matplotlib, which ``fedad evaluate`` must not import.
"""

from __future__ import annotations

import json
from pathlib import Path

from services.evaluation.runner import KINDS

# The SKAB README's outlier-detection leaderboard (test set), as quoted in shared/data/skab/SOURCE.md.
SKAB_LEADERBOARD = [
    ("Conv-AE", 0.78, 13.55, 28.02), ("MSET", 0.78, 39.73, 14.13), ("T-squared+Q (PCA)", 0.76, 26.62, 24.92),
    ("LSTM-AE", 0.74, 29.96, 25.92), ("T-squared", 0.66, 19.21, 42.60), ("LSTM-VAE", 0.56, 9.13, 55.03),
    ("Vanilla LSTM", 0.54, 12.54, 59.53), ("Vanilla AE", 0.39, 2.59, 75.15), ("Isolation forest", 0.29, 2.56, 82.89),
    ("Null detector", 0.0, 0.0, 100.0),
]
COMPARISON = "comparison.json"  # the model kinds across data sets, beside their results folders (grid.py)
MODE_NAMES = {"federated": "federated", "centralised": "centralised", "local": "local-only"}


def is_skab(results: dict) -> bool:
    return results["settings"]["data"]["source"].get("download") == "skab"


def table_rows(results: dict) -> list[dict]:
    """One row per trained mode and served kind, then the reference detector; pooled held-out figures."""
    rows = []
    for mode, entry in results["modes"].items():
        for kind in KINDS:
            rows.append({"name": f"fedad {MODE_NAMES[mode]} {kind}", **entry["kinds"][kind]["pooled"], "ours": True})
        if "served" in entry:  # each node at the precision it would serve (serving.model)
            rows.append({"name": f"fedad {MODE_NAMES[mode]} served", **entry["served"]["pooled"], "ours": True})
    if "reference" in results:
        rows.append({"name": f"scikit-learn {results['reference']['name']}", **results["reference"]["pooled"],
                     "ours": False})
    return rows


KIND_HEAD = ["data set", "kind", "training", "served", "F1", "FAR %", "MAR %", "ROC-AUC", "int8 − fp32 AUC",
             "parameters", "ONNX kB fp32 / int8", "s / round", "µs/row batch 1 / 256",
             "training round CPU s / peak MiB"]


def kinds_rows(comparison: dict) -> list[list[str]]:
    """The model-kind comparison, one row per data set, kind and training mode, figures of the served precision;
    the per-kind costs (parameters, ONNX, serving time, the training process) on each kind's first row.
    ``comparison``: {data set: {kind: entry}} as services/evaluation/kinds.py makes them."""
    rows = []
    for dataset, kinds in comparison.items():
        for kind, e in kinds.items():
            for i, (mode, m) in enumerate(e["modes"].items()):
                served = m[e["served"]]
                labelled = "f1" in served
                auc = (f"{m['int8']['roc_auc'] - m['fp32']['roc_auc']:+.4f}"
                       if labelled and "roc_auc" in m["int8"] and "roc_auc" in m["fp32"] else "")
                costs = ["", "", "", ""]
                if i == 0:
                    timed = e["served"] if e["served"] in KINDS else "int8"  # auto: int8's costs (fp32: in the table)
                    b, us, t = e.get("onnx_bytes", {}), e.get("serving_us", {}).get(timed, {}), \
                        e.get("training_process", {})
                    costs = [f"{e['parameters']:,}",
                             f"{b.get('fp32', 0) / 1024:.1f} / {b.get('int8', 0) / 1024:.1f}" if b else "",
                             f"{us['us_per_row_batch1']:.1f} / {us['us_per_row_batch256']:.2f}" if us else "",
                             f"{t['cpu_seconds']:.1f} / {t['peak_rss_mib']:.0f}" if t else ""]
                served_name = ("auto (each node's own choice)" if e["served"] == "served" else e["served"]) \
                    + (" (int8 refused)" if e.get("int8_refused") else "")
                quality = ([f"{served['f1']:.3f}", f"{served['far']:.2f}", f"{served['mar']:.2f}",
                            f"{served.get('roc_auc', float('nan')):.4f}", auc] if labelled else
                           ["", f"alarms {served.get('alarm_rate', 0):.2f}", "", "", ""])
                rows.append([dataset if i == 0 else "", kind if i == 0 else "", MODE_NAMES[mode],
                             served_name if i == 0 else "", *quality, costs[0], costs[1],
                             f"{m['seconds_per_round']:.2f}", costs[2], costs[3]])
    return rows


def kinds_notes(comparison: dict) -> list[str]:
    """Each kind's sizes and anything that makes its figures mean less than they seem."""
    lines = []
    for dataset, kinds in comparison.items():
        for kind, e in kinds.items():
            lines.append(f"{dataset} {kind}: {e['model']}" + (f"; {e['note']}" if e.get("note") else ""))
    return lines


def format_kinds_table(comparison: dict) -> str:
    """The comparison as one markdown table (what `make evaluate` prints and docs/quality.md shows), then notes."""
    lines = ["| " + " | ".join(KIND_HEAD) + " |", "|" + "---|" * len(KIND_HEAD)]
    lines += ["| " + " | ".join(row) + " |" for row in kinds_rows(comparison)]
    return "\n".join(lines + [""] + [f"- {note}" for note in kinds_notes(comparison)])


def find_comparison(results_dir: Path) -> dict | None:
    """The cross-data-set comparison in a results folder or beside it (its parent), if any."""
    for folder in (Path(results_dir), Path(results_dir).parent):
        path = folder / COMPARISON
        if path.is_file():
            return json.loads(path.read_text())
    return None
