"""The serving process at its floor: after a training round, an install (graphs, int8, calibration, the precision
check) and /detect traffic of every kind, the worker's own process has mapped neither torch nor the ``onnx`` package
(read from /proc/<pid>/maps of the real process). Both ship compiled libraries that any import loads
(``torch/lib/libtorch*.so``, ``onnx/onnx_cpp2py_export*.so``), and onnxruntime's quantisation imports ``onnx``, so
their absence from the map shows none of the three was imported. A training worker and a detect-only one."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.config import load_settings
from support import Stack, partition_runs

SETTINGS = load_settings()
TRAIN_ROWS = SETTINGS.data.train_rows
PACKAGES = re.compile(r"/site-packages/(torch|onnx)/")  # onnxruntime's folder is another name


def mapped_packages(pid: int) -> set[str]:
    return {m[1] for m in PACKAGES.finditer(Path(f"/proc/{pid}/maps").read_text())}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("floor"), workers=["valve1", "other"], rounds=1, epochs=1, min_workers=1,
                  quorum=1, overrides={"FEDAD__WORKERS__OTHER__MODE": "detect_only"})
    with stack.trained():
        yield stack


@pytest.mark.parametrize("worker", ["valve1", "other"])
def test_the_serving_process_maps_neither_torch_nor_onnx(stack, worker):
    [run] = partition_runs(SETTINGS, ["valve1/1.csv"])
    baseline, rows = run.values[:TRAIN_ROWS], run.values[TRAIN_ROWS:TRAIN_ROWS + 300]
    with httpx.Client(base_url=stack.worker_url(worker), timeout=60) as client:
        status = client.get("/v1/status").json()
        assert status["models"]["served"] is not None, "a model should be installed and served"
        answers = [client.post("/detect", json={"samples": rows[:1].tolist()}),  # the numpy one-row path
                   client.post("/detect", json={"samples": rows.tolist()}),  # the in-graph session
                   client.post("/detect", json={"samples": rows.tolist(), "baseline": baseline.tolist()}),
                   client.post("/detect", json={"stream": "s1", "samples": rows[:5].tolist(),
                                                "baseline": baseline.tolist()}),
                   client.post("/detect", json={"stream": "s1", "samples": rows[5:6].tolist()})]
        assert [a.status_code for a in answers] == [200] * len(answers), [a.text for a in answers]
        batch, one = np.array(answers[1].json()["scores"]), np.array(answers[0].json()["scores"])
        np.testing.assert_allclose(one, batch[:1], rtol=1e-5)  # both paths score alike
    pid = stack.worker_services[worker].pid
    assert mapped_packages(pid) == set(), f"{worker}'s serving process mapped {mapped_packages(pid)}"
    # the check can fail: the calibrating child maps onnx (any process importing it does)
    assert "onnx" in mapped_packages_of_import("onnx")


def mapped_packages_of_import(module: str) -> set[str]:
    code = f"import {module}, os; print(os.getpid(), flush=True); input()"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        return mapped_packages(int(child.stdout.readline()))
    finally:
        child.kill()
        child.wait()
