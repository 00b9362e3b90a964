"""The verdict of a running federation (``fedad run``): what the workers serve, scored through their ``/detect`` on
their held-out rows, against an IsolationForest fitted here on the same inputs (services/evaluation/verdict.py)."""

from __future__ import annotations

import numpy as np

from services.config import Settings
from services.data.node import NodeData
from services.evaluation.reference import score_reference
from services.evaluation.runner import pooled
from services.evaluation.verdict import verdict


def served_scores(settings: Settings, nodes: dict[str, NodeData], client, url_of) -> dict[str, dict]:
    """Each node's held-out rows scored by its worker's ``POST /detect`` (stateless binary requests, so no stream,
    alarm or live buffer is touched): ``{worker: {"held_scores", "threshold", "model"}}``. Long runs go in chunks,
    each preceded by the window's earlier rows, whose scores are dropped; with ``data.baseline: run`` every request
    brings the run's training rows as its baseline, as a device would."""
    window = settings.data.window
    limit = settings.serving.max_batch_rows
    out = {}
    for worker_id, node in nodes.items():
        held, threshold, model = [], None, None
        for run, mask in zip(node.runs, node.masks):
            if not (~mask).any():
                continue
            baseline = run.values[mask] if settings.data.baseline == "run" else run.values[:0]
            step = max(1, limit - len(baseline) - window)
            scores = []
            for start in range(0, len(run.values), step):
                lead = min(start, window - 1)
                rows = run.values[start - lead:start + step]
                body = np.ascontiguousarray(np.concatenate([baseline, rows]), dtype="<f4").tobytes()
                answer = client.post(f"{url_of(worker_id)}/detect", content=body, timeout=60, headers={
                    "Content-Type": "application/octet-stream", "X-Baseline-Rows": str(len(baseline))})
                answer.raise_for_status()
                document = answer.json()
                scores.append(np.asarray(document["scores"], dtype=np.float64)[lead:])
                threshold, model = document["threshold"], document["model"]
            held.append(np.concatenate(scores)[~mask])
        out[worker_id] = {"held_scores": np.concatenate(held) if held else np.empty(0), "threshold": threshold,
                          "model": model}
    return out


def run_verdict(settings: Settings, nodes: dict[str, NodeData], client, url_of) -> dict:
    """``fedad run``'s verdict: the workers' served scores against a forest fitted here on the same inputs."""
    served = served_scores(settings, nodes, client, url_of)
    reference = score_reference(settings, nodes)
    precisions = sorted({s["model"] for s in served.values()})
    what = f"the served detector ({'/'.join(precisions)})"
    return verdict(pooled(nodes, {w: {"served": s} for w, s in served.items()}, "served"),
                   pooled(nodes, {w: {"ref": r} for w, r in reference.items()}, "ref"), settings, what)
