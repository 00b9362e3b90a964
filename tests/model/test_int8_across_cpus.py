"""The int8 model a node serves gives the same scores on every x86-64 CPU class, not only on the one it was made on.

onnxruntime picks its int8 kernels by the CPU's instruction sets; without VNNI its U8S8 kernels can saturate
(services/model/quantize.py). QEMU's user-mode emulation runs this very interpreter as another CPU model (EPYC-Rome:
AVX2, no AVX-512, no VNNI; Haswell: Intel AVX2), so the served models' scores are compared bit for bit with this
machine's. The control: a model quantised with full 8-bit weights must differ under emulation when this machine
has VNNI, which shows that the emulated CPU really takes the other kernels (the comparison can fail)."""

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from services.config import load_settings
from services.data.sources import load_node
from services.machine import cpu_flags
from services.model.detector import AnomalyDetector, DetectorSpec
from services.model.quantize import _Rows
from services.model.scoring import make_session
from services.protocol.messages import TrainingPlan
from support import missing_tool

HERE = Path(__file__).resolve().parent
CPUS = ["EPYC-Rome", "Haswell"]  # AVX2 without VNNI, AMD and Intel
KINDS = {"dense": {}, "conv1d": {"FEDAD__MODEL__KIND": "conv1d", "FEDAD__DATA__WINDOW_STATS": "[]"}}


@pytest.fixture(scope="module")
def qemu():
    if platform.machine() != "x86_64":
        pytest.skip("the CPU models emulated here are x86-64")
    path = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
    if path is None:
        missing_tool("qemu-x86_64-static is not installed (apt-get install qemu-user-static)")
    return path


def full_range_int8(fp32: bytes, rows: np.ndarray, work: Path) -> bytes:
    """The quantisation shipped before: 8-bit weights (the control that saturates without VNNI)."""
    (work / "fp32.onnx").write_bytes(fp32)
    quant_pre_process(str(work / "fp32.onnx"), str(work / "prep.onnx"), skip_symbolic_shape=True)
    quantize_static(str(work / "prep.onnx"), str(work / "int8.onnx"), _Rows(rows), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return (work / "int8.onnx").read_bytes()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Per kind, a detector trained briefly on valve1 and calibrated as a worker does; its held-out inputs."""
    built = {}
    for kind, env in KINDS.items():
        settings = load_settings(environ={"FEDAD__WORKERS__VALVE1__PARTITION": "[valve1/1.csv, valve1/2.csv]", **env})
        node = load_node(settings, settings.worker("valve1"))
        train = node.windows(None, "train")
        detector = AnomalyDetector(DetectorSpec.from_settings(settings))
        detector.partial_fit(train, TrainingPlan.from_settings(settings), seed=1, epochs=5)
        work = tmp_path_factory.mktemp(kind)
        detector.calibrate(train, node.default_reference(None), workdir=work)
        held_out = np.concatenate([detector.inputs(r.values[~m], r.values[m]) for r, m in zip(node.runs, node.masks)])
        built[kind] = {"x": held_out.astype(np.float32), "served": detector.onnx_int8_,
                       "full_range": full_range_int8(detector.onnx_fp32_, train.astype(np.float32), work)}
    return built


def scores_here(given: dict) -> dict[str, np.ndarray]:
    return {name: make_session(onnx).run(["score"], {"x": given["x"]})[0]
            for name, onnx in given.items() if name != "x"}


def scores_on(qemu: str, cpu: str, given: dict, work: Path) -> dict[str, np.ndarray]:
    src, dst = work / f"{cpu}.in.npz", work / f"{cpu}.out.npz"
    np.savez(src, **{k: (v if k == "x" else np.frombuffer(v, dtype=np.uint8)) for k, v in given.items()})
    done = subprocess.run([qemu, "-cpu", cpu, sys.executable, str(HERE / "int8_scores.py"), str(src), str(dst)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"under QEMU -cpu {cpu}: {done.stderr[-2000:]}"
    return dict(np.load(dst))


@pytest.mark.parametrize("kind", KINDS)
def test_served_int8_scores_are_identical_on_cpus_without_vnni(qemu, models, kind, tmp_path):
    given = models[kind]
    here = scores_here(given)
    vnni = bool({"avx512_vnni", "avx_vnni"} & set(cpu_flags()))
    for cpu in CPUS:
        there = scores_on(qemu, cpu, given, tmp_path)
        differ = np.abs(there["served"] - here["served"]) / np.maximum(here["served"], 1e-9)
        assert np.array_equal(there["served"], here["served"]), \
            f"{kind} int8 on {cpu}: {np.mean(differ > 0):.1%} of rows score differently, up to {differ.max():.2%}"
        if vnni:
            assert not np.array_equal(there["full_range"], here["full_range"]), \
                f"8-bit weights scored alike on {cpu} and on this VNNI CPU: the emulation did not take AVX2 kernels"
