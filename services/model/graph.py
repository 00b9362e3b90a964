"""The autoencoder's fp32 ONNX graph built from the flat weight vector with ``onnx.helper`` alone.

The same graph torch's exporter writes (services/model/onnx_export.py) — Gemm with transB=1 per Linear layer, Relu
between them (none after a narrow bottleneck), the same tensor and node names, opset 17, a dynamic batch axis — but
without importing torch, so a process that only serves or calibrates (int8 scales, threshold) never loads it. tests/model/test_graph.py holds the
two exports' scores equal.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from services.model.layout import linear_layer, parameter_shapes
from services.model.scoring import INPUT_NAME, OUTPUT_NAME

OPSET = 17  # the exporter's opset (services/model/onnx_export.OPSET, which imports torch)
IR_VERSION = 8  # what torch writes for opset 17; onnxruntime reads it everywhere we deploy
BATCH = "batch"


def split_weights(weights: np.ndarray, input_width: int, hidden: list[int]) -> list[tuple[str, np.ndarray]]:
    """The flat float32 vector cut into (name, array) in state_dict order (services/model/layout.py)."""
    flat = np.asarray(weights, dtype=np.float32).ravel()
    shapes = parameter_shapes(input_width, hidden)
    expected = sum(math.prod(shape) for _, shape in shapes)
    if flat.size != expected:
        raise ValueError(f"weight vector has {flat.size} values, the model has {expected}")
    parts, offset = [], 0
    for name, shape in shapes:
        n = math.prod(shape)
        parts.append((name, flat[offset:offset + n].reshape(shape)))
        offset += n
    return parts


def autoencoder_graph(weights: np.ndarray, input_width: int, hidden: list[int]) -> bytes:
    """The fp32 autoencoder as ONNX bytes: input ``x`` [batch, width] → ``reconstruction`` [batch, width]."""
    parts = split_weights(weights, input_width, hidden)
    layers = len(parts) // 2
    linear = linear_layer(hidden)  # no Relu after a narrow bottleneck (layout.linear_layer)
    nodes, current = [], INPUT_NAME
    for i in range(layers):
        index = 2 * i  # nn.Sequential index of the Linear layer; its ReLU sits at index + 1
        out = OUTPUT_NAME if i == layers - 1 else f"/{index}/Gemm_output_0"
        nodes.append(helper.make_node("Gemm", [current, f"{index}.weight", f"{index}.bias"], [out],
                                      name=f"/{index}/Gemm", alpha=1.0, beta=1.0, transB=1))
        current = out
        if i < layers - 1 and i != linear:
            relu = f"/{index + 1}/Relu_output_0"
            nodes.append(helper.make_node("Relu", [current], [relu], name=f"/{index + 1}/Relu"))
            current = relu
    graph = helper.make_graph(
        nodes, "main_graph",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH, input_width])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [BATCH, input_width])],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(array), name) for name, array in parts],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fedad",
                              ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model.SerializeToString()
