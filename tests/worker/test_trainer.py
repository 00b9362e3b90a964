"""Training in a child process per round, with real processes: the child trains exactly as the worker would in
process; a child SIGKILLed mid-round (the OOM killer's signal) is reported and retried; the worker that serves
/detect never loads torch and answers throughout."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from services.config import load_settings
from services.data.sources import load_node
from services.model.detector import AnomalyDetector, DetectorSpec
from services.protocol.messages import TrainingPlan
from services.worker.trainer import Trainer, TrainingFailed
from support import Stack, wait_until

SETTINGS = load_settings(environ={})
SPEC = DetectorSpec.from_settings(SETTINGS)
PLAN = TrainingPlan.from_settings(SETTINGS).model_copy(update={"local_epochs": 2})


def test_the_training_process_trains_like_the_worker_would_and_reports_a_kill(tmp_path, monkeypatch):
    inputs = load_node(SETTINGS, SETTINGS.worker("valve2")).windows(None, "train")
    start = SPEC.architecture.initial_weights(5)
    trainer = Trainer(tmp_path)
    epochs = []
    run = trainer.train(SPEC.architecture, start, inputs, PLAN, seed=11, on_epoch=lambda e, loss: epochs.append((e, loss)))
    same = AnomalyDetector(SPEC, start)
    result = same.partial_fit(inputs, PLAN, seed=11)
    np.testing.assert_array_equal(run.weights, same.get_weights())
    assert run.loss == pytest.approx(result.loss, rel=1e-6)
    assert [e for e, _ in epochs] == [1, 2] or [e for e, _ in epochs] == [0, 1], epochs
    assert 50 * 2**20 < run.peak_rss_bytes < 2**30 and run.seconds > 0
    assert not (tmp_path / "training").exists(), "the job's files go with the job"

    monkeypatch.setenv("FEDAD_FAULT", "worker.train:kill@2")  # the worker's 2nd training process kills itself
    with pytest.raises(TrainingFailed, match="killed by SIGKILL"):
        trainer.train(SPEC.architecture, start, inputs, PLAN, seed=11)
    again = trainer.train(SPEC.architecture, start, inputs, PLAN, seed=11)  # the 3rd: the fault fired once
    np.testing.assert_array_equal(again.weights, run.weights)


def torch_mapped(pid: int) -> list[str]:
    maps = open(f"/proc/{pid}/maps").read()
    return sorted({line.split()[-1] for line in maps.splitlines() if "torch" in line.split()[-1]})


def test_a_killed_training_process_is_retried_while_detect_keeps_answering(tmp_path):
    # valve2's 2nd training process (round 2) SIGKILLs itself mid-round, while round 1's model is served
    stack = Stack(tmp_path, workers=("valve1", "valve2"), rounds=2, epochs=2,
                  overrides={"FEDAD_FAULT": "worker.train:kill@2"})
    rows = load_node(SETTINGS, SETTINGS.worker("valve2")).runs[0].values[:50].tolist()
    answers: list[tuple[float, int]] = []
    stop = threading.Event()

    def detect_forever():
        with httpx.Client(base_url=stack.worker_url("valve2"), timeout=10) as client:
            while not stop.is_set():
                try:
                    answers.append((time.time(), client.post("/detect", json={"samples": rows}).status_code))
                except httpx.HTTPError as exc:
                    answers.append((time.time(), repr(exc)))
                time.sleep(0.1)

    stack.start()
    poller = threading.Thread(target=detect_forever, daemon=True)
    try:
        wait_until(lambda: (stack.worker_status("valve2") or {}).get("model_round") == 1, 240, "round 1 served")
        served_from = time.time()
        poller.start()
        final = stack.wait_done(300)
        stop.set()
        poller.join(15)
        status = stack.worker_status("valve2")
        assert status["training_failures"] == 1, status
        assert "round 2" in status["last_training_failure"] and "SIGKILL" in status["last_training_failure"]
        assert status["last_training"]["round"] == 2 and 0 < status["last_training"]["peak_rss_mib"] < 1024
        assert status["torch_loaded"] is False
        for w in stack.workers:
            assert torch_mapped(stack.worker_services[w].pid) == [], f"{w} serves with torch mapped"
            assert stack.worker_status(w)["model_round"] == final["rounds_total"]
        metrics = httpx.get(f"{stack.worker_url('valve2')}/metrics").text
        assert "fedad_worker_training_failures_total 1.0" in metrics
        peak = [line for line in metrics.splitlines() if line.startswith("fedad_worker_training_peak_rss_bytes")]
        assert peak and float(peak[0].split()[-1]) > 50 * 2**20, peak
        assert "FAULT worker.train reached" in stack.worker_services["valve2"].log()
        after = [code for t, code in answers if t >= served_from]
        assert len(after) >= 10 and set(after) == {200}, f"/detect while round 2 failed and retried: {set(after)}"
    finally:
        stop.set()
        stack.stop()
