"""Scoring with an onnxruntime session, and the anomaly threshold each node calibrates on its own normal rows.

A row's score is its mean squared reconstruction error (``model.score: error``), or (``error_and_t2``, the default)
that error over its mean on the node's training rows plus Hotelling's T² of the model input over its mean there: the
autoencoder's residual and the distance from the node's normal centre, the pair process monitoring has long
watched together (SPE / Q and T², e.g. a PCA model's; MacGregor & Kourti, "Statistical process control of
multivariate processes", 1995). An autoencoder reconstructs a value out of the normal range as well as one inside
it when that input passes through its bottleneck (ReLU layers extrapolate linearly), so a fault that only moves a
channel out of its range goes unseen by the error alone; T² sees exactly that. docs/quality.md has the measurements.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from services.config import ThresholdSettings

INPUT_NAME = "x"  # the served graph's input (model inputs, one row each) ...
OUTPUT_NAME = "reconstruction"  # ... its reconstruction
SCORE_NAME = "score"  # ... and the per-row score added by with_score_output
ERROR_NAME = "error"  # ... and the squared error of each input it averages (explanations ask for it)
T2_CENTER = "score/t2_center"  # error_and_t2: the node's mean model input [width] ...
T2_PRECISION = "score/t2_precision"  # ... the inverse of its covariance [width, width] ...
T2_SCALES = "score/t2_scales"  # ... and 1 / mean error, 1 / mean T² on its training rows [2]
MIN_THRESHOLD = 1e-6  # a limit no lower than this: rows reconstructed exactly must not alarm on float noise


def with_score_output(onnx_bytes: bytes) -> bytes:
    """The model plus an output ``score``: the per-row mean squared reconstruction error, computed inside the
    session (Sub → Mul → ReduceMean). One ``run`` then returns what /detect needs, instead of the reconstruction
    followed by three numpy passes over it: at 4096 rows those passes cost more than the int8 model itself
    (BENCHMARKS.md). The squared errors the mean is taken of are an output too, ``error`` (rows × inputs): a
    session computes them for the score anyway, and a run that asks for ``score`` alone does not copy them out.
    Graph editing needs the ``onnx`` package, imported here only: a worker gets its models with these outputs from
    the process that calibrated them (services/worker/calibrate.py) and serves them without it."""
    import onnx
    from onnx import TensorProto, helper

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
    t2 = T2_CENTER in {i.name for i in graph.initializer}
    mean_error = f"{SCORE_NAME}_error" if t2 else SCORE_NAME
    if opset >= 18:  # ReduceMean takes its axes as an input from opset 18 on
        axes = f"{SCORE_NAME}_axes"
        graph.initializer.append(helper.make_tensor(axes, TensorProto.INT64, [1], [1]))
        graph.node.append(helper.make_node("ReduceMean", [square, axes], [mean_error], keepdims=0, name=mean_error))
    else:
        graph.node.append(helper.make_node("ReduceMean", [square], [mean_error], axes=[1], keepdims=0,
                                           name=mean_error))
    if t2:
        graph.node.extend(_t2_nodes(mean_error, opset))
    graph.output.append(helper.make_tensor_value_info(SCORE_NAME, TensorProto.FLOAT, ["batch"]))
    graph.output.append(helper.make_tensor_value_info(ERROR_NAME, TensorProto.FLOAT, ["batch", "inputs"]))
    return model.SerializeToString()


def _t2_nodes(mean_error: str, opset: int) -> list:
    """score = mean error × scale₀ + (x − centre)ᵀ P (x − centre) × scale₁, in float32 after the autoencoder."""
    from onnx import TensorProto, helper

    n = f"{SCORE_NAME}_t2"
    one = f"{n}_one"
    nodes = [
        helper.make_node("Sub", [INPUT_NAME, T2_CENTER], [f"{n}_d"], name=f"{n}_d"),
        helper.make_node("MatMul", [f"{n}_d", T2_PRECISION], [f"{n}_pd"], name=f"{n}_pd"),
        helper.make_node("Mul", [f"{n}_pd", f"{n}_d"], [f"{n}_terms"], name=f"{n}_terms"),
        helper.make_node("Constant", [], [one], name=one,
                         value=helper.make_tensor(one, TensorProto.INT64, [1], [1])),
        helper.make_node("ReduceSum", [f"{n}_terms", one], [n], keepdims=0, name=n),
    ]
    for i, (term, part) in enumerate(((mean_error, "e"), (n, "t"))):
        index = f"{n}_i{i}"
        nodes += [helper.make_node("Constant", [], [index], name=index,
                                   value=helper.make_tensor(index, TensorProto.INT64, [1], [i])),
                  helper.make_node("Gather", [T2_SCALES, index], [f"{n}_s{part}"], name=f"{n}_s{part}", axis=0),
                  helper.make_node("Mul", [term, f"{n}_s{part}"], [f"{n}_{part}"], name=f"{n}_{part}")]
    nodes.append(helper.make_node("Add", [f"{n}_e", f"{n}_t"], [SCORE_NAME], name=SCORE_NAME))
    return nodes


def t2_parameters(train_inputs: np.ndarray, train_errors: np.ndarray) -> dict[str, np.ndarray]:
    """The node's normal centre, the inverse covariance (a small ridge keeps a constant input finite) and the two
    scales that give each term a mean of 1 on the training rows, so neither dominates by its units."""
    x = np.asarray(train_inputs, dtype=np.float64)
    center = x.mean(axis=0)
    covariance = np.atleast_2d(np.cov(x, rowvar=False, bias=True))
    ridge = 1e-3 * max(float(np.mean(np.diag(covariance))), 1e-6)
    precision = np.linalg.pinv(covariance + ridge * np.eye(len(center)))
    d = x - center
    t2 = np.einsum("ij,jk,ik->i", d, precision, d)
    scales = [1.0 / max(float(np.mean(train_errors)), MIN_THRESHOLD), 1.0 / max(float(np.mean(t2)), MIN_THRESHOLD)]
    return {T2_CENTER: center.astype(np.float32), T2_PRECISION: precision.astype(np.float32),
            T2_SCALES: np.asarray(scales, dtype=np.float32)}


def with_t2(onnx_bytes: bytes, parameters: dict[str, np.ndarray]) -> bytes:
    """The stored model with the T² parameters as initializers: ``with_score_output`` then adds the T² term. They
    travel inside the node's ONNX files, so a restored version scores as it was calibrated."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    names = set(parameters)
    kept = [i for i in model.graph.initializer if i.name not in names]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + [numpy_helper.from_array(v, k) for k, v in parameters.items()])
    return model.SerializeToString()


def make_session(onnx_bytes: bytes) -> ort.InferenceSession:
    """One thread per session: an edge box scales with uvicorn processes, not intra-op threads. The session also
    computes the scores: a model without the ``score`` output gets it added (``with_score_output``, the ``onnx``
    package), one that has it (``session_ready``) is opened as it is."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors: a plain model's T² parameters are spare inputs until scores are added
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    if any(o.name == SCORE_NAME for o in session.get_outputs()):
        return session
    return ort.InferenceSession(with_score_output(onnx_bytes), options, providers=["CPUExecutionProvider"])


def session_ready(onnx_bytes: bytes) -> bytes:
    """The model as ``make_session`` runs it (the score outputs added): what a worker persists and serves."""
    return with_score_output(onnx_bytes)


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
    scores = scores[np.isfinite(scores)]
    if not len(scores):
        raise ValueError("no finite scores of normal rows to calibrate the threshold on")
    if rule.rule == "quantile":
        limit = np.quantile(scores, rule.quantile)
    else:
        limit = scores.mean() + rule.k * scores.std()
    # a node whose normal rows are reconstructed exactly (a few distinct states) would get a limit of 0: every row
    # then alarms on float noise, or none ever does; a floor keeps a new state flagged and the known ones quiet
    return float(max(limit * rule.factor, MIN_THRESHOLD))
