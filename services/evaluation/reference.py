"""A reference detector from a well-kept library, measured in the same run on the same inputs, so a reader sees what
the autoencoder adds over a standard baseline.

scikit-learn's IsolationForest, one per node (as a node could run alone), fitted on exactly the model inputs the
autoencoder trains on (the node's training rows, windowed and scaled the same way); its anomaly score is
``-score_samples`` (higher = more anomalous) and its alarm limit comes from the same threshold rule
(``threshold.rule``: the same quantile, or mean + k·std) applied to its own scores of those training inputs. Only
``threshold.factor`` is left out: it scales a reconstruction error, whose zero means a perfect reconstruction, while
the forest's score lives in (0, 1] around 0.5, so the autoencoder's 1.2 would put its limit out of reach.
"""

from __future__ import annotations

import numpy as np

from services.config import Settings
from services.data.node import NodeData
from services.model.metrics import detection_metrics, threshold_ratio
from services.model.scoring import calibrate_threshold
from services.protocol.scaling import FeatureStats

NAME = "IsolationForest"
TREES = 200


def score_reference(settings: Settings, nodes: dict[str, NodeData]) -> dict[str, dict]:
    """Per worker: threshold, held-out metrics and scores, per-run scores, flags — as ``score_trained`` gives."""
    from sklearn.ensemble import IsolationForest

    out = {}
    for worker_id, node in nodes.items():
        scaler = FeatureStats.from_rows(node.train_raw()).scaler()
        forest = IsolationForest(n_estimators=TREES, random_state=settings.model.seed, n_jobs=1)
        forest.fit(node.windows(scaler, "train"))
        runs = [-forest.score_samples(x) for x in node.run_inputs(scaler)]
        train_scores = np.concatenate([r[m] for r, m in zip(runs, node.masks)])
        threshold = calibrate_threshold(train_scores, settings.threshold.model_copy(update={"factor": 1.0}))
        held = np.concatenate([r[~m] for r, m in zip(runs, node.masks)])
        flags = held > threshold
        labels = node.held_out_labels()
        metrics = ({"labels": True, **detection_metrics(labels, flags, held)} if labels is not None
                   else unlabelled_metrics(held, threshold))
        out[worker_id] = {"threshold": threshold, "metrics": metrics, "held_scores": held, "run_scores": runs,
                          "train_scores": train_scores, "flags": flags}
    return out


def unlabelled_metrics(held_scores: np.ndarray, threshold: float) -> dict:
    """Without labels: how often the detector alarms on held-out rows, and how its scores spread around its limit."""
    ratio = threshold_ratio(held_scores, threshold)
    if not len(ratio):
        return {"labels": False, "rows": 0, "alarm_rate": 0.0}
    p50, p90, p99 = np.quantile(ratio, [0.5, 0.9, 0.99])
    return {"labels": False, "rows": len(ratio), "alarm_rate": round(100 * float(np.mean(ratio > 1.0)), 2),
            "ratio_p50": round(float(p50), 4), "ratio_p90": round(float(p90), 4), "ratio_p99": round(float(p99), 4)}
