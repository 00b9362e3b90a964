"""Buffered asynchronous aggregation (federation.mode async), real processes on loopback: a worker stalled in training
never holds the others up, its update trained on a model too many versions old is refused with 409 too_stale, and
it catches up; the published model is the staleness-weighted FedBuff step; kill -9 loses no acknowledged update."""

from __future__ import annotations

import signal

import httpx
import numpy as np
import pytest

from benchmarks.common import wait_until
from services.aggregator.buffered import staleness_weight
from services.config import load_settings
from services.protocol.scaling import FeatureStats
from services.model.layout import Architecture
from services.protocol.codec import content_hash, decode_weights, encode_weights
from support import Stack

ASYNC = {"FEDAD__FEDERATION__MODE": "async", "FEDAD__FEDERATION__BUFFER_SIZE": "2",
         "FEDAD__FEDERATION__MAX_STALENESS": "2"}


def test_a_slow_worker_never_blocks_progress_and_its_too_stale_update_is_refused(tmp_path):
    stack = Stack(tmp_path, rounds=40, epochs=1, min_workers=3, quorum=1, overrides=ASYNC)
    slow = stack.worker_services["other"]
    # its first training lasts until 4 versions are out, however long they take on a loaded machine
    release = tmp_path / "release-other"
    slow.env = {**stack.env, "FEDAD_FAULT": f"worker.train:until={release}@1"}
    stack.start()
    agg = stack.agg_url
    try:
        def versions_while_slow():
            s = stack.status()
            return s if s and s["rounds_done"] >= 4 else None
        progressed = wait_until(versions_while_slow, 300, "versions published while one worker sleeps")
        release.touch()
        slept = [h for h in progressed["history"] if "other" in h["workers"]]
        assert not slept, "the sleeping worker contributed nothing yet, and nobody waited for it"
        assert all(h["closed_by"] == "buffer_full" and set(h["workers"]) == {"valve1", "valve2"}
                   for h in progressed["history"])

        def slow_one_caught_up():
            s = stack.status()
            return s if s and any("other" in h["workers"] for h in s["history"]) else None
        caught = wait_until(slow_one_caught_up, 300, "the slow worker's next update to be taken")
        metrics = httpx.get(f"{agg}/metrics").text
        assert "fedad_aggregator_stale_updates_refused_total 1.0" in metrics, metrics[-2000:]
        assert "too_stale" in stack.worker_services["other"].log()
        record = next(h for h in caught["history"] if "other" in h["workers"])
        taken = record["workers"]["other"]
        assert 0 <= taken["staleness"] <= 2 and taken["weight"] == pytest.approx(
            staleness_weight(taken["staleness"], 0.5), abs=1e-6)
        assert caught["mode"] == "async" and caught["fleet"]["buffer_size"] == 2
    finally:
        stack.stop()


def test_the_published_model_is_the_staleness_weighted_step_and_survives_kill_9(tmp_path):
    """Light nodes, exact arithmetic: two fresh updates make version 1 (their FedAvg, as a synchronous round would);
    an update trained on version 0 then counts (1 + 1) ** -0.5 of its change, rebased onto version 1."""
    stack = Stack(tmp_path, workers=["valve1", "valve2", "other"], rounds=10, min_workers=3, quorum=1,
                  overrides=ASYNC)
    stack.aggregator.start().wait_healthy()
    settings = load_settings(environ=stack.env)
    architecture = Architecture.from_settings(settings)
    tokens = {w.id: w.token for w in settings.workers}
    agg = stack.agg_url
    stats = FeatureStats.from_rows(np.random.default_rng(0).normal(size=(50, len(settings.data.columns))))
    try:
        for w in tokens:
            httpx.post(f"{agg}/v1/workers/{w}/join", headers=_auth(tokens[w]), json={
                "spec_hash": architecture.spec_hash, "sample_count": 300, "stats": stats.model_dump()}
            ).raise_for_status()
        g0 = _model(agg, tokens["valve1"], architecture.n_params)
        a, b, c = (g0 + np.float32(d) for d in (1.0, 3.0, 10.0))
        assert _push(agg, tokens["valve1"], 1, a, 100).json() == {"accepted": True, "duplicate": False, "round": 1,
                                                                  "staleness": 0}
        assert _push(agg, tokens["valve2"], 1, b, 300).status_code == 200
        g1 = _model(agg, tokens["valve1"], architecture.n_params)
        np.testing.assert_allclose(g1, (100 * a + 300 * b) / 400, atol=1e-5)
        late = _push(agg, tokens["other"], 1, c, 100).json()  # trained on version 0, arrives at version 1
        assert late["staleness"] == 1
        stack.aggregator.kill(signal.SIGKILL)  # the buffer holds one acknowledged update: it must survive
        stack.aggregator.start().wait_healthy()
        assert httpx.get(f"{agg}/v1/status").json()["updates_in_open_round"] == ["other"]
        d = g1 + np.float32(2.0)
        assert _push(agg, tokens["valve1"], 2, d, 100).status_code == 200  # fresh: completes version 2
        g2 = _model(agg, tokens["valve1"], architecture.n_params)
        weight = staleness_weight(1, 0.5)
        expected = g1 + (100 * weight * (c - g0) + 100 * (d - g1)) / 200
        np.testing.assert_allclose(g2, expected, atol=1e-5)
        record = httpx.get(f"{agg}/v1/rounds/2").json()
        assert record["workers"]["other"]["staleness"] == 1 and record["staleness"] == {"mean": 0.5, "max": 1}
        for _ in range(3):  # versions 3..5 from fresh updates
            r = httpx.get(f"{agg}/v1/status").json()["rounds_done"] + 1
            g = _model(agg, tokens["valve1"], architecture.n_params)
            _push(agg, tokens["valve1"], r, g + 1, 100).raise_for_status()
            _push(agg, tokens["valve2"], r, g - 1, 100).raise_for_status()
        stale = _push(agg, tokens["other"], 2, g1, 100)  # trained on version 1, now 5: 4 > max_staleness 2
        assert (stale.status_code, stale.json()["code"]) == (409, "too_stale")
        assert "max_staleness" not in stale.json()["detail"] or "at most 2" in stale.json()["detail"]
        future = _push(agg, tokens["other"], 9, g1, 100)
        assert (future.status_code, future.json()["code"]) == (409, "future_round")
    finally:
        stack.stop()


@pytest.mark.parametrize("env,message", [
    ({"FEDAD__FEDERATION__MODE": "async", "FEDAD__AGGREGATOR__ROLE": "site",
      "FEDAD__AGGREGATOR__UPSTREAM__URL": "http://127.0.0.1:1", "FEDAD__AGGREGATOR__UPSTREAM__ID": "s1",
      "FEDAD__AGGREGATOR__UPSTREAM__TOKEN": "site-token-123"}, "federation.mode async is for the root"),
    ({"FEDAD__FEDERATION__CLIENTS_PER_ROUND": "0"}, "a count of nodes is at least 1"),
    ({"FEDAD__FEDERATION__CLIENTS_PER_ROUND": "1.5"}, "a share of the live nodes is in (0, 1]"),
    ({"FEDAD__FEDERATION__MODE": "fedbuff"}, "federation.mode: Input should be 'sync' or 'async'"),
])
def test_async_and_sampling_settings_are_validated(env, message):
    from services.config import ConfigError

    with pytest.raises(ConfigError) as error:
        load_settings(environ=env)
    assert message in str(error.value)


def _auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _model(agg: str, token: str, n: int) -> np.ndarray:
    answer = httpx.get(f"{agg}/v1/model", headers=_auth(token))
    return decode_weights(answer.content, n)


def _push(agg: str, token: str, round_no: int, weights: np.ndarray, samples: int) -> httpx.Response:
    body = encode_weights(np.asarray(weights, np.float32))
    return httpx.post(f"{agg}/v1/rounds/{round_no}/updates", content=body, headers={
        **_auth(token), "Content-Type": "application/octet-stream", "X-Sample-Count": str(samples),
        "X-Train-Loss": "0.1", "X-Content-SHA256": content_hash(body)})
