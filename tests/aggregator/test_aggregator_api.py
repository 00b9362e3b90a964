"""The aggregator's REST protocol against a real server: the test plays two workers with their real tokens."""

import signal

import httpx
import numpy as np
import pytest

from services.config import load_settings
from services.protocol.scaling import FeatureStats
from services.data.sources import load_node
from services.data.selection import FirstRows
from services.model.layout import count_parameters, spec_hash
from services.protocol.codec import content_hash, decode_weights, encode_weights
from support import Stack

SETTINGS = load_settings()
N = count_parameters(SETTINGS.input_width, SETTINGS.model.hidden)
SPEC = spec_hash(SETTINGS.input_width, SETTINGS.model.hidden)
TOKENS = {w.id: w.token for w in SETTINGS.workers}


def auth(worker):
    return {"Authorization": f"Bearer {TOKENS[worker]}"}


def join_body(worker):
    runs = load_node(SETTINGS, SETTINGS.worker(worker)).runs
    rows = np.concatenate([run.values[FirstRows(400).mask(run)] for run in runs])
    return {"spec_hash": SPEC, "sample_count": len(rows), "stats": FeatureStats.from_rows(rows).model_dump()}


def push(client, worker, round_no, weights, samples=100, loss=0.1, **extra_headers):
    body = extra_headers.pop("body", None) or encode_weights(weights)
    headers = {**auth(worker), "Content-Type": "application/octet-stream", "X-Sample-Count": str(samples),
               "X-Train-Loss": str(loss), "X-Content-SHA256": content_hash(body), **extra_headers}
    return client.post(f"/v1/rounds/{round_no}/updates", content=body, headers=headers)


@pytest.fixture()
def aggregator(tmp_path):
    stack = Stack(tmp_path, workers=["valve2", "other"], rounds=3, min_workers=2, quorum=2)
    stack.aggregator.start().wait_healthy()
    with httpx.Client(base_url=stack.agg_url, timeout=30) as client:
        stack.client = client
        yield stack
    stack.stop()


def test_auth_and_join(aggregator):
    """Refused joins (no token, unknown token, another worker's id, other model spec, …) are in the battery of bad
    inputs, tests/reliability/test_bad_inputs.py."""
    c = aggregator.client
    first = c.post("/v1/workers/valve2/join", json=join_body("valve2"), headers=auth("valve2")).json()
    assert first["phase"] == "waiting" and first["scaler"] is None
    second = c.post("/v1/workers/other/join", json=join_body("other"), headers=auth("other")).json()
    assert second["phase"] == "training" and second["round"] == 1 and len(second["scaler"]["mean"]) == 8
    refused = c.get("/v1/model")
    assert (refused.status_code, refused.json()["code"]) == (401, "missing_token")


def test_updates_are_checked_and_the_round_closes_with_fedavg(aggregator):
    c = aggregator.client
    for w in ("valve2", "other"):
        c.post(f"/v1/workers/{w}/join", json=join_body(w), headers=auth(w))
    model = c.get("/v1/model", headers=auth("valve2"))
    assert model.status_code == 200 and model.headers["x-model-round"] == "0"
    assert c.get("/v1/model", headers={**auth("valve2"), "If-None-Match": model.headers["etag"]}).status_code == 304
    initial = decode_weights(model.content, N)
    a, b = initial + 0.5, initial - 0.25
    # Every refused update (stale/future round, truncated, corrupted, NaN, oversize, bad headers, …) is in the
    # battery of bad inputs, tests/reliability/test_bad_inputs.py.
    assert push(c, "valve2", 1, a, samples=100).json() == {"accepted": True, "duplicate": False, "round": 1}
    assert push(c, "valve2", 1, a, samples=100).json()["duplicate"] is True  # a retried upload is harmless
    r = push(c, "valve2", 1, b, samples=100)
    assert (r.status_code, r.json()["code"]) == (409, "conflicting_update")
    assert "already sent a different update" in r.json()["detail"]
    assert c.get("/v1/status").json()["updates_in_open_round"] == ["valve2"]

    assert push(c, "other", 1, b, samples=300).status_code == 200
    new = c.get("/v1/model", params={"after_round": 0, "wait": 5}, headers=auth("other"))
    assert new.headers["x-model-round"] == "1"
    np.testing.assert_allclose(decode_weights(new.content, N), (a * 100 + b * 300) / 400, rtol=1e-6, atol=1e-7)
    status = c.get("/v1/status").json()
    assert status["rounds_done"] == 1 and status["history"][0]["closed_by"] == "min_workers"


def test_long_poll_returns_304_when_nothing_newer_arrives(aggregator):
    r = aggregator.client.get("/v1/model", params={"after_round": 0, "wait": 1}, headers=auth("valve2"))
    assert r.status_code == 304


def test_an_accepted_update_survives_an_aggregator_kill(aggregator):
    c = aggregator.client
    for w in ("valve2", "other"):
        c.post(f"/v1/workers/{w}/join", json=join_body(w), headers=auth(w))
    initial = decode_weights(c.get("/v1/model", headers=auth("valve2")).content, N)
    assert push(c, "valve2", 1, initial + 1, samples=50).status_code == 200
    aggregator.aggregator.kill(signal.SIGKILL)
    aggregator.aggregator.start().wait_healthy()
    assert c.get("/v1/status").json()["updates_in_open_round"] == ["valve2"]
    assert push(c, "other", 1, initial - 1, samples=150).status_code == 200
    merged = decode_weights(c.get("/v1/model", headers=auth("other")).content, N)
    np.testing.assert_allclose(merged, initial - 0.5, rtol=1e-5, atol=1e-6)
