"""Static int8 quantisation of an fp32 ONNX model, with onnxruntime alone (no torch): a detect-only node calibrates
its own int8 scales from the global weights.

Static (QDQ) rather than dynamic quantisation: dynamic int8 computes activation scales per call, so a row's score
would depend on the other rows in its batch. Static scales are calibrated once on the node's own normal rows.

Weights use 7 of their 8 bits (``reduce_range``) so that the int8 scores are the same on every x86-64 CPU. Without
VNNI, onnxruntime's U8S8 kernels add pairs of uint8 × int8 products in int16 (``vpmaddubsw``), which saturates once
a pair exceeds 32,767; with weights within ±64 a pair is at most 2 × 255 × 64 = 32,640 and the arithmetic is exact,
as VNNI's is. onnxruntime's quantisation guide gives this advice for x86-64 without VNNI. Measured on a valve1 model
(tests/model/test_int8_across_cpus.py runs it under QEMU's CPU models): full 8-bit weights gave scores up to 15×
apart between an AVX-512 VNNI EPYC and an AVX2-only EPYC-Rome; with ``reduce_range`` they are bit-identical on
EPYC-Rome, Haswell and Skylake, and the median distance to fp32 moved from 0.51 % to 0.52 %. Signed activations
(S8S8) did not help: onnxruntime shifts them to uint8 on x86 and takes the same kernel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from services.model.scoring import INPUT_NAME


class _Rows(CalibrationDataReader):
    def __init__(self, rows: np.ndarray, batch: int = 256):
        self._batches = iter([{INPUT_NAME: rows[i:i + batch]} for i in range(0, len(rows), batch)])

    def get_next(self):
        return next(self._batches, None)


def quantize_int8(fp32_onnx: bytes, calibration_rows: np.ndarray, workdir: Path) -> bytes:
    """Static QDQ int8 (per-channel 7-bit weights, uint8 activations) calibrated on ``calibration_rows``."""
    workdir.mkdir(parents=True, exist_ok=True)
    raw, src, dst = workdir / "raw.fp32.onnx", workdir / "prep.fp32.onnx", workdir / "calib.int8.onnx"
    raw.write_bytes(fp32_onnx)
    # shape inference + graph optimisation, as onnxruntime recommends; onnx's own shape inference, not the symbolic
    # one: that imports onnxruntime.tools, which imports torch wherever torch is installed (a training worker's
    # serving process must not load it), and for these graphs both give the same quantised model
    quant_pre_process(str(raw), str(src), skip_symbolic_shape=True)
    quantize_static(
        str(src),
        str(dst),
        _Rows(np.ascontiguousarray(calibration_rows, dtype=np.float32)),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,  # exact on CPUs without VNNI too (module docstring)
    )
    data = dst.read_bytes()
    onnx.checker.check_model(onnx.load_from_string(data))
    for f in (raw, src, dst):
        f.unlink(missing_ok=True)
    return data
