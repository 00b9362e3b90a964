"""A detect-only node in a real federation (aggregator + two training workers + one detect-only worker, processes on
loopback): it is listed as such, counts for nothing, never uploads, and serves /detect with each federated model,
calibrated on its own normal rows with onnxruntime alone (no torch in its process, no training process started)."""

from __future__ import annotations

import hashlib

import httpx

from services.config import load_settings
from services.data.sources import load_node
from support import Stack

SETTINGS = load_settings(environ={})


def test_a_detect_only_worker_serves_the_federated_model_and_never_uploads(tmp_path):
    # min_workers 2: the two training workers alone open and close every round
    stack = Stack(tmp_path, workers=("valve1", "valve2", "other"), rounds=2, epochs=1, min_workers=2, quorum=2,
                  overrides={"FEDAD__WORKERS__OTHER__MODE": "detect_only"})
    stack.start()
    try:
        final = stack.wait_done(300)
        assert [sorted(h["workers"]) for h in final["history"]] == [["valve1", "valve2"]] * 2, final["history"]
        listed = final["workers"]["other"]
        assert listed["role"] == "detect_only" and listed["joined"] and not listed["update_in_open_round"]
        assert {final["workers"][w]["role"] for w in ("valve1", "valve2")} == {"train"}
        assert not list((tmp_path / "aggregator").rglob("*other*")), "nothing of the detect-only node is stored"

        status = stack.worker_status("other")
        assert status["mode"] == "detect_only" and status["phase"] in ("idle", "done")
        assert status["model_round"] == final["rounds_total"] and status["threshold"] > 0
        assert status["last_training"] is None and status["torch_loaded"] is False
        assert not (tmp_path / "other" / "training").exists(), "no training process was ever started"
        served = next((tmp_path / "other").glob(f"global-{final['rounds_total']}.f32")).read_bytes()
        assert hashlib.sha256(served).hexdigest() == final["model"]["sha256"], "it serves the federated weights"
        trained_threshold = stack.worker_status("valve2")["threshold"]
        assert status["threshold"] != trained_threshold, "its threshold is calibrated on its own rows"

        rows = load_node(SETTINGS, SETTINGS.worker("other")).runs[0].values
        r = httpx.post(f"{stack.worker_url('other')}/detect", json={"samples": rows[:300].tolist()}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_round"] == final["rounds_total"] and len(body["scores"]) == 300
        log = stack.worker_services["other"].log()
        assert "round 2 installed" in log and "trained" not in log
    finally:
        stack.stop()
