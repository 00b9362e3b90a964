"""Scoring with an onnxruntime session, and the anomaly threshold each node calibrates on its own normal rows."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from services.config import ThresholdSettings
from services.model.onnx_export import INPUT_NAME


def make_session(onnx_bytes: bytes) -> ort.InferenceSession:
    """One thread per session: an edge box scales with uvicorn processes, not intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def session_scores(session: ort.InferenceSession, inputs: np.ndarray) -> np.ndarray:
    """Per-row mean squared reconstruction error: the anomaly score."""
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    reconstruction = session.run(None, {INPUT_NAME: x})[0]
    return ((reconstruction - x) ** 2).mean(axis=1)


def calibrate_threshold(normal_scores: np.ndarray, rule: ThresholdSettings) -> float:
    """Alarm limit from scores of rows known to be normal: a quantile, or mean + k·std, times ``factor``."""
    scores = np.asarray(normal_scores, dtype=np.float64)
    if rule.rule == "quantile":
        limit = np.quantile(scores, rule.quantile)
    else:
        limit = scores.mean() + rule.k * scores.std()
    return float(limit * rule.factor)
