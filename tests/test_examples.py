"""`fedad run --config examples/….yaml` (what `make run CONFIG=…` calls) federates another data set and serves it:
the synthetic fleet and Shuttle, each as real processes on free loopback ports, few rounds and epochs."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx
import numpy as np
import pytest

from support import REPO, Stack

from services.data.synthetic import SyntheticSource

SHUTTLE = REPO.parent / "shared" / "data" / "shuttle" / "shuttle.csv"
FLEET = ["device0", "device1", "device2", "device3"]
SMALL_FLEET = {"FEDAD__DATA__SOURCE__SYNTHETIC__ROWS": "2000", "FEDAD__DATA__SOURCE__SYNTHETIC__NORMAL_ROWS": "800",
               "FEDAD__DATA__SOURCE__SYNTHETIC__ANOMALIES": "6", "FEDAD__DATA__TRAINING__ROWS": "800"}


def serve(config: str, stack: Stack) -> tuple[subprocess.Popen, str]:
    """`fedad run --config` in the background until it serves; its output so far."""
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "run", "--config", config, "--fresh"],
                            env=stack.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Ctrl-C stops."):
            return proc, "".join(lines)
    raise AssertionError(f"fedad run exited {proc.wait()} before serving:\n{''.join(lines)}")


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    rest = proc.stdout.read()
    proc.wait(timeout=60)
    return rest


def pooled_f1(out: str) -> float:
    found = re.search(r"pooled +\d+ +([0-9.]+) +([0-9.]+) +([0-9.]+)", out)
    assert found, out
    return float(found.group(1))


def test_the_synthetic_fleet_federates_and_serves_detect(tmp_path):
    stack = Stack(tmp_path, workers=FLEET, rounds=2, epochs=1, overrides=SMALL_FLEET)
    proc, out = serve("examples/synthetic.yaml", stack)
    try:
        assert re.search(r"round +2/2: 4 updates", out), out
        assert 0.2 < pooled_f1(out) <= 1, out
        # device 2's own readings, generated as its worker read them: an anomalous stretch scores above normal rows
        (run,) = SyntheticSource(2, tuple(f"s{i}" for i in range(1, 9)), rows=2000, normal_rows=800,
                                 anomalies=6).runs()
        reply = httpx.post(f"{stack.worker_url('device2')}/detect",
                           json={"samples": run.values[800:].tolist()}, timeout=30)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["model_round"] == 2 and body["threshold"] > 0 and len(body["scores"]) == 1200
        scores, flags, labels = np.array(body["scores"]), np.array(body["is_anomaly"]), run.labels[800:]
        assert np.isfinite(scores).all() and list(flags) == list(scores > body["threshold"])
        assert flags[labels == 1].mean() > 2 * flags[labels == 0].mean(), (flags[labels == 1].mean(),
                                                                          flags[labels == 0].mean())
    finally:
        rest = stop(proc)
    assert "Traceback" not in rest, rest


@pytest.mark.skipif(not SHUTTLE.is_file(), reason="no Shuttle data")
def test_shuttle_split_across_three_nodes_federates_and_serves_detect(tmp_path):
    stack = Stack(tmp_path, workers=["node1", "node2", "node3"], rounds=2, epochs=1)
    proc, out = serve("examples/shuttle.yaml", stack)
    try:
        assert re.search(r"round +2/2: 3 updates", out), out
        assert 0.5 < pooled_f1(out) <= 1, out  # Shuttle's anomalies are far from its normal rows
        rows = np.loadtxt(SHUTTLE, delimiter=",", skiprows=1, max_rows=400)
        reply = httpx.post(f"{stack.worker_url('node1')}/detect", json={"samples": rows[:, :9].tolist()}, timeout=30)
        assert reply.status_code == 200, reply.text
        flags, labels = np.array(reply.json()["is_anomaly"]), rows[:, 9]
        assert flags[labels == 1].mean() > 0.5 and flags[labels == 0].mean() < 0.1
        # a row of the wrong width is refused naming the configured columns, not a 500
        bad = httpx.post(f"{stack.worker_url('node1')}/detect", json={"samples": [[1, 2, 3]]}, timeout=30)
        assert bad.status_code == 422 and "expected 9 (a1, a2" in bad.text, bad.text
    finally:
        rest = stop(proc)
    assert "Traceback" not in rest, rest
