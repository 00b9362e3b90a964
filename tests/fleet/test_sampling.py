"""Sampled rounds and fleet control, real processes on loopback: a seeded sample of the live nodes trains each round
(predictable from the seed), the others keep serving and install every model; the fairness report; fleet-wide
rollback and pin that every worker follows and reports; the counters on /metrics."""

from __future__ import annotations

import hashlib

import httpx
import numpy as np

from benchmarks.common import newest_round, wait_until
from services.aggregator.membership import draw_sample
from services.config import load_settings
from services.protocol.scaling import FeatureStats
from services.model.layout import Architecture
from services.protocol.codec import content_hash, encode_weights
from support import Stack

ADMIN = {"Authorization": "Bearer dev-admin-token"}
FLEET_TOKEN = "fleet-bootstrap-token-0123456789"


def test_a_seeded_sample_trains_each_round_and_the_others_install_its_model(tmp_path):
    """Light nodes: the sample is the one the seed predicts, others are refused, the round closes when the sample
    has sent; the fairness report counts rounds since each node trained."""
    stack = Stack(tmp_path, workers=["valve1"], rounds=3, min_workers=6, quorum=1, overrides={
        "FEDAD__ENROLLMENT__TOKEN": FLEET_TOKEN, "FEDAD__FEDERATION__CLIENTS_PER_ROUND": "2",
        "FEDAD__FEDERATION__SAMPLE_SEED": "42"})
    stack.aggregator.start().wait_healthy()
    settings = load_settings(environ=stack.env)
    architecture = Architecture.from_settings(settings)
    agg = stack.agg_url
    nodes = [f"n{i}" for i in range(6)]
    tokens = {w: f"token-of-{w}-0123456789" for w in nodes}
    stats = FeatureStats.from_rows(np.random.default_rng(0).normal(size=(50, len(settings.data.columns))))
    try:
        for w in nodes:
            assert httpx.post(f"{agg}/v1/enroll", json={"token_sha256": hashlib.sha256(tokens[w].encode()).hexdigest(),
                                                        "node_id": w},
                              headers={"Authorization": f"Bearer {FLEET_TOKEN}"}).status_code == 200
            joined = httpx.post(f"{agg}/v1/workers/{w}/join", headers=_auth(tokens[w]), json={
                "spec_hash": architecture.spec_hash, "sample_count": 50, "stats": stats.model_dump()}).json()
        assert joined["sampling"] is True and joined["phase"] == "training"
        body = encode_weights(np.full(architecture.n_params, 0.5, np.float32))
        for round_no in (1, 2, 3):
            expected = draw_sample(nodes, 2, 42, round_no)
            asked = {w: httpx.get(f"{agg}/v1/round", headers=_auth(tokens[w])).json()["sampled"] for w in nodes}
            assert sorted(w for w, yes in asked.items() if yes) == expected, (round_no, asked)
            outsider = next(w for w in nodes if w not in expected)
            refused = _push(agg, tokens[outsider], round_no, body)
            assert (refused.status_code, refused.json()["code"]) == (409, "not_sampled")
            assert _push(agg, tokens[expected[0]], round_no, body).status_code == 200
            assert httpx.get(f"{agg}/v1/status").json()["rounds_done"] == round_no - 1, "waits for the sample"
            assert _push(agg, tokens[expected[1]], round_no, body).status_code == 200
            record = httpx.get(f"{agg}/v1/rounds/{round_no}").json()
            assert (sorted(record["workers"]), record["closed_by"], record["sampled"]) == (
                expected, "all_sampled", 2)
        fleet = httpx.get(f"{agg}/v1/fleet").json()
        trained = {w for r in (1, 2, 3) for w in draw_sample(nodes, 2, 42, r)}
        assert fleet["fairness"]["never_trained"] == 6 - len(trained)
        assert sum(fleet["fairness"]["rounds_since_trained"].values()) == len(trained)
        metrics = httpx.get(f"{agg}/metrics").text
        assert "fedad_aggregator_rounds_sampled_total 3.0" in metrics
        assert "fedad_aggregator_nodes_sampled_total 6.0" in metrics
        assert 'fedad_aggregator_enrollments_total{result="enrolled"} 6.0' in metrics
        assert 'fedad_aggregator_updates_refused_total{reason="not_sampled"} 3.0' in metrics
    finally:
        stack.stop()


def test_real_workers_train_only_when_sampled_and_follow_a_fleet_rollback_and_pin(tmp_path):
    stack = Stack(tmp_path, rounds=3, epochs=1, min_workers=3, quorum=1, overrides={
        "FEDAD__FEDERATION__CLIENTS_PER_ROUND": "2", "FEDAD__FEDERATION__SAMPLE_SEED": "5"})
    stack.start()
    agg = stack.agg_url
    try:
        status = stack.wait_done(timeout=360)
        assert status["rounds_done"] == 3
        for record in status["history"]:
            assert (len(record["workers"]), record["closed_by"]) == (2, "all_sampled"), record
        for w in stack.workers:  # every worker installed every model, trained or not
            assert newest_round(stack.worker_status(w)) == 3
        trained_by = {w: sum(w in h["workers"] for h in status["history"]) for w in stack.workers}
        assert sum(trained_by.values()) == 6 and min(trained_by.values()) < 3
        logs = stack.logs()
        assert "not in its sample; serving and waiting for its model" in logs

        # a fleet-wide rollback to version 2, then a pin of 3, then unpin: every worker follows and reports
        rollback = httpx.post(f"{agg}/v1/admin/fleet/serve", json={"version": "2", "reason": "bad model 3"},
                              headers=ADMIN)
        assert rollback.status_code == 202 and rollback.json()["seq"] == 1
        refused = httpx.post(f"{agg}/v1/admin/fleet/serve", json={"version": "2"},
                             headers={"Authorization": "Bearer dev-token-valve1"})
        assert (refused.status_code, refused.json()["code"]) == (403, "not_admin")

        def followed(seq: int, version: str):
            served = {w: (stack.worker_status(w) or {}).get("models", {}).get("served") for w in stack.workers}
            directive = httpx.get(f"{agg}/v1/fleet").json()["directive"]
            return directive if set(served.values()) == {version} and directive["applied"] == 3 \
                and directive["seq"] == seq else None
        directive = wait_until(lambda: followed(1, "2"), 90, "every worker to serve version 2")
        assert directive["action"] == "serve" and directive["refused"] == 0
        httpx.post(f"{agg}/v1/admin/fleet/pin", json={"version": 3}, headers=ADMIN).raise_for_status()
        wait_until(lambda: followed(2, "3"), 90, "every worker to pin version 3")
        assert {stack.worker_status(w)["models"]["pinned"] for w in stack.workers} == {"3"}
        httpx.request("DELETE", f"{agg}/v1/admin/fleet/pin", headers=ADMIN).raise_for_status()
        wait_until(lambda: followed(3, "3"), 90, "every worker to unpin")
        assert {stack.worker_status(w)["models"]["pinned"] for w in stack.workers} == {None}
        missing = httpx.post(f"{agg}/v1/admin/fleet/serve", json={"version": "17"}, headers=ADMIN).json()
        refusals = wait_until(lambda: (d := httpx.get(f"{agg}/v1/fleet").json()["directive"])
                              and d["seq"] == missing["seq"] and d["refused"] == 3 and d, 90,
                              "every worker to refuse a version it does not keep")
        assert refusals["applied"] == 0
        worker = httpx.get(f"{agg}/v1/nodes/valve1").json()
        assert worker["directive"]["status"] == "refused" and "no kept model version 17" in worker["directive"]["detail"]
        # and the outcome survives a worker restart: it does not follow an old directive again
        stack.worker_services["valve2"].stop()
        stack.restart_worker("valve2")
        assert stack.worker_status("valve2")["models"]["served"] == "3"
    finally:
        stack.stop()


def _auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _push(agg: str, token: str, round_no: int, body: bytes) -> httpx.Response:
    return httpx.post(f"{agg}/v1/rounds/{round_no}/updates", content=body, headers={
        **_auth(token), "Content-Type": "application/octet-stream", "X-Sample-Count": "10", "X-Train-Loss": "0.1",
        "X-Content-SHA256": content_hash(body)})
