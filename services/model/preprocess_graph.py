"""Preprocessing inside the served ONNX graph: one session call turns raw sensor rows into scores.

``Preprocessing.inputs`` (services/data/windows.py) as ONNX nodes in front of the autoencoder: select the model
columns, scale by the run's reference, then either the flattened window or the window statistics (mean, population
std, least-squares slope over ``window`` rows; rows before the first repeat the first row), then the statistics'
own scaling. The reference is either baked in as initializers, like the weights (a session per reference), or,
built with ``reference=None``, four float64 graph inputs fed on every call (``reference_feeds``): one session then
serves every stream and every request with its own baseline.

The statistics come from block-wise running sums in float64, the algorithm of the numpy fast path
(``windows.running_window_stats``), on channel-major tensors: onnxruntime broadcasts a per-channel vector over a long
contiguous axis quickly, over thousands of 6-wide rows slowly (measured ~5× per op at 4096 rows).

Only the autoencoder is quantised: ``served_graph`` puts these float nodes in front of an fp32 *or* an already
quantised int8 autoencoder (services/model/quantize.py, calibrated on ready inputs as before), so int8 scales and
thresholds are those of the autoencoder alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from services.data.windows import WINDOW_STATS, Preprocessing, Reference
from services.model.graph_feeds import RAW_INPUT_NAME, REFERENCE_PREFIX, feature_scaling, reference_feeds
from services.model.graph_feeds import column as _column
from services.model.graph import BATCH, IR_VERSION, OPSET
from services.model.scoring import INPUT_NAME

PREFIX = "preprocess/"  # names of the preprocessing nodes and tensors (kept apart from the autoencoder's)
MIN_OPSET = 15  # Shape with start/end
I64_MAX = np.iinfo(np.int64).max  # a Slice to the end


class _Builder:
    """Collects nodes and initializers under ``PREFIX``."""

    def __init__(self, opset: int):
        if opset < MIN_OPSET:
            raise ValueError(f"the preprocessing needs opset {MIN_OPSET} or later, the autoencoder has {opset}")
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.inputs: list[onnx.ValueInfoProto] = []  # the reference, when fed per call

    def constant(self, name: str, value) -> str:
        name = f"{PREFIX}const/{name}"
        self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(value), name)
        return name

    def reference(self, field: str, values: list[float] | None, size: int) -> str:
        """A reference tensor: baked in (``values``) or a graph input of ``size`` values."""
        name = REFERENCE_PREFIX + field
        if values is None:
            self.inputs.append(helper.make_tensor_value_info(name, TensorProto.DOUBLE, [size, 1]))
        else:
            self.initializers[name] = numpy_helper.from_array(_column(values), name)
        return name

    def ints(self, name: str, values) -> str:
        return self.constant(name, np.asarray(values, np.int64))

    def node(self, op: str, inputs: list[str], name: str, output: str | None = None, **attrs) -> str:
        out = output or PREFIX + name
        self.nodes.append(helper.make_node(op, inputs, [out], name=PREFIX + name, **attrs))
        return out

    def slice(self, x: str, name: str, axis: int, start: int | str, end: int | str) -> str:
        """x[start:end] along ``axis``; ``end`` may be a tensor name (a dynamic length)."""
        start = start if isinstance(start, str) else self.ints(f"i{start}", [start])
        end = end if isinstance(end, str) else self.ints(f"i{end}", [end])
        return self.node("Slice", [x, start, end, self.ints(f"i{axis}", [axis])], name)

    def reduce_sum(self, x: str, name: str, axis: int) -> str:
        return self.node("ReduceSum", [x, self.ints(f"i{axis}", [axis])], name, keepdims=1)


def preprocess_nodes(prep: Preprocessing, reference: Reference | None, n_features: int, opset: int = OPSET,
                     output: str = INPUT_NAME) -> _Builder:
    """Nodes from ``RAW_INPUT_NAME`` [batch, n_features] to ``output`` [batch, prep.width] (float32), with their
    initializers, and the reference's inputs when ``reference`` is None."""
    unknown = [s for s in prep.stats if s not in WINDOW_STATS]
    if unknown:
        raise ValueError(f"unknown window statistic {unknown[0]!r}; known: {WINDOW_STATS}")
    if any(not 0 <= c < n_features for c in prep.columns):
        raise ValueError(f"model columns {list(prep.columns)} do not all lie within {n_features} features")
    if reference is not None:
        reference_feeds(prep, reference)  # checks its sizes
    b = _Builder(opset)
    n = b.node("Shape", [RAW_INPUT_NAME], "n", start=0, end=1)
    z = _scaled(b, prep, reference, n_features)
    if prep.stats:
        features = _statistics(b, prep, z, n)
    else:
        features = _flattened(b, prep, z)
    if feature_scaling(prep):  # [inputs, batch] float64, like numpy's second standardisation
        fm, fs = (None, None) if reference is None else (reference.feature_mean, reference.feature_std)
        features = b.node("Sub", [features, b.reference("feature_mean", fm, prep.width)], "features_centred")
        features = b.node("Div", [features, b.reference("feature_std", fs, prep.width)], "features_scaled")
    features = b.node("Cast", [features], "features32", to=TensorProto.FLOAT)
    b.node("Transpose", [features], "features", output=output, perm=[1, 0])
    return b


def _scaled(b: _Builder, prep: Preprocessing, reference: Reference | None, n_features: int) -> str:
    """Raw rows → model channels scaled by the reference: [channels, batch], float64."""
    x = b.node("Cast", [RAW_INPUT_NAME], "rows64", to=TensorProto.DOUBLE)
    x = b.node("Transpose", [x], "channel_major", perm=[1, 0])  # [features, batch]
    if list(prep.columns) != list(range(n_features)):
        x = b.node("Gather", [x, b.ints("columns", prep.columns)], "columns", axis=0)
    mean, std = (None, None) if reference is None else (reference.mean, reference.std)
    x = b.node("Sub", [x, b.reference("mean", mean, prep.channels)], "centred")
    return b.node("Div", [x, b.reference("std", std, prep.channels)], "scaled")


def _flattened(b: _Builder, prep: Preprocessing, z: str) -> str:
    """make_windows: row i becomes padded rows i … i + window − 1 flattened, oldest first: [window × channels,
    batch]. One Slice per position in the window, stacked."""
    w = prep.window
    if w == 1:
        return z
    padded = b.node("Pad", [z, b.ints("edge_pads", [0, w - 1, 0, 0])], "padded", mode="edge")
    shifted = [b.slice(padded, f"shift{k}", 1, k, -(w - 1 - k) if k < w - 1 else I64_MAX) for k in range(w)]
    return b.node("Concat", shifted, "windows", axis=0)  # row k·channels + c: channel c, k rows into the window


def _statistics(b: _Builder, prep: Preprocessing, z: str, n: str) -> str:
    """windows.window_stats of every row: [statistics × channels, batch], float64.

    Block-wise running sums as in ``windows.running_window_stats``: the padded rows are cut into blocks of
    ``window`` rows, and in each block exclusive prefix sums of x, x² and offset·x (CumSum along the offset). A window
    starting at offset r of block b is the rest of block b plus the first r rows of block b + 1. Sums restart every
    block, so rounding grows with one block's values, not with the batch. Tensors are [offset, quantity, block]:
    every broadcast runs along a long contiguous axis.
    """
    w, c, stats = prep.window, prep.channels, prep.stats
    if w == 1:  # each window holds one row: the mean is the row, std and slope are exactly 0
        zeros = b.node("ConstantOfShape", [b.node("Shape", [z], "scaled_shape")], "zeros",
                       value=helper.make_tensor("zero", TensorProto.DOUBLE, [1], [0.0]))
        return b.node("Concat", [z if s == "mean" else zeros for s in stats], "statistics", axis=0) \
            if len(stats) > 1 else (z if stats[0] == "mean" else zeros)
    # rows before the first repeat the first row, then zeros up to whole blocks plus one block for the look-ups
    padded = b.node("Pad", [z, b.ints("edge_pads", [0, w - 1, 0, 0])], "padded", mode="edge")
    blocks = b.node("Add", [b.node("Div", [b.node("Add", [n, b.ints("round_up", [2 * w - 2])], "n_up"),
                                         b.ints("w", [w])], "full_blocks"), b.ints("i1", [1])], "blocks")
    extra = b.node("Sub", [b.node("Mul", [blocks, b.ints("w", [w])], "block_rows"),
                           b.node("Add", [n, b.ints("i" + str(w - 1), [w - 1])], "padded_rows")], "zero_rows")
    pads = b.node("Concat", [b.ints("zeros3", [0, 0, 0]), extra], "zero_pads", axis=0)
    padded = b.node("Pad", [padded, pads], "blocked", mode="constant")
    v = b.node("Reshape", [padded, b.ints("block_shape", [c, -1, w])], "block_view")  # [channel, block, offset]
    v = b.node("Transpose", [v], "by_offset", perm=[2, 0, 1])  # [offset, channel, block]
    offset = np.arange(w, dtype=np.float64).reshape(w, 1, 1)
    quantities = [v]  # x, then x² (std), then offset·x (slope)
    if "std" in stats:
        quantities.append(b.node("Mul", [v, v], "square"))
    if "slope" in stats:
        quantities.append(b.node("Mul", [v, b.constant("offset", offset)], "offset_weighted"))
    q = b.node("Concat", quantities, "quantities", axis=1) if len(quantities) > 1 else v
    head = b.node("CumSum", [q, b.constant("axis0", np.array(0, np.int64))], "prefix", exclusive=1)
    whole = b.reduce_sum(q, "whole", 0)  # [1, quantity, block]
    rest = b.node("Sub", [b.slice(whole, "whole_b", 2, 0, -1), b.slice(head, "head_b", 2, 0, -1)], "rest")
    tail = b.slice(head, "head_next", 2, 1, I64_MAX)  # the first r rows of the next block
    sums = b.node("Add", [rest, tail], "sums")  # [offset r, quantity, block b]: the window starting at b·w + r

    def part(x: str, index: int, name: str) -> str:  # one quantity's channels
        return b.slice(x, name, 1, index * c, (index + 1) * c)

    s1 = part(sums, 0, "sum")
    mean = b.node("Div", [s1, b.constant("w64", np.array(w, np.float64))], "mean")
    out = []
    for name in stats:
        if name == "mean":
            out.append(mean)
        elif name == "std":
            s2 = b.node("Div", [part(sums, 1, "sum_squares"), b.constant("w64", np.array(w, np.float64))],
                        "mean_square")
            variance = b.node("Sub", [s2, b.node("Mul", [mean, mean], "mean_squared")], "variance_raw")
            variance = b.node("Max", [variance, b.constant("zero64", np.array(0.0))], "variance")
            out.append(b.node("Sqrt", [variance], "std"))
        else:  # Σ_k (k − (w−1)/2)·x_k / Σ t², k counted from the window's start at offset r of its block:
            # k = offset − r in block b, offset + w − r in block b + 1, so Σ k·x = Σ offset·x − r·Σ x + w·Σ_tail x
            j = len(quantities) - 1
            t = np.arange(w, dtype=np.float64) - (w - 1) / 2
            denominator = float((t**2).sum()) or 1.0
            shift = b.node("Mul", [b.constant("slope_shift", (offset + (w - 1) / 2) / denominator), s1],
                           "slope_shift")
            k_sum = b.node("Div", [part(sums, j, "sum_offsets"), b.constant("t_squares", np.array(denominator))],
                           "slope_offsets")
            carried = b.node("Mul", [b.constant("slope_carry", np.array(w / denominator)), part(tail, 0, "tail_x")],
                             "slope_carry")
            out.append(b.node("Add", [b.node("Sub", [k_sum, shift], "slope_within"), carried], "slope"))
    stacked = b.node("Concat", out, "statistics_by_offset", axis=1) if len(out) > 1 else out[0]
    stacked = b.node("Transpose", [stacked], "statistics_by_block", perm=[1, 2, 0])  # [input, block, offset]
    stacked = b.node("Reshape", [stacked, b.ints("statistics_shape", [prep.width, -1])], "statistics_padded")
    return b.slice(stacked, "statistics", 1, 0, n)  # window i = block i // w, offset i % w; first n


def preprocess_graph(prep: Preprocessing, reference: Reference | None, n_features: int) -> bytes:
    """The preprocessing alone: raw rows → model inputs (``x``), e.g. to compare with ``Preprocessing.inputs``."""
    b = preprocess_nodes(prep, reference, n_features)
    graph = helper.make_graph(
        b.nodes, "preprocess",
        [helper.make_tensor_value_info(RAW_INPUT_NAME, TensorProto.FLOAT, [BATCH, n_features]), *b.inputs],
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH, prep.width])],
        initializer=list(b.initializers.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fedad",
                              ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def served_graph(autoencoder_onnx: bytes, prep: Preprocessing, reference: Reference | None,
                 n_features: int) -> bytes:
    """``autoencoder_onnx`` (fp32 or int8, input ``x``) with the preprocessing in front of it: the result takes raw
    rows as ``rows`` (with ``reference=None`` also the reference: ``reference_feeds``) and keeps ``x`` as the tensor
    of model inputs inside, so services/model/scoring.make_session adds the score output unchanged."""
    model = onnx.load_from_string(autoencoder_onnx)
    graph = model.graph
    inputs = [i for i in graph.input if i.name == INPUT_NAME]
    if len(graph.input) != 1 or not inputs:
        raise ValueError(f"the autoencoder must take exactly one input {INPUT_NAME!r}, "
                         f"it takes {[i.name for i in graph.input]}")
    width = inputs[0].type.tensor_type.shape.dim[1].dim_value
    if width and width != prep.width:
        raise ValueError(f"the autoencoder takes {width} inputs, the preprocessing makes {prep.width}")
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    b = preprocess_nodes(prep, reference, n_features, opset)
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info(RAW_INPUT_NAME, TensorProto.FLOAT, [BATCH, n_features]),
                        *b.inputs])
    graph.value_info.append(helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH, prep.width]))
    autoencoder_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(b.nodes + autoencoder_nodes)
    graph.initializer.extend(b.initializers.values())
    onnx.checker.check_model(model)
    return model.SerializeToString()
