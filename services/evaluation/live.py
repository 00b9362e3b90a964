"""The verdict of a running federation (``fedad run``): what every worker serves, read from its state folder (the
served version's ONNX files, reference and threshold, as it persisted them) and scored on its held-out rows as the
worker's own evaluation scores them, against an IsolationForest fitted here on the same inputs
(services/evaluation/verdict.py). Nothing is sent to the workers: their /detect counts and alarms stay the devices'."""

from __future__ import annotations

import dataclasses

import numpy as np

from services.config import Settings
from services.data.node import NodeData
from services.data.windows import Reference
from services.evaluation.reference import score_reference
from services.evaluation.runner import pooled
from services.evaluation.verdict import verdict
from services.model.detector import AnomalyDetector, DetectorSpec
from services.protocol.scaling import Scaler
from services.worker.state import WorkerStore


def served_scores(settings: Settings, nodes: dict[str, NodeData]) -> dict[str, dict]:
    """``{worker: {"held_scores", "threshold", "model"}}`` of the version each worker serves now."""
    spec = DetectorSpec.from_settings(settings)
    out = {}
    for worker_id, node in nodes.items():
        state = WorkerStore(settings.worker(worker_id).state_dir).load(spec.n_params)
        served = state.served_version if state is not None else None
        if state is None or served is None or served.reference is None:
            raise LookupError(f"worker {worker_id} serves no persisted model yet")
        detector = AnomalyDetector.restore(dataclasses.replace(spec, served=served.served), served.weights,
                                           served.onnx_fp32, served.onnx_int8, Reference(**served.reference),
                                           served.threshold)
        held = node.windows(Scaler(**state.scaler), "held_out")
        out[worker_id] = {"held_scores": detector.score_inputs(held) if len(held) else np.empty(0),
                          "threshold": served.threshold, "model": served.served}
    return out


def run_verdict(settings: Settings, nodes: dict[str, NodeData]) -> dict:
    """``fedad run``'s verdict: the workers' served models against a forest fitted here on the same inputs."""
    served = served_scores(settings, nodes)
    reference = score_reference(settings, nodes)
    precisions = sorted({s["model"] for s in served.values()})
    what = f"the served detector ({'/'.join(precisions)})"
    return verdict(pooled(nodes, {w: {"served": s} for w, s in served.items()}, "served"),
                   pooled(nodes, {w: {"ref": r} for w, r in reference.items()}, "ref"), settings, what)
