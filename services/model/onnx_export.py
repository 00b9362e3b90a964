"""ONNX export of the torch model with a dynamic batch axis. Static int8 quantisation lives in
services/model/quantize.py (no torch) and is re-exported here; services/model/graph.py builds the same fp32 graph
from the weight vector without torch."""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from services.model.quantize import quantize_int8
from services.model.scoring import INPUT_NAME, OUTPUT_NAME

__all__ = ["OPSET", "export_onnx", "quantize_int8"]

OPSET = 17


def export_onnx(model: nn.Module, input_width: int) -> bytes:
    """The fp32 model as ONNX bytes; the batch axis is dynamic so /detect can score any number of rows."""
    model.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, input_width),),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return buffer.getvalue()
