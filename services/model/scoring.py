"""Scoring with an onnxruntime session, and the anomaly threshold each node calibrates on its own normal rows."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from services.config import ThresholdSettings
INPUT_NAME = "x"  # the served graph's input (model inputs, one row each) ...
OUTPUT_NAME = "reconstruction"  # ... its reconstruction
SCORE_NAME = "score"  # ... and the per-row score added by with_score_output
ERROR_NAME = "error"  # ... and the squared error of each input it averages (explanations ask for it)


def with_score_output(onnx_bytes: bytes) -> bytes:
    """The model plus an output ``score``: the per-row mean squared reconstruction error, computed inside the
    session (Sub → Mul → ReduceMean). One ``run`` then returns what /detect needs, instead of the reconstruction
    followed by three numpy passes over it: at 4096 rows those passes cost more than the int8 model itself
    (BENCHMARKS.md). The squared errors the mean is taken of are an output too, ``error`` (rows × inputs): a
    session computes them for the score anyway, and a run that asks for ``score`` alone does not copy them out.
    The stored ONNX files stay the plain autoencoder; this is added when a session is made."""
    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    if any(o.name == SCORE_NAME for o in graph.output):
        return onnx_bytes
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    diff, square = f"{SCORE_NAME}_diff", ERROR_NAME
    graph.node.extend([
        helper.make_node("Sub", [OUTPUT_NAME, INPUT_NAME], [diff], name=diff),
        helper.make_node("Mul", [diff, diff], [square], name=square),
    ])
    if opset >= 18:  # ReduceMean takes its axes as an input from opset 18 on
        axes = f"{SCORE_NAME}_axes"
        graph.initializer.append(helper.make_tensor(axes, TensorProto.INT64, [1], [1]))
        graph.node.append(helper.make_node("ReduceMean", [square, axes], [SCORE_NAME], keepdims=0, name=SCORE_NAME))
    else:
        graph.node.append(helper.make_node("ReduceMean", [square], [SCORE_NAME], axes=[1], keepdims=0,
                                           name=SCORE_NAME))
    graph.output.append(helper.make_tensor_value_info(SCORE_NAME, TensorProto.FLOAT, ["batch"]))
    graph.output.append(helper.make_tensor_value_info(ERROR_NAME, TensorProto.FLOAT, ["batch", "inputs"]))
    return model.SerializeToString()


def make_session(onnx_bytes: bytes) -> ort.InferenceSession:
    """One thread per session: an edge box scales with uvicorn processes, not intra-op threads. The session also
    computes the scores (``with_score_output``)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(with_score_output(onnx_bytes), options, providers=["CPUExecutionProvider"])


def session_scores(session: ort.InferenceSession, inputs: np.ndarray) -> np.ndarray:
    """Per-row mean squared reconstruction error: the anomaly score (float32, one per input row)."""
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    if any(o.name == SCORE_NAME for o in session.get_outputs()):
        return session.run([SCORE_NAME], {INPUT_NAME: x})[0]
    reconstruction = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]  # a session made elsewhere, without scores
    return ((reconstruction - x) ** 2).mean(axis=1)


def calibrate_threshold(normal_scores: np.ndarray, rule: ThresholdSettings) -> float:
    """Alarm limit from scores of rows known to be normal: a quantile, or mean + k·std, times ``factor``."""
    scores = np.asarray(normal_scores, dtype=np.float64)
    if rule.rule == "quantile":
        limit = np.quantile(scores, rule.quantile)
    else:
        limit = scores.mean() + rule.k * scores.std()
    return float(limit * rule.factor)
