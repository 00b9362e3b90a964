"""The comparison table's rows: ours per mode and model kind, and SKAB's published leaderboard beside them.

Its own module because both the printed table (cli.py) and the HTML report (report.py) show it, and the report's
figures need matplotlib, which ``fedad evaluate`` must not import.
"""

from __future__ import annotations

from services.evaluation.runner import KINDS

# The SKAB README's outlier-detection leaderboard (test set), as quoted in shared/data/skab/SOURCE.md.
SKAB_LEADERBOARD = [
    ("Conv-AE", 0.78, 13.55, 28.02), ("MSET", 0.78, 39.73, 14.13), ("T-squared+Q (PCA)", 0.76, 26.62, 24.92),
    ("LSTM-AE", 0.74, 29.96, 25.92), ("T-squared", 0.66, 19.21, 42.60), ("LSTM-VAE", 0.56, 9.13, 55.03),
    ("Vanilla LSTM", 0.54, 12.54, 59.53), ("Vanilla AE", 0.39, 2.59, 75.15), ("Isolation forest", 0.29, 2.56, 82.89),
    ("Null detector", 0.0, 0.0, 100.0),
]
MODE_NAMES = {"federated": "federated", "centralised": "centralised", "local": "local-only"}


def is_skab(results: dict) -> bool:
    return results["settings"]["data"]["source"].get("download") == "skab"


def table_rows(results: dict) -> list[dict]:
    """One row per trained mode and served kind, then the reference detector; pooled held-out figures."""
    rows = []
    for mode, entry in results["modes"].items():
        for kind in KINDS:
            rows.append({"name": f"fedad {MODE_NAMES[mode]} {kind}", **entry["kinds"][kind]["pooled"], "ours": True})
    if "reference" in results:
        rows.append({"name": f"scikit-learn {results['reference']['name']}", **results["reference"]["pooled"],
                     "ours": False})
    return rows
