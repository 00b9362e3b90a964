"""Detection figures as SKAB reports them: F1, false alarm rate and missed alarm rate (in %), plus ROC-AUC and
PR-AUC (average precision) of the scores.

In numpy alone, equal to scikit-learn's ``roc_auc_score`` / ``average_precision_score`` (tests/model/test_metrics.py):
a serving worker evaluates every installed model, and importing scikit-learn for two sums costs it ~95 MiB."""

from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the probability that an anomalous row outscores a normal one, ties counted half
    (Mann-Whitney U from average ranks)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based rank of each distinct score, ties averaged
    positives, negatives = int(labels.sum()), int((~labels).sum())
    u = average_rank[inverse][labels].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Σ (recall_k − recall_{k−1}) · precision_k over the distinct scores, highest first (no interpolation)."""
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    ranked, hits = np.asarray(scores, dtype=np.float64)[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # the last row of each distinct score
    true_positives = np.cumsum(hits)[last]
    precision = true_positives / (last + 1)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


SMALLEST_LIMIT = 1e-200  # stands in for an alarm limit of 0: far below any score, far above float64's underflow


def threshold_ratio(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Scores over a detector's alarm limit (> 1: flagged), comparable across workers. A limit of 0 (a model that
    reconstructs its near-constant training rows exactly) divides by ``SMALLEST_LIMIT`` instead: a row scoring 0
    stays at 0 and every positive score is past the limit, as the detector's ``score > threshold`` says, where
    dividing by 0 gave NaN (0 / 0) that no ranking or count can use."""
    return np.asarray(scores, dtype=np.float64) / max(float(threshold), SMALLEST_LIMIT)


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
        figures["roc_auc"] = round(roc_auc(labels, scores), 4)
        figures["pr_auc"] = round(average_precision(labels, scores), 4)
    return figures
