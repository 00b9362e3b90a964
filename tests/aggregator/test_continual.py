"""Continual rounds without HTTP: triggers (admin, schedule, new data, drift), the close rule of a continual round,
late joiners, and that an opened round is on disk before anyone hears of it. The same against real processes:
tests/aggregator/test_admin_routes.py."""

import numpy as np
import pytest

from services.aggregator import continual
from services.aggregator.rounds import Federation, RoundError
from services.aggregator.store import AggregatorStore
from services.config import load_settings
from services.protocol.scaling import FeatureStats
from services.protocol.codec import encode_weights
from services.protocol.messages import JoinRequest, ModelVersionReport, WorkerReport

WORKERS = ("valve1", "valve2", "other")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make(tmp_path, clock, **continual_env):
    env = {"FEDAD__FEDERATION__ROUNDS": "1", "FEDAD__FEDERATION__MIN_WORKERS": "3", "FEDAD__FEDERATION__QUORUM": "2",
           "FEDAD__FEDERATION__ROUND_DEADLINE_S": "30"}
    env.update({f"FEDAD__FEDERATION__CONTINUAL__{k.upper()}": str(v) for k, v in continual_env.items()})
    return Federation(load_settings(environ=env), AggregatorStore(tmp_path), clock=clock)


def stats(seed=0, shift=0.0):
    return FeatureStats.from_rows(np.random.default_rng(seed).normal(size=(50, 8)) + shift)


def body(fed, value):
    return encode_weights(np.full(fed.n_params, value, np.float32))


def campaign(fed, workers=WORKERS):
    """Join ``workers`` and finish the one-round campaign: the federation is idle after it."""
    for w in workers:
        fed.join(w, JoinRequest(spec_hash=fed.spec_hash, sample_count=50, stats=stats()))
    for w in workers:
        fed.submit(w, 1, body(fed, 1.0), 10, 0.1, None)
    assert fed.phase == "idle" and fed.rounds_done == 1
    fed.clock.now += 1  # reports from now on arrive after the round closed
    return fed


@pytest.fixture()
def clock():
    return Clock()


def test_an_admin_round_is_on_disk_before_it_is_acknowledged_and_closes_when_every_live_worker_sent(tmp_path, clock):
    fed = campaign(make(tmp_path, clock, min_new_rows="null", on_drift="false"))
    assert fed.round_state().model_dump() == {"phase": "idle", "open_round": None, "rounds_done": 1,
                                              "rounds_total": 1, "continual": True, "sampled": None,
                                              "mode": "sync", "directive": None}
    assert fed.trigger("admin", "new sensors") == 2
    reopened = Federation(fed.settings, AggregatorStore(tmp_path), clock=clock)  # what kill -9 now would leave
    assert reopened.phase == "training" and reopened.open_round == 2 and reopened.trigger_of(2) == "admin"
    with pytest.raises(RoundError) as refused:
        fed.trigger("admin")
    assert (refused.value.status, refused.value.code) == (409, "round_open")

    fed.submit("valve1", 2, body(fed, 2.0), 10, 0.1, None)
    fed.submit("valve2", 2, body(fed, 4.0), 10, 0.1, None)
    assert fed.rounds_done == 1, "min_workers is a campaign rule: a continual round waits for every live worker"
    fed.submit("other", 2, body(fed, 6.0), 10, 0.1, None)
    assert fed.rounds_done == 2 and fed.phase == "idle"
    record = fed.state.history[-1]
    assert (record["trigger"], record["closed_by"]) == ("admin", "all_live")
    np.testing.assert_allclose(fed.global_weights, 4.0)


def test_a_continual_round_does_not_wait_for_a_silent_worker_and_never_closes_below_quorum(tmp_path, clock):
    fed = campaign(make(tmp_path, clock))
    clock.now += continual.LIVE_S + 1  # everyone silent since the campaign
    fed.seen("valve1")
    fed.trigger("admin")
    fed.submit("valve1", 2, body(fed, 2.0), 10, 0.1, None)
    assert fed.rounds_done == 1, "the only live worker sent, but a round needs a quorum of 2"
    fed.seen("valve2")
    fed.submit("valve2", 2, body(fed, 4.0), 10, 0.1, None)
    assert fed.rounds_done == 2 and fed.state.history[-1]["closed_by"] == "all_live", "other is silent"


def test_a_continual_round_closes_at_its_deadline_with_a_quorum(tmp_path, clock):
    fed = campaign(make(tmp_path, clock))
    fed.trigger("admin")
    for w in ("valve1", "valve2"):
        fed.submit(w, 2, body(fed, 2.0), 10, 0.1, None)
    fed.tick()
    assert fed.rounds_done == 1, "other is live and has not sent: wait"
    clock.now += 31
    fed.tick()
    assert fed.rounds_done == 2 and fed.state.history[-1]["closed_by"] == "deadline"


def test_the_schedule_skips_a_round_without_new_rows_and_opens_one_with_them(tmp_path, clock):
    fed = campaign(make(tmp_path, clock, every_s=60, min_new_rows="null"))
    assert fed.status()["continual"]["next_scheduled_in_s"] == 59
    clock.now += 58
    fed.tick()
    assert fed.state.skipped == []
    clock.now += 1
    fed.tick()
    assert fed.phase == "idle" and [s["reason"] for s in fed.state.skipped] == ["no worker reported new rows"]
    assert Federation(fed.settings, AggregatorStore(tmp_path), clock=clock).state.skipped == fed.state.skipped
    assert fed.status()["continual"]["next_scheduled_in_s"] == 60, "the next try is every_s after the skip"

    fed.report("valve2", WorkerReport(new_rows=5))
    clock.now += 60
    fed.tick()
    assert fed.phase == "training" and fed.trigger_of(2) == "schedule"
    assert fed.status()["continual"]["open_round_trigger"] == "schedule"


def test_skipped_rounds_are_bounded(tmp_path, clock):
    fed = campaign(make(tmp_path, clock, every_s=1, min_new_rows="null"))
    for _ in range(continual.SKIPPED_KEPT + 5):
        clock.now += 1
        fed.tick()
    assert len(fed.state.skipped) == continual.SKIPPED_KEPT and fed.phase == "idle"


def test_new_rows_at_enough_workers_open_a_round_and_reports_from_before_the_last_round_do_not(tmp_path, clock):
    fed = campaign(make(tmp_path, clock, min_new_rows=100, min_workers_with_new_data=2, on_drift="false"))
    assert fed.report("valve1", WorkerReport(new_rows=150)) is None, "one worker of the two needed"
    assert fed.report("valve2", WorkerReport(new_rows=99)) is None, "below min_new_rows"
    assert fed.report("valve2", WorkerReport(new_rows=100)) == "new_data"
    assert fed.phase == "training" and fed.trigger_of(2) == "new_data"
    assert "valve1 (150)" in fed.state.round_trigger["reason"]
    clock.now += 1
    for w in WORKERS:
        fed.submit(w, 2, body(fed, 2.0), 10, 0.1, None)
    assert fed.phase == "idle" and fed.state.history[-1]["trigger"] == "new_data"
    clock.now += 1
    fed.tick()
    assert fed.phase == "idle", "the reports before the round asked for that round, not for another"
    assert fed.status()["workers"]["valve1"]["new_rows"] == 150, "the status shows the latest report all the same"


def test_a_drift_report_opens_a_round_when_on_drift(tmp_path, clock):
    fed = campaign(make(tmp_path, clock, min_new_rows="null"))
    fed.report("other", WorkerReport(drift=True, drift_events=3))
    assert fed.phase == "training" and fed.trigger_of(2) == "drift" and "other" in fed.state.round_trigger["reason"]
    assert fed.status()["workers"]["other"]["drift_events"] == 3

    off = campaign(make(tmp_path / "off", clock, min_new_rows="null", on_drift="false"))
    off.report("other", WorkerReport(drift=True))
    assert off.phase == "idle"


def test_no_round_starts_while_the_federation_waits_for_workers(tmp_path, clock):
    fed = make(tmp_path, clock)
    fed.join("valve1", JoinRequest(spec_hash=fed.spec_hash, sample_count=50, stats=stats()))
    with pytest.raises(RoundError) as refused:
        fed.trigger("admin")
    assert (refused.value.status, refused.value.code) == (409, "waiting_for_workers")
    fed.report("valve1", WorkerReport(drift=True, new_rows=10_000))
    assert fed.phase == "waiting"


def test_a_late_joiner_gets_the_frozen_scaler_and_counts_in_the_next_round(tmp_path, clock):
    settings_env = {"FEDAD__FEDERATION__ROUNDS": "1", "FEDAD__FEDERATION__MIN_WORKERS": "2",
                    "FEDAD__FEDERATION__QUORUM": "2"}
    fed = Federation(load_settings(environ=settings_env), AggregatorStore(tmp_path), clock=clock)
    campaign(fed, workers=("valve1", "valve2"))
    frozen = fed.state.scaler
    answer = fed.join("other", JoinRequest(spec_hash=fed.spec_hash, sample_count=50, stats=stats(1, shift=100.0)))
    assert answer.phase == "idle" and answer.scaler.model_dump() == frozen and fed.state.scaler == frozen
    assert fed.members.get("other")["sample_count"] == 50 and "stats" not in fed.members.get("other"), \
        "a member now, its statistics checked and never merged into the frozen scaler (nor kept for it)"
    fed.trigger("admin")
    fed.submit("valve1", 2, body(fed, 1.0), 10, 0.1, None)
    fed.submit("valve2", 2, body(fed, 1.0), 10, 0.1, None)
    assert fed.rounds_done == 1, "the late joiner is live: the round waits for it"
    fed.submit("other", 2, body(fed, 1.0), 10, 0.1, None)
    assert fed.rounds_done == 2 and set(fed.state.history[-1]["workers"]) == {"valve1", "valve2", "other"}


def test_the_status_shows_the_rule_and_each_workers_served_model_and_why(tmp_path, clock):
    fed = campaign(make(tmp_path, clock, every_s=600, min_new_rows=500, min_workers_with_new_data=2))
    fed.report("valve1", WorkerReport(new_rows=42, drift_events=1, served_round=1, versions=[
        ModelVersionReport(round=1, status="served"),
        ModelVersionReport(round=2, status="refused", reason="F1 dropped by 0.12 (max 0.05)")]))
    status = fed.status()
    rule = status["continual"]
    assert rule["enabled"] and rule["every_s"] == 600 and rule["min_new_rows"] == 500 and rule["skipped"] == []
    assert "600 s have passed" in rule["rule"] and "2 workers each report at least 500 rows" in rule["rule"]
    assert "drift" in rule["rule"]
    worker = status["workers"]["valve1"]
    assert (worker["new_rows"], worker["drift_events"]) == (42, 1)
    assert worker["model"]["served_round"] == 1
    assert worker["model"]["last_refused"] == {"round": 2, "reason": "F1 dropped by 0.12 (max 0.05)"}
    assert status["workers"]["valve2"]["model"] is None, "no report yet"
