"""The round state machine without HTTP: deadline with quorum, late updates, restart with pending updates."""

import numpy as np
import pytest

from services.aggregator.rounds import Federation, RoundError
from services.aggregator.store import AggregatorStore
from services.config import load_settings
from services.protocol.scaling import FeatureStats
from services.protocol.codec import encode_weights
from services.protocol.messages import JoinRequest


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture()
def federation(tmp_path):
    settings = load_settings(environ={"FEDAD__FEDERATION__ROUNDS": "2", "FEDAD__FEDERATION__ROUND_DEADLINE_S": "30"})
    clock = Clock()
    fed = Federation(settings, AggregatorStore(tmp_path), clock=clock)
    stats = FeatureStats.from_rows(np.random.default_rng(0).normal(size=(50, 8)))
    for w in ("valve1", "valve2", "other"):
        fed.join(w, JoinRequest(spec_hash=fed.spec_hash, sample_count=50, stats=stats))
    fed.clock_ = clock
    return fed


def body(fed, value):
    return encode_weights(np.full(fed.n_params, value, np.float32))


def test_round_closes_at_deadline_with_quorum_and_refuses_the_straggler(federation):
    fed = federation
    fed.submit("valve1", 1, body(fed, 1.0), 10, 0.1, None)
    fed.clock_.now += 31
    fed.tick()
    assert fed.rounds_done == 0, "one update is below the quorum of 2: the round stays open past its deadline"
    fed.submit("valve2", 1, body(fed, 3.0), 30, 0.1, None)
    assert fed.rounds_done == 0, "two of three updates: wait for the third until the deadline"
    fed.tick()
    assert fed.rounds_done == 1 and fed.state.history[0]["closed_by"] == "deadline"
    np.testing.assert_allclose(fed.global_weights, 2.5)
    with pytest.raises(RoundError) as late:
        fed.submit("other", 1, body(fed, 9.0), 10, 0.1, None)
    assert (late.value.status, late.value.code) == (409, "stale_round") and "already closed" in late.value.detail


def test_pending_updates_survive_a_restart(federation, tmp_path):
    fed = federation
    fed.submit("valve1", 1, body(fed, 2.0), 10, 0.1, None)
    again = Federation(fed.settings, AggregatorStore(tmp_path))
    assert set(again.pending) == {"valve1"}
    again.submit("valve2", 1, body(again, 4.0), 10, 0.1, None)
    again.submit("other", 1, body(again, 6.0), 20, 0.1, None)
    np.testing.assert_allclose(again.global_weights, (20 + 40 + 120) / 40)


def test_after_the_configured_rounds_the_federation_is_idle_for_continual_rounds(federation):
    fed = federation
    for r in (1, 2):
        for w in ("valve1", "valve2", "other"):
            fed.submit(w, r, body(fed, r), 10, 0.1, None)
    assert fed.phase == "idle" and fed.rounds_done == 2, "continual (the default): idle until a trigger"
    assert [h["trigger"] for h in fed.state.history] == ["campaign", "campaign"]
    with pytest.raises(RoundError, match="federation is idle") as refused:
        fed.submit("valve1", 3, body(fed, 1.0), 10, 0.1, None)
    assert (refused.value.status, refused.value.code) == (409, "no_open_round")


def test_without_continual_rounds_the_federation_is_done_after_the_configured_rounds(tmp_path):
    settings = load_settings(environ={"FEDAD__FEDERATION__ROUNDS": "1", "FEDAD__FEDERATION__MIN_WORKERS": "1",
                                      "FEDAD__FEDERATION__QUORUM": "1",
                                      "FEDAD__FEDERATION__CONTINUAL__ENABLED": "false"})
    fed = Federation(settings, AggregatorStore(tmp_path))
    fed.join("valve1", JoinRequest(spec_hash=fed.spec_hash, sample_count=50,
                                   stats=FeatureStats.from_rows(np.random.default_rng(0).normal(size=(50, 8)))))
    fed.submit("valve1", 1, body(fed, 1.0), 10, 0.1, None)
    assert fed.phase == "done" and fed.round_state().continual is False
    with pytest.raises(RoundError) as refused:
        fed.trigger("admin")
    assert (refused.value.status, refused.value.code) == (409, "continual_off")


@pytest.mark.parametrize("submit,status,code", [
    (lambda fed: fed.submit("ghost", 1, body(fed, 1.0), 10, 0.1, None), 409, "not_joined"),
    (lambda fed: fed.submit("valve1", 2, body(fed, 1.0), 10, 0.1, None), 409, "future_round"),
    (lambda fed: fed.submit("valve1", 1, body(fed, 1.0), 0, 0.1, None), 422, "invalid_request"),
    (lambda fed: fed.submit("valve1", 1, body(fed, 1.0), 51, 0.1, None), 422, "too_many_samples"),
    (lambda fed: fed.submit("valve1", 1, body(fed, 1.0), 10, float("inf"), None), 422, "non_finite"),
    (lambda fed: fed.submit("valve1", 1, body(fed, 1.0)[:-4], 10, 0.1, None), 422, "invalid_update"),
    (lambda fed: fed.submit("valve1", 1, body(fed, 1.0), 10, 0.1, "0" * 64), 422, "hash_mismatch"),
    (lambda fed: fed.submit("valve1", 1, body(fed, float("nan")), 10, 0.1, None), 422, "non_finite"),
    (lambda fed: fed.join("valve1", JoinRequest(spec_hash="0" * 16, sample_count=5, stats=FeatureStats.from_rows(
        np.zeros((5, 8))))), 409, "spec_mismatch"),
])
def test_each_refusal_carries_its_status_and_code(federation, submit, status, code):
    with pytest.raises(RoundError) as refused:
        submit(federation)
    assert (refused.value.status, refused.value.code) == (status, code), refused.value.detail
    assert federation.pending == {} and federation.rounds_done == 0, "a refusal changes nothing"


def test_a_different_second_update_is_a_conflict_and_the_same_one_a_duplicate(federation):
    fed = federation
    assert fed.submit("valve1", 1, body(fed, 1.0), 10, 0.1, None)["duplicate"] is False
    assert fed.submit("valve1", 1, body(fed, 1.0), 10, 0.1, None)["duplicate"] is True
    with pytest.raises(RoundError) as refused:
        fed.submit("valve1", 1, body(fed, 2.0), 10, 0.1, None)
    assert (refused.value.status, refused.value.code) == (409, "conflicting_update")
