"""kill -9 at bad moments: workers and the aggregator resume from their persisted state and the run finishes."""

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np

from services.aggregator.store import AggregatorStore
from support import REPO, Stack, wait_until


def assert_clean_state(folder: Path) -> None:
    """No temp file left behind, and state.json names complete files."""
    leftovers = [p.name for p in folder.rglob("*.tmp")]
    assert not leftovers, f"half-written files in {folder}: {leftovers}"
    state = json.loads((folder / "state.json").read_text())
    for name in state["files"].values():
        assert (folder / name).stat().st_size > 0


def test_worker_killed_mid_training_resumes_at_its_persisted_round(tmp_path):
    stack = Stack(tmp_path, rounds=4, epochs=40).start()
    try:
        def training_after_a_round():
            s = stack.worker_status("valve1")
            return s if s and (s["model_round"] or 0) >= 1 and s["phase"] == "training" else None
        before = wait_until(training_after_a_round, 120, "valve1 to train its second round or later")
        stack.worker_services["valve1"].kill(signal.SIGKILL)
        persisted = json.loads((tmp_path / "valve1" / "state.json").read_text())["model_round"]
        assert persisted >= before["model_round"] >= 1

        stack.restart_worker("valve1")
        resumed = stack.worker_status("valve1")
        assert resumed["model_round"] == persisted, "the restarted worker must serve its persisted round at once"
        assert httpx.get(f"{stack.worker_url('valve1')}/readyz").status_code == 200

        final = stack.wait_done()
        assert [h["round"] for h in final["history"]] == [1, 2, 3, 4]
        for folder in ("aggregator", "valve1", "valve2", "other"):
            assert_clean_state(tmp_path / folder)
    finally:
        stack.stop()


def test_aggregator_killed_mid_run_resumes_round_counter_and_global_model(tmp_path):
    stack = Stack(tmp_path, rounds=4, epochs=40).start()
    try:
        seen = wait_until(lambda: (s := stack.status()) and 1 <= s["rounds_done"] < 4 and s, 120, "round 1 to close")
        stack.aggregator.kill(signal.SIGKILL)
        on_disk = json.loads((tmp_path / "aggregator" / "state.json").read_text())
        assert on_disk["rounds_done"] >= seen["rounds_done"], "a completed round was lost"

        stack.aggregator.start().wait_healthy()
        after = stack.status()
        assert after["run_id"] == seen["run_id"]
        assert after["rounds_done"] >= on_disk["rounds_done"]
        if after["rounds_done"] == on_disk["rounds_done"]:
            assert after["model"]["sha256"] == on_disk["global_sha256"]

        final = stack.wait_done()
        assert [h["round"] for h in final["history"]] == [1, 2, 3, 4]
        assert_clean_state(tmp_path / "aggregator")
    finally:
        stack.stop()


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from services.aggregator.store import AggregatorStore
    store = AggregatorStore(sys.argv[1])
    n = 0
    while True:
        n += 1
        weights = np.random.default_rng(n).standard_normal(50_000).astype(np.float32)
        store.commit({"rounds_done": n, "marker": n}, weights)
""")


def test_kill_during_persistence_never_leaves_a_half_written_state(tmp_path):
    """A process committing state as fast as it can is SIGKILLed at random instants; every time, what is on disk
    loads, matches its hash, and is exactly one of the committed versions."""
    rng = random.Random(0)
    commits = []
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=REPO)
        time.sleep(0.5 + rng.random() * 0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state, weights = AggregatorStore(tmp_path).load(50_000)
        expected = np.random.default_rng(state["rounds_done"]).standard_normal(50_000).astype(np.float32)
        assert state["marker"] == state["rounds_done"]
        np.testing.assert_array_equal(weights, expected)
        assert not list(tmp_path.glob("*.tmp")), "stale temp files are removed on load"
        assert len(list(tmp_path.glob("global-*.f32"))) <= 2
        commits.append(state["rounds_done"])
    assert all(c >= 1 for c in commits)
