"""The verdict in the device twin: KubeEdge's twin-update messages on a real Mosquitto, their rate, the worker not
scoring (nor refusing) its own reports when it hears them back, and a broker outage losing no alarm change."""

from __future__ import annotations

import re

import httpx
import orjson

from services.worker.ingest.messages import parse
from services.worker.twin import TOPIC, VERDICT_PROPERTIES, TwinReporter, message, twin_value
from support import wait_until

from .test_ingest_mqtt import BASELINE, FAULT_START, FEATURES, WHOLE_FILE, Client, ingest_status, push_rows, \
    rows_messages

TWIN_VALUE = re.compile(r"^[a-zA-Z0-9\-_.,:/@#]{1,512}$")  # EdgeCore's dtcommon.ValidateTwinValue
TWIN_KEY = re.compile(r"^[a-zA-Z0-9\-_.,:/@#]{1,128}$")  # EdgeCore's dtcommon.ValidateTwinKey
EDGECORE_TYPES = {"string", "bytes", "int", "integer", "float", "double", "boolean", "deleted"}  # ValidateValue


def check_schema(doc: dict) -> None:
    """KubeEdge's twin-update document, as EdgeCore's DeviceTwin validates it."""
    assert set(doc) == {"event_id", "timestamp", "twin"} and isinstance(doc["timestamp"], int) and doc["twin"]
    for name, twin in doc["twin"].items():
        assert name in VERDICT_PROPERTIES and TWIN_KEY.match(name)
        assert set(twin) == {"actual", "metadata"} and twin["metadata"]["type"] in EDGECORE_TYPES
        value = twin["actual"]["value"]
        assert isinstance(value, str) and TWIN_VALUE.match(value), value
        assert twin["actual"]["metadata"]["timestamp"] == doc["timestamp"]
        if twin["metadata"]["type"] == "float":
            float(value)


# --- the reporter alone ----------------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_reports_at_each_alarm_change_and_scores_at_most_every_every_s():
    put, clock, connected = [], Clock(), [True]
    reporter = TwinReporter(30, put.append, lambda: connected[0], clock=clock)
    reporter.on_scores("pump", 0.5, 100.0)  # first sight: the whole verdict
    for t in range(1, 30):
        clock.now = t
        reporter.on_scores("pump", 0.6, 100.0 + t)  # within every_s: nothing
    assert [r["message"]["twin"].keys() for r in put] == [set(VERDICT_PROPERTIES)]
    clock.now = 31
    reporter.on_alarm({"event": "opened", "stream": "pump", "peak_score": 7.94, "time": 131.0,
                       "top_sensors": [{"sensor": "Volume Flow RateRMS", "share": 0.8}]})
    clock.now = 32
    reporter.on_alarm({"event": "cleared", "stream": "pump", "peak_score": 8.5, "time": 132.0,
                       "top_sensors": [{"sensor": "Current", "share": 0.5}]})
    alarms = [(r["message"]["twin"]["alarm"]["actual"]["value"], r["message"]["twin"]["top_sensor"]["actual"]["value"])
              for r in put[1:]]
    assert alarms == [("open", "Volume_Flow_RateRMS"), ("clear", "none")], "a change at once, even 1 s apart"
    clock.now = 70
    connected[0] = False
    reporter.on_scores("pump", 0.7, 170.0)  # due, but the broker is away: a stale score later says nothing
    assert len(put) == 3
    connected[0] = True
    reporter.on_scores("pump", 0.7, 171.0)
    assert set(put[-1]["message"]["twin"]) == {"anomaly_score"} and put[-1]["device"] == "pump"
    for record in put:
        check_schema(record["message"])


def test_beyond_max_devices_a_device_with_an_open_alarm_is_not_forgotten():
    put = []
    reporter = TwinReporter(30, put.append, lambda: True, max_devices=2)
    reporter.on_alarm({"event": "opened", "stream": "a", "peak_score": 5.0, "time": 1.0, "top_sensors": []})
    reporter.on_scores("b", 0.1, 2.0)
    reporter.on_scores("c", 0.1, 3.0)  # one too many: b goes, a keeps its open alarm
    reporter.on_scores("a", 0.2, 4.0)
    assert [r["device"] for r in put] == ["a", "b", "c"], "a is still known: no new 'clear' report for it"


def test_values_keep_to_what_edgecore_accepts():
    assert twin_value("Volume Flow RateRMS") == "Volume_Flow_RateRMS"
    assert twin_value("") == twin_value(None) == "none"
    assert len(twin_value("x" * 600)) == 512
    check_schema(message({"anomaly_score": "1.2e-05", "alarm": "clear", "top_sensor": "none"}, 1_764_000_000.25))


def test_the_workers_own_reports_heard_back_are_neither_scored_nor_refused():
    own = orjson.dumps(message({"anomaly_score": "3.2", "alarm": "open", "top_sensor": "Current"}, 1_764_000_000))
    assert parse("kubeedge_twin", "topic", own, frozenset(FEATURES), "pump") == []
    mixed = orjson.loads(own)
    mixed["twin"]["Current"] = {"actual": {"value": "1.5"}, "metadata": {"type": "float"}}
    [reading] = parse("kubeedge_twin", "topic", orjson.dumps(mixed), frozenset(FEATURES), "pump")
    assert reading.values == {"Current": 1.5}


# --- a worker on a real broker -----------------------------------------------------------------------------------

def test_twin_reports_on_a_real_broker_survive_an_outage(trained_stack, mosquitto, mqtt_worker, tmp_path):
    """Normal rows over MQTT: the device's first verdict reaches its twin topic, and the worker hears it back
    without scoring or refusing it. The broker stops; the fault and the normal rows after it arrive by HTTP push,
    so the alarm opens and clears while nothing can be published; the broker comes back: both changes reach the
    twin, in order, after their alarm events, and no periodic score was queued meanwhile."""
    worker = mqtt_worker(trained_stack, mosquitto, tmp_path / "worker",
                         overrides={"FEDAD__TWIN__ENABLED": "true", "FEDAD__TWIN__EVERY_S": "2"})
    listener = Client(mosquitto, "twin-listener", listen=TOPIC.format(device="+"))
    publisher = Client(mosquitto, "twin-publisher")
    try:
        publisher.publish_all(rows_messages("pump-7", WHOLE_FILE[:FAULT_START], 0))
        wait_until(lambda: ingest_status(worker)["counts"]["rows_scored"] == FAULT_START - BASELINE, 60,
                   "the normal rows to be scored")
        wait_until(lambda: listener.events, 30, "the first twin report")
        first = listener.events[0]
        check_schema(first)
        assert first["twin"]["alarm"]["actual"]["value"] == "clear"
        # heard back (the worker subscribes to $hw/events/device/+/twin/update): counted as a message, nothing else
        rows_sent = 1 + FAULT_START - BASELINE  # the baseline in one message, then a row per message
        wait_until(lambda: ingest_status(worker)["counts"]["messages"] == rows_sent + len(listener.events), 30,
                   "the worker to hear its own reports")
        status = ingest_status(worker)
        assert status["refused"] == {} and status["counts"]["rows_scored"] == FAULT_START - BASELINE
        assert status["twin"] == {"enabled": True, "reports": len(listener.events), "topic": TOPIC}

        mosquitto.stop()
        wait_until(lambda: not ingest_status(worker)["mqtt"]["connected"], 30, "the worker to see the outage")
        before = len(listener.events)
        push_rows(worker.url, "pump-7", WHOLE_FILE[FAULT_START:], FAULT_START)
        wait_until(lambda: ingest_status(worker)["counts"]["rows_scored"] == len(WHOLE_FILE) - BASELINE, 60,
                   "the fault rows to be scored")
        made = httpx.get(f"{worker.url}/v1/alarms").json()
        changes = made["events"]["opened"] + made["events"]["cleared"]
        assert made["events"]["opened"] >= 1 and made["events"]["cleared"] >= 1
        # held on disk: each alarm event and its twin report, and no periodic score (the broker was away)
        assert ingest_status(worker)["alarm_outbox"]["pending"] == 2 * changes

        mosquitto.start()
        wait_until(lambda: len(listener.events) >= before + changes, 60, "the twin reports held through the outage")
        wait_until(lambda: ingest_status(worker)["alarm_outbox"]["pending"] == 0, 30, "the outbox to empty")
        held = listener.events[before:before + changes]
        for doc in held:
            check_schema(doc)
        assert [d["twin"]["alarm"]["actual"]["value"] for d in held] == ["open", "clear"] * made["events"]["cleared"] \
            + ["open"] * (made["events"]["opened"] - made["events"]["cleared"])
        opened = [d for d in held if d["twin"]["alarm"]["actual"]["value"] == "open"]
        assert all(d["twin"]["top_sensor"]["actual"]["value"] != "none" for d in opened)
        assert [d["timestamp"] for d in held] == sorted(d["timestamp"] for d in held)
        wait_until(lambda: ingest_status(worker)["counts"]["messages"] == rows_sent + len(listener.events), 30,
                   "the worker to hear the held reports")
        status = ingest_status(worker)
        assert status["refused"] == {} and status["counts"]["rows_scored"] == len(WHOLE_FILE) - BASELINE
    finally:
        listener.close()
        publisher.close()
        worker.kill()
