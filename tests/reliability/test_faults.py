"""Fault injection with real processes on loopback. After each fault: no completed round lost, no half-written
file, and the run finishes.

Covered here: SIGKILL of the aggregator while it aggregates and while it persists; SIGKILL of a worker while it
uploads; the aggregator unreachable for a while; a straggler past the round deadline; a read-only and a full state
disk. SIGKILL of a worker while it trains and random kills during persistence are in tests/test_recovery.py.

Fault points (services/faults.py) make a process pause at an exact instant so the test SIGKILLs it there.
"""

from __future__ import annotations

import signal

import httpx
import pytest

from reliability.faults_support import (SmallDisk, assert_clean_state, can_mount, rounds_on_disk, wait_for_log,
                                        with_fault)
from services.aggregator.store import AggregatorStore
from support import Stack, wait_until

WORKERS = ("valve1", "valve2", "other")


def finish_and_check(stack: Stack, rounds: int, timeout: float = 180, agg_dir=None) -> dict:
    final = stack.wait_done(timeout)
    assert [h["round"] for h in final["history"]] == list(range(1, rounds + 1)), final["history"]
    for folder in [agg_dir or stack.tmp / "aggregator", *(stack.tmp / w for w in stack.workers)]:
        assert_clean_state(folder)
    return final


def test_aggregator_sigkilled_while_aggregating_and_while_persisting(tmp_path):
    stack = Stack(tmp_path, rounds=3, epochs=1)
    agg_dir = tmp_path / "aggregator"
    stack.aggregator = with_fault(stack, stack.aggregator, "aggregator.aggregate:pause")
    stack.start()
    try:
        # 1. round 1's new global model is computed but not persisted: SIGKILL.
        wait_for_log(stack.aggregator, "FAULT aggregator.aggregate reached")
        stack.aggregator.kill(signal.SIGKILL)
        assert rounds_on_disk(agg_dir) == 0
        assert_clean_state(agg_dir)
        assert len(AggregatorStore(agg_dir).pending_workers(1)) == 3, "the accepted uploads survive"

        # 2. restart: round 1 closes again from the persisted uploads; SIGKILL it between the weights file and
        #    state.json.
        stack.aggregator = with_fault(stack, stack.aggregator, "atomic.commit:pause")
        stack.aggregator.start()
        wait_for_log(stack.aggregator, "FAULT atomic.commit reached")
        assert (agg_dir / "global-1.f32").exists(), "the versioned weights are written first"
        stack.aggregator.kill(signal.SIGKILL)
        assert rounds_on_disk(agg_dir) == 0, "state.json still names round 0: the old complete state"
        assert_clean_state(agg_dir)

        # 3. restart without faults: round 1 closes from the same uploads, the run finishes.
        stack.aggregator = with_fault(stack, stack.aggregator, None)
        stack.aggregator.start().wait_healthy()
        final = finish_and_check(stack, 3)
        assert set(final["history"][0]["workers"]) == set(WORKERS), "round 1 kept all three uploads"
    finally:
        stack.stop()


def test_worker_sigkilled_while_uploading(tmp_path):
    stack = Stack(tmp_path, rounds=3, epochs=1)
    # valve2's second upload (round 2) stops after half of its body; the test SIGKILLs it there.
    stack.worker_services["valve2"] = with_fault(stack, stack.worker_services["valve2"], "worker.upload:pause@2")
    stack.start()
    try:
        wait_for_log(stack.worker_services["valve2"], "FAULT worker.upload reached")
        stack.worker_services["valve2"].kill(signal.SIGKILL)
        wait_for_log(stack.aggregator, "disconnected after", timeout=20)
        status = stack.status()
        assert "valve2" not in status["updates_in_open_round"], "half an upload is never accepted"
        assert status["rounds_done"] == 1

        stack.worker_services["valve2"] = with_fault(stack, stack.worker_services["valve2"], None)
        stack.worker_services["valve2"].start().wait_healthy()
        finish_and_check(stack, 3)
        assert "nothing was accepted" in stack.aggregator.log()
    finally:
        stack.stop()


def test_aggregator_unreachable_workers_back_off_keep_serving_and_come_back(tmp_path):
    rounds = 3
    stack = Stack(tmp_path, rounds=rounds, epochs=1).start()
    try:
        wait_until(lambda: all((stack.worker_status(w) or {}).get("model_round") for w in WORKERS), 120,
                   "every worker to serve a first model")
        stack.aggregator.kill(signal.SIGKILL)
        on_disk = rounds_on_disk(tmp_path / "aggregator")
        assert on_disk < rounds, "the outage must hit a running federation"
        # Backoff doubles from 0.5 s to its 15 s cap: 8 s sleeps are reached after 7.5 s of refusals. A worker in
        # the middle of a training process notices the outage when that round's upload fails.
        def backing_off(w: str) -> bool:
            s = stack.worker_status(w)
            return "unreachable" in (s["last_error"] or "") and "retrying in 8.0s" in stack.worker_services[w].log()

        wait_until(lambda: all(backing_off(w) for w in WORKERS), 90, "every worker to back off to 8 s sleeps")
        for w in WORKERS:
            assert stack.worker_status(w)["phase"] != "failed"
            assert httpx.get(f"{stack.worker_url(w)}/readyz").status_code == 200, "detection goes on meanwhile"
        stack.aggregator.start().wait_healthy()
        assert stack.status()["rounds_done"] == on_disk, "no completed round lost"
        finish_and_check(stack, rounds)
    finally:
        stack.stop()


def test_straggler_past_the_deadline_round_closes_with_quorum_late_update_refused_straggler_rejoins(tmp_path):
    stack = Stack(tmp_path, rounds=4, epochs=1, quorum=2,
                  overrides={"FEDAD__FEDERATION__ROUND_DEADLINE_S": "60"})
    # valve2 stalls when it starts training round 2 until that round has closed: past its 60 s deadline. The
    # deadline leaves room for a round on a loaded 2-core machine (a training child, then an install's calibration
    # child: 30-45 s), so the straggler, one round behind after its refused update, still makes a later round.
    release = tmp_path / "release-valve2"
    stack.worker_services["valve2"] = with_fault(stack, stack.worker_services["valve2"],
                                                 f"worker.train:until={release}@2")
    stack.start()
    try:
        wait_until(lambda: (s := stack.status()) and s["rounds_done"] >= 2, 300, "round 2 to close without valve2")
        release.touch()
        final = finish_and_check(stack, 4, timeout=420)
        round2 = final["history"][1]
        assert round2["closed_by"] == "deadline" and set(round2["workers"]) == {"valve1", "other"}
        assert "round 2 is already closed" in stack.aggregator.log(), "the late update got 409"
        assert "not taken: round 2 is already closed" in stack.worker_services["valve2"].log()
        assert any("valve2" in h["workers"] for h in final["history"][2:]), "the straggler is back in a later round"
    finally:
        stack.stop()


needs_mount = pytest.mark.skipif(not can_mount(), reason="needs root with mount (tmpfs) for a small disk")


@needs_mount
def test_read_only_then_full_state_disk_clear_error_no_corruption_then_recovery(tmp_path):
    disk = SmallDisk(tmp_path / "disk")
    agg_dir = disk.path / "aggregator"
    stack = Stack(tmp_path, rounds=4, epochs=1, overrides={"FEDAD__AGGREGATOR__STATE_DIR": str(agg_dir)})
    stack.start()
    try:
        wait_until(lambda: (s := stack.status()) and s["rounds_done"] >= 1, 120, "round 1")
        disk.read_only()
        done = stack.status()["rounds_done"]
        wait_for_log(stack.aggregator, "cannot write the state dir: Read-only file system", timeout=60)
        ready = httpx.get(f"{stack.agg_url}/readyz")
        assert ready.status_code == 503 and "Read-only file system" in ready.json()["detail"]
        assert rounds_on_disk(agg_dir) >= done - 0
        assert_clean_state(agg_dir)
        assert "Read-only file system" in stack.status()["storage_error"]

        disk.read_only(False)
        filler = disk.fill()
        wait_for_log(stack.aggregator, "No space left on device", timeout=60)
        assert stack.status()["rounds_done"] == rounds_on_disk(agg_dir), "nothing is published unpersisted"
        assert_clean_state(agg_dir)

        filler.unlink()
        final = finish_and_check(stack, 4, agg_dir=agg_dir)
        assert final["storage_error"] is None
    finally:
        stack.stop()
        disk.unmount()


@needs_mount
def test_aggregator_on_a_read_only_disk_refuses_to_start_with_a_clear_message(tmp_path):
    disk = SmallDisk(tmp_path / "disk")
    try:
        disk.read_only()
        stack = Stack(tmp_path, workers=[], overrides={"FEDAD__AGGREGATOR__STATE_DIR": str(disk.path / "agg"),
                                                       "FEDAD__FEDERATION__MIN_WORKERS": "1",
                                                       "FEDAD__FEDERATION__QUORUM": "1"})
        stack.aggregator.start()
        assert stack.aggregator.proc.wait(timeout=60) == 1
        assert "cannot use the state dir" in stack.aggregator.log()
        assert "Read-only file system" in stack.aggregator.log()
    finally:
        disk.unmount()
