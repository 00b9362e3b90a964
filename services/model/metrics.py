"""Detection figures as SKAB reports them: F1, false alarm rate and missed alarm rate (in %), plus ROC-AUC and
PR-AUC (average precision) of the scores."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def pooled_metrics(counts: list[dict]) -> dict:
    """SKAB pools predictions of all files; confusion counts add up, so workers need share only their counts."""
    total = {k: sum(c[k] for c in counts) for k in ("tp", "fp", "fn", "tn")}
    labels = np.repeat([1, 0, 1, 0], [total["tp"], total["fp"], total["fn"], total["tn"]])
    predicted = np.repeat([1, 1, 0, 0], [total["tp"], total["fp"], total["fn"], total["tn"]])
    return detection_metrics(labels, predicted)


def detection_metrics(labels: np.ndarray, predicted: np.ndarray, scores: np.ndarray | None = None) -> dict:
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(predicted).astype(bool)
    tp = int(np.sum(predicted & labels))
    fp = int(np.sum(predicted & ~labels))
    fn = int(np.sum(~predicted & labels))
    tn = int(np.sum(~predicted & ~labels))
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    figures = {
        "f1": round(f1, 4),
        "far": round(100 * fp / (fp + tn), 2) if fp + tn else 0.0,
        "mar": round(100 * fn / (fn + tp), 2) if fn + tp else 0.0,
        "rows": int(labels.size),
        "anomalies": int(labels.sum()),
        "counts": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }
    if scores is not None and 0 < labels.sum() < labels.size:
        figures["roc_auc"] = round(float(roc_auc_score(labels, scores)), 4)
        figures["pr_auc"] = round(float(average_precision_score(labels, scores)), 4)
    return figures
