"""Drift: the hand-written Page–Hinkley test answers as river's does, and the worker's watch signals a rise of the
normal rows' scores (not stationary noise, not flagged rows, not a fault's onset), starts afresh with a new model, and
asks for a recalibration and a round. On a real worker: a replayed SKAB run fills the live buffer with its normal rows
only, and a drifted operating point is counted as a drift in /v1/status and /metrics."""

from __future__ import annotations

import random
import signal
import time
from types import SimpleNamespace
from urllib.parse import urlencode

import httpx
import numpy as np
import pytest

from services.config import DriftSettings, load_settings
from services.worker.buffer import FLUSH_S, FOLDER, LiveBuffer
from services.worker.drift import DriftWatch, PageHinkley
from services.worker.watchers import Scored
from support import Stack, partition_runs, wait_until

from .test_buffer import expected


def signals(test: PageHinkley, values) -> list[int]:
    return [i for i, x in enumerate(values) if test.update(float(x))]


def test_river_documented_example_signals_at_the_same_row():
    """river.drift.PageHinkley's docstring: two distributions of 1000 values each, 'Change detected at index 1006'."""
    rng = random.Random(12345)
    stream = rng.choices([0, 1], k=1000) + rng.choices(range(4, 8), k=1000)
    assert signals(PageHinkley(), stream) == [1006]


# river 0.26.1's PageHinkley(mode="up", ...) on the same sequences (computed once with river; it is not installed
# in the serving environment: its import costs 82 MiB and scipy)
G = np.random.default_rng(1)
RIVER = [
    ("shift", np.r_[G.normal(0.4, 0.1, 500), G.normal(0.7, 0.1, 500)], dict(min_instances=200, threshold=10.0),
     [525]),
    ("noise", G.normal(0.4, 0.1, 20000), dict(min_instances=200), []),
    ("noise, small lambda", G.normal(0.4, 0.1, 20000), dict(min_instances=200, threshold=5.0), [5086, 9876, 15675]),
    ("ramp", 0.3 + np.linspace(0, 0.5, 3000) + G.normal(0, 0.1, 3000), dict(min_instances=200, threshold=20.0),
     [698, 1378, 2179, 2950]),
]


@pytest.mark.parametrize("name, values, options, river", RIVER, ids=[r[0] for r in RIVER])
def test_answers_as_river_does(name, values, options, river):
    assert signals(PageHinkley(**options), values) == river


def model(round_=1, threshold=2.0):
    return SimpleNamespace(model_round=round_, threshold=threshold)


def watch(action="both", margin=0, recalibrate=None, **cfg) -> tuple[DriftWatch, LiveBuffer]:
    """A watch fed by a live buffer (as on a worker): rows reach the tests when the buffer keeps them."""
    settings = DriftSettings(action=action, **{"min_rows": 50, "page_hinkley_threshold": 5.0, **cfg})
    drift = DriftWatch(settings, recalibrate=recalibrate)
    return drift, LiveBuffer(None, ["a", "b"], 10_000, margin, 3, 2, on_keep=drift.observe_kept)


def send(watchers, stream: str, ratios, first: int = 0, model_=None, flags=None) -> None:
    """Rows whose score is ``ratio`` thresholds, one per request, to each watcher (as StreamTable does)."""
    model_ = model_ or model()
    ratios = np.asarray(ratios, dtype=np.float64)
    flags = np.zeros(len(ratios), dtype=bool) if flags is None else np.asarray(flags, dtype=bool)
    for i, ratio in enumerate(ratios):
        rows = np.full((1, 2), first + i, dtype=np.float32)
        request = Scored(stream, rows, [0.0], np.array([ratio * model_.threshold], dtype=np.float32),
                         flags[i:i + 1], model_, first + i, [None])
        for watcher in watchers:
            watcher.observe(request)


def test_stationary_normal_scores_never_signal_with_the_default_lambda():
    drift, buffer = watch(min_rows=200, page_hinkley_threshold=DriftSettings().page_hinkley_threshold)
    send([buffer], "s", np.random.default_rng(0).normal(0.4, 0.15, 20000).clip(0, 0.99))
    assert drift.events == 0 and not drift.take_retrain_request()


def test_a_rise_of_normal_scores_signals_once_asks_for_a_round_and_recalibrates_on_recent_rows():
    calls: list = []
    drift, buffer = watch(recalibrate=calls.append)
    drift.start()
    try:
        g = np.random.default_rng(0)
        send([buffer], "s", np.r_[g.normal(0.3, 0.05, 300), g.normal(0.7, 0.05, 100)])
        assert drift.events == 1 and drift.by_stream["s"] == 1
        [event] = drift.document()["recent"]
        assert event["stream"] == "s" and event["mean_before"] == pytest.approx(0.3, abs=0.05)
        assert drift.pending_retrain and drift.take_retrain_request() and not drift.take_retrain_request()
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        [scores] = calls
        # the served model's scores of the newest kept rows when the action ran (all of them: fewer than
        # recalibrate_rows), as the stream table computed them
        assert scores.ndim == 1 and len(scores) > 300 and len(scores) == len(buffer)
        assert drift.recalibrations["done"] == 1
    finally:
        drift.stop()


def test_flagged_rows_are_not_watched_and_another_model_starts_the_test_afresh():
    drift, buffer = watch(action="retrain")
    g = np.random.default_rng(0)
    send([buffer], "s", g.normal(0.3, 0.05, 300))
    send([buffer], "s", np.full(300, 3.0), first=300, flags=np.ones(300))  # a fault: alarms, not drift
    assert drift.events == 0
    send([buffer], "s", g.normal(0.7, 0.05, 45), first=600, model_=model(round_=2))  # a new model: 0.7 is its
    assert drift.events == 0  # normal (fewer than min_rows since the reset anyway)
    send([buffer], "s", g.normal(0.7, 0.05, 300), first=645, model_=model(round_=2))
    assert drift.events == 0 and drift.document()["streams_watched"] == 1


def test_action_none_only_counts():
    drift, buffer = watch(action="none")
    g = np.random.default_rng(2)
    send([buffer], "s", np.r_[g.normal(0.3, 0.05, 300), g.normal(0.8, 0.05, 100)])
    assert drift.events == 1 and not drift.take_retrain_request()


def test_a_fault_onset_is_no_drift_when_the_buffer_feeds_the_tests_but_is_one_without():
    """Scores that climb for 60 rows and then open an alarm: the buffer drops the rows within its margin before the
    alarm, so the climb never reaches the test; a watch without a buffer sees it as a drift."""
    g = np.random.default_rng(3)
    ratios = np.r_[g.normal(0.3, 0.05, 300), np.linspace(0.3, 0.95, 60), np.full(20, 2.0), g.normal(0.3, 0.05, 200)]
    flags = ratios > 1
    buffered, buffer = watch(margin=80)
    send([buffer], "s", ratios, flags=flags)
    alone = DriftWatch(DriftSettings(min_rows=50, page_hinkley_threshold=5.0))
    send([LiveBuffer(None, ["a", "b"], 10, 0, 3, 2), alone], "s", ratios, flags=flags)  # the stream table's watchers
    assert buffered.events == 0 and alone.events == 1


# -- a real worker ------------------------------------------------------------------------------------------------------
SETTINGS = load_settings()
TRAIN_ROWS = SETTINGS.data.train_rows
DRIFT = {"FEDAD__DRIFT__MIN_ROWS": "100", "FEDAD__DRIFT__PAGE_HINKLEY_THRESHOLD": "10"}  # a short replay


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One worker trained on valve1 (one short round), its drift test tuned for a replay of a few hundred rows."""
    stack = Stack(tmp_path_factory.mktemp("drift"), workers=["valve1"], rounds=1, epochs=1, min_workers=1, quorum=1,
                  overrides={"FEDAD__FEDERATION__CONTINUAL__ENABLED": "false", **DRIFT})
    with stack.trained():
        yield stack


def replay(client: httpx.Client, stream: str, rows: np.ndarray, flags: list[bool]) -> None:
    """One row per request, as a device sending once a second would."""
    for row in rows:
        answer = client.post("/detect", json={"stream": stream, "samples": [row.tolist()]})
        assert answer.status_code == 200, answer.text
        flags.append(answer.json()["is_anomaly"][0])


def metric(client: httpx.Client, name: str) -> float:
    [value] = [float(line.split()[-1]) for line in client.get("/metrics").text.splitlines()
               if line.startswith(name + " ")]
    return value


def test_a_replayed_run_fills_the_buffer_with_its_normal_rows_and_a_drifted_operating_point_is_a_drift(stack):
    """valve1/1.csv after its baseline (normal rows, a valve fault that opens an alarm, normal rows), then the
    baseline's rows again with the pump's current rising by two standard deviations: the fault is an alarm and no
    drift; the rising current is a drift, and the buffer keeps exactly the rows the alarm rule leaves."""
    [run] = partition_runs(SETTINGS, ["valve1/1.csv"])
    baseline, rest = run.values[:TRAIN_ROWS], run.values[TRAIN_ROWS:]
    current = SETTINGS.data.columns.index("Current")
    drifted = np.concatenate([baseline, baseline[200:]])
    drifted[:, current] += np.r_[np.linspace(0, 2, TRAIN_ROWS), np.full(TRAIN_ROWS - 200, 2.0)] * \
        baseline[:, current].std()
    sent = np.concatenate([rest, drifted])
    with httpx.Client(base_url=stack.worker_url("valve1"), timeout=60) as client:
        first = client.post("/detect", json={"stream": "pump", "baseline": baseline.tolist(),
                                             "samples": rest[:1].tolist()}).json()
        flags = list(first["is_anomaly"])
        replay(client, "pump", rest[1:], flags)
        status = client.get("/v1/status").json()
        assert status["alarms"]["events"]["opened"] >= 1  # the valve fault
        assert status["drift"]["events"] == 0  # its onset is the alarm's, not a drift
        assert 0 < status["buffer"]["rows"] < len(rest)

        replay(client, "pump", drifted, flags)
        status = client.get("/v1/status").json()
        drift = status["drift"]
        assert drift["events"] >= 1 and drift["recent"][-1]["stream"] == "pump", drift
        assert metric(client, "fedad_worker_drift_events_total") == drift["events"]
        assert metric(client, "fedad_worker_buffer_rows") == status["buffer"]["rows"]
        # drift.action both: a threshold recalibrated on the buffer's newest normal rows, served through the gate
        recalibrated = wait_until(lambda: (lambda s: s if s["drift"]["recalibrations"]["done"] else None)(
            client.get("/v1/status").json()), 60, "the recalibration")
        assert recalibrated["threshold"] != drift["recent"][-1]["threshold"]

    alarms = SETTINGS.alarms
    keep = expected(flags, alarms.open_after, alarms.clear_after, SETTINGS.buffer.margin_rows)
    assert status["buffer"]["rows"] == len(keep) and status["buffer"]["added"] == len(keep)
    stack.worker_services["valve1"].kill(signal.SIGTERM)  # a graceful stop writes what it kept
    buffer = LiveBuffer(stack.tmp / "valve1" / FOLDER, SETTINGS.data.columns, SETTINGS.buffer.max_rows, 0, 1, 1)
    kept_rows = np.concatenate([r.values for r in buffer.runs()])
    np.testing.assert_array_equal(kept_rows, sent[keep].astype(np.float32))  # the normal rows, in order
    in_alarm = np.flatnonzero(np.asarray(flags))
    assert not set(keep) & set(in_alarm.tolist()) and all(r.name.startswith("live:pump:") for r in buffer.runs())
    stack.restart_worker("valve1")
    assert stack.worker_status("valve1")["buffer"]["rows"] == len(keep)  # kept across the restart


def test_device_data_pushed_over_http_fills_the_buffer_by_the_same_rule(stack):
    """The mapper's HTTP push goes through the same stream table: its normal rows are kept as a device's segment,
    and a kill -9 after the flush interval loses none of them."""
    [run] = partition_runs(SETTINGS, ["valve1/5.csv"])
    rows = run.values[:TRAIN_ROWS + 200]  # the device's baseline (not scored), then 200 rows
    url = stack.worker_url("valve1")
    features = SETTINGS.data.columns
    with httpx.Client(base_url=url, timeout=30) as client:
        before = client.get("/v1/ingest").json()["counts"]["rows_scored"]
        for i, row in enumerate(rows):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(1_700_000_000 + i))
            body = urlencode({**{f: repr(float(v)) for f, v in zip(features, row)}, "time": when})
            answer = client.post("/v1/ingest/push/pushed", content=body,
                                 headers={"content-type": "application/x-www-form-urlencoded"})
            assert answer.status_code == 202, answer.text
        wait_until(lambda: client.get("/v1/ingest").json()["counts"]["rows_scored"] - before >= 199, 60,
                   "the pushed rows to be scored")  # the last row waits for the next one or its deadline
        wait_until(lambda: client.get("/v1/ingest").json()["counts"]["rows_scored"] - before == 200, 30,
                   "the last pushed row to be scored")
        flags = client.post("/detect", json={"baseline": rows[:TRAIN_ROWS].tolist(),
                                             "samples": rows[TRAIN_ROWS:].tolist()}).json()["is_anomaly"]
        segments = client.get("/v1/status").json()["buffer"]["segments"]
    alarms = SETTINGS.alarms
    keep = expected(flags, alarms.open_after, alarms.clear_after, SETTINGS.buffer.margin_rows)
    assert len(keep) > 100 and sum(s["rows"] for s in segments if s["stream"] == "pushed") == len(keep)

    # a crash (kill -9) once the flush interval has passed loses nothing that was kept
    kept = stack.worker_status("valve1")["buffer"]["rows"]
    time.sleep(FLUSH_S + 1)
    stack.worker_services["valve1"].kill(signal.SIGKILL)
    stack.restart_worker("valve1")
    assert stack.worker_status("valve1")["buffer"]["rows"] == kept


def test_a_drift_asks_the_federation_for_a_round_and_one_opens(tmp_path):
    """drift.action retrain and federation.continual.on_drift: after the campaign, a drifted stream on valve1 makes it
    report drift, and the aggregator opens a round that it and valve2 train in (trigger "drift")."""
    stack = Stack(tmp_path, workers=["valve1", "valve2"], rounds=1, epochs=1, min_workers=2, quorum=2,
                  overrides={**DRIFT, "FEDAD__DRIFT__ACTION": "retrain",
                             "FEDAD__FEDERATION__CONTINUAL__MIN_NEW_ROWS": "null"})  # only drift opens a round
    stack.start()
    try:
        stack.wait_done()
        [run] = partition_runs(SETTINGS, ["valve1/1.csv"])
        baseline = run.values[:TRAIN_ROWS]
        current = SETTINGS.data.columns.index("Current")
        rows = np.concatenate([baseline, baseline])
        rows[TRAIN_ROWS:, current] += np.linspace(0, 2, TRAIN_ROWS) * baseline[:, current].std()
        flags: list[bool] = []
        with httpx.Client(base_url=stack.worker_url("valve1"), timeout=60) as client:
            client.post("/detect", json={"stream": "pump", "baseline": baseline.tolist(),
                                         "samples": rows[:1].tolist()})
            replay(client, "pump", rows[1:], flags)
            assert client.get("/v1/status").json()["drift"]["events"] >= 1
        status = wait_until(lambda: (lambda s: s if s and len(s["history"]) >= 2 else None)(stack.status()), 120,
                            "a round opened by the drift to close")
        record = status["history"][1]
        assert record["trigger"] == "drift" and sorted(record["workers"]) == ["valve1", "valve2"]
        assert status["workers"]["valve1"]["drift_events"] >= 1
    finally:
        stack.stop()
