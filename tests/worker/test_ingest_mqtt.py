"""A trained worker and a real Mosquitto: SKAB rows published in every device-message format are scored as /detect
scores them in one batch, alarms come back on the alarm topic and the webhook when the fault segment plays, a flood
of malformed messages is refused and counted while good rows still score, and a broker outage (with a worker crash
inside it) loses no alarm event."""

from __future__ import annotations

import csv
import datetime as dt
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode

import httpx
import numpy as np
import orjson
import paho.mqtt.client as paho
import pytest

from services.config import load_settings
from services.data.sources import data_root
from services.worker.alarms import AlarmBook
from support import free_port, scored, wait_until

SETTINGS = load_settings()
FEATURES = SETTINGS.data.features
BASELINE = SETTINGS.data.train_rows  # 400: the device's first rows scale it
FAULT_START = 572  # valve1/1.csv: the fault segment runs from row 572 to 974
LAST_ROW = 660  # rows replayed: the normal start, then the fault's onset
T0 = 1_764_000_000  # the replayed rows' clock: one row a second from here
ALARM_TOPIC = "fedad/valve1/alarms"


def skab_rows() -> np.ndarray:
    path = data_root(SETTINGS.data) / "valve1" / "1.csv"
    with open(path) as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    return np.array([[float(r[c]) for c in FEATURES] for r in rows], dtype=np.float32)


WHOLE_FILE = skab_rows()  # normal start, the fault (rows 572-973), normal again
ROWS = WHOLE_FILE[:LAST_ROW]


class Client:
    """A paho client on the test broker: publishes with QoS 1 and waits for the acknowledgements; collects the
    alarm events it receives (a persistent session, so events wait for it across a broker restart)."""

    def __init__(self, broker, name: str, listen: str | None = None):
        self.events: list[dict] = []
        self._lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=name, clean_session=False)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.2, 1)
        self.listen = listen
        self.connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *args: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self.connected.wait(10), "the test client could not connect"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if self.listen:
            client.subscribe(self.listen, qos=1)
        self.connected.set()

    def _on_message(self, client, userdata, message):
        with self._lock:
            self.events.append(orjson.loads(message.payload))

    def publish_all(self, messages: list[tuple[str, bytes]]) -> None:
        infos = [self.client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def stamp(i: int) -> int:
    return T0 + i


def rows_messages(device: str, rows: np.ndarray, first: int) -> list[tuple[str, bytes]]:
    """JSON rows: the baseline as one list, then one row per message, as numbers."""
    topic = f"fedad/valve1/rows/{device}"
    as_dict = [dict(zip(FEATURES, map(float, r)), timestamp=stamp(first + i)) for i, r in enumerate(rows)]
    return [(topic, orjson.dumps(as_dict[:BASELINE]))] + [(topic, orjson.dumps(d)) for d in as_dict[BASELINE:]]


def kubeedge_data_messages(device: str, rows: np.ndarray, first: int, per_property: bool) -> list[tuple[str, bytes]]:
    """KubeEdge device-data messages: values as strings, millisecond timestamps; all properties in one message or
    one property per message (as the mapper framework publishes)."""
    topic = f"$ke/events/device/{device}/data/update"
    out = []
    for i, row in enumerate(rows):
        ms = stamp(first + i) * 1000
        props = {f: {"value": repr(float(v)), "metadata": {"timestamp": ms, "type": "float"}}
                 for f, v in zip(FEATURES, row)}
        groups = [{f: p} for f, p in props.items()] if per_property else [props]
        out += [(topic, orjson.dumps({"event_id": f"{device}-{i}-{k}", "timestamp": ms, "data": g}))
                for k, g in enumerate(groups)]
    return out


def twin_messages(device: str, rows: np.ndarray, first: int) -> list[tuple[str, bytes]]:
    topic = f"$hw/events/device/{device}/twin/update"
    return [(topic, orjson.dumps({"event_id": f"{device}-{i}", "timestamp": stamp(first + i) * 1000, "twin": {
        f: {"actual": {"value": repr(float(v))}, "metadata": {"type": "Updated"}} for f, v in zip(FEATURES, row)}}))
        for i, row in enumerate(rows)]


def mapper_text_messages(device: str, rows: np.ndarray, first: int) -> list[tuple[str, bytes]]:
    """The mapper framework's MQTT push: one topic per property, text ``time is <local time>  <topic>: <value>``."""
    out = []
    for i, row in enumerate(rows):
        when = dt.datetime.fromtimestamp(stamp(first + i)).strftime("%Y-%m-%d %H:%M:%S")
        for f, v in zip(FEATURES, row):
            topic = f"fedad/valve1/properties/{device}/{f}"
            out.append((topic, f"time is {when}  {topic}: {float(v)!r}".encode()))
    return out


def push_rows(url: str, device: str, rows: np.ndarray, first: int) -> None:
    """The mapper's HTTP push, form-encoded, all properties of a row in one request."""
    with httpx.Client(base_url=url, timeout=30) as client:
        for i, row in enumerate(rows):
            when = dt.datetime.fromtimestamp(stamp(first + i)).strftime("%Y-%m-%d %H:%M:%S")
            body = urlencode({**{f: repr(float(v)) for f, v in zip(FEATURES, row)}, "time": when})
            r = client.post(f"/v1/ingest/push/{device}", content=body,
                            headers={"content-type": "application/x-www-form-urlencoded"})
            assert r.status_code == 202, r.text


def ingest_status(worker) -> dict:
    return httpx.get(f"{worker.url}/v1/ingest", timeout=10).json()


def expected_events(worker, device: str, rows: np.ndarray) -> list[dict]:
    """What the alarms must say: the same rows scored by stateless /detect in one batch, debounced offline."""
    body = httpx.post(f"{worker.url}/detect", timeout=60, json={
        "baseline": rows[:BASELINE].tolist(), "samples": rows[BASELINE:].tolist()}).json()
    events = []
    AlarmBook("valve1", SETTINGS.alarms.open_after, SETTINGS.alarms.clear_after, events.append).observe(scored(
        device, 0, np.array(body["scores"]), np.array(body["is_anomaly"]), threshold=body["threshold"],
        model_round=body["model_round"], times=[stamp(i) for i in range(BASELINE, len(rows))]))
    return events


def same_events(received: list[dict], expected: list[dict]) -> None:
    assert [(e["event"], e["start_time"]) for e in received] == [(e["event"], e["start_time"]) for e in expected]
    for got, want in zip(received, expected):
        assert got["peak_score"] == pytest.approx(want["peak_score"], rel=1e-4)
        assert set(got) >= {"alarm_id", "worker", "stream", "start_time", "peak_score", "threshold", "top_sensors"}


class WebhookReceiver:
    """An HTTP endpoint on loopback that records the JSON bodies POSTed to it (the alarms' webhook)."""

    def __init__(self):
        received = self.events = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(orjson.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alarms"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def broker(module_mosquitto):
    return module_mosquitto


@pytest.fixture(scope="module")
def webhook():
    receiver = WebhookReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def worker(trained_stack, broker, webhook, mqtt_worker, tmp_path_factory):
    process = mqtt_worker(trained_stack, broker, tmp_path_factory.mktemp("mqtt-worker"),
                          overrides={"FEDAD__ALARMS__WEBHOOK": webhook.url})
    yield process
    process.kill()


def test_every_format_is_scored_as_one_batch_and_the_fault_opens_alarms(worker, broker, webhook):
    listener = Client(broker, "alarm-listener-formats", listen=ALARM_TOPIC)
    publisher = Client(broker, "publisher-formats")
    expected = expected_events(worker, "any", ROWS)
    assert any(e["event"] == "opened" and e["start_time"] >= stamp(FAULT_START) for e in expected), \
        "the served model should flag the fault segment of valve1/1.csv"
    sources = {
        "json-rows": lambda d: publisher.publish_all(rows_messages(d, ROWS, 0)),
        "ke-data": lambda d: publisher.publish_all(kubeedge_data_messages(d, ROWS, 0, per_property=False)),
        "ke-data-props": lambda d: publisher.publish_all(kubeedge_data_messages(d, ROWS, 0, per_property=True)),
        "ke-twin": lambda d: publisher.publish_all(twin_messages(d, ROWS, 0)),
        "mapper-text": lambda d: publisher.publish_all(mapper_text_messages(d, ROWS, 0)),
        "http-push": lambda d: push_rows(worker.url, d, ROWS, 0),
    }
    try:
        for n, (device, send) in enumerate(sources.items(), start=1):
            send(device)
            wait_until(lambda: ingest_status(worker)["counts"]["rows_scored"] == n * (len(ROWS) - BASELINE), 120,
                       f"{device}'s rows to be scored")
        per_device = len(expected)
        wait_until(lambda: len(listener.events) >= per_device * len(sources), 60, "the alarm events")
        status = ingest_status(worker)
        assert status["refused"] == {} and status["counts"]["baseline_rows"] == BASELINE * len(sources)
        wait_until(lambda: len(webhook.events) >= per_device * len(sources), 30, "the webhook's alarm events")
        for device in sources:
            same_events([e for e in listener.events if e["stream"] == device], expected)
            same_events([e for e in webhook.events if e["stream"] == device], expected)
        alarms = httpx.get(f"{worker.url}/v1/alarms").json()
        assert httpx.get(f"{worker.url}/v1/status").json()["alarms"]["open"] == alarms["open"]
        still_open = {a["stream"] for a in alarms["open"]}
        if expected[-1]["event"] == "opened":  # the replay ends inside the fault: each device's alarm is open
            assert still_open == set(sources)
            metrics = httpx.get(f"{worker.url}/metrics").text
            assert all(f'fedad_worker_alarm_open{{stream="{d}"}} 1.0' in metrics for d in sources)
    finally:
        listener.close()
        publisher.close()


def test_devices_publishing_at_once_share_model_runs_and_each_gets_its_own_alarms(worker, broker):
    """Four devices' KubeEdge messages interleaved row by row, published as fast as QoS 1 allows: the rows that wait
    together in the ingestion queue are scored in one model run, and each device's alarms are still those of its
    own rows in one stateless batch."""
    devices = [f"interleaved-{k}" for k in range(4)]
    listener = Client(broker, "alarm-listener-interleaved", listen=ALARM_TOPIC)
    publisher = Client(broker, "publisher-interleaved")
    expected = expected_events(worker, "any", ROWS)
    before_ingest, before_streams = ingest_status(worker), httpx.get(f"{worker.url}/v1/streams").json()
    per_device = [kubeedge_data_messages(d, ROWS, 0, per_property=False) for d in devices]
    try:
        publisher.publish_all([m for row in zip(*per_device) for m in row])
        scored_rows = len(devices) * (len(ROWS) - BASELINE)
        wait_until(lambda: ingest_status(worker)["counts"]["rows_scored"]
                   == before_ingest["counts"]["rows_scored"] + scored_rows, 120, "every device's rows to be scored")
        wait_until(lambda: len([e for e in listener.events if e["stream"] in devices]) >= len(expected) * len(devices),
                   60, "the alarm events")
        for device in devices:
            same_events([e for e in listener.events if e["stream"] == device], expected)
        after = httpx.get(f"{worker.url}/v1/streams").json()
        runs, requests = after["model_runs"] - before_streams["model_runs"], after["requests"] - before_streams["requests"]
        assert runs < requests, "rows of several devices waiting together should have shared model runs"
        assert ingest_status(worker)["refused"] == before_ingest["refused"]
    finally:
        listener.close()
        publisher.close()


def test_a_flood_of_malformed_messages_is_counted_and_good_rows_still_score(worker, broker):
    publisher = Client(broker, "publisher-flood")
    before = ingest_status(worker)
    bad = {
        "malformed_json": ("fedad/valve1/rows/flood", b"{oops"),
        "not_a_number": ("$ke/events/device/flood/data/update",
                         orjson.dumps({"data": {"Current": {"value": "high", "metadata": {"type": "float"}}}})),
        "non_finite": ("$hw/events/device/flood/twin/update",
                       orjson.dumps({"twin": {"Current": {"actual": {"value": "NaN"}}}})),
        "unknown_property": ("fedad/valve1/properties/flood/Speed", b"1.0"),
        "bad_payload": ("fedad/valve1/rows/flood", b"[]"),
        "bad_timestamp": ("fedad/valve1/rows/flood", orjson.dumps({"Current": 1.0, "timestamp": "noon"})),
    }
    each = 300
    good = rows_messages("steady", ROWS[:BASELINE + 100], 0)
    messages = list(good[:1])  # the baseline first, then good and bad interleaved
    for i, message in enumerate(good[1:]):
        messages.append(message)
        for topic_payload in bad.values():
            messages += [topic_payload] * (each // 100)
    try:
        publisher.publish_all(messages)
        wait_until(lambda: ingest_status(worker)["counts"]["messages"] == before["counts"]["messages"] + len(messages),
                   120, "every message to be taken")
        wait_until(lambda: ingest_status(worker)["counts"]["rows_scored"] == before["counts"]["rows_scored"] + 100,
                   60, "the good rows to be scored")
        refused = ingest_status(worker)["refused"]
        for reason in bad:
            assert refused.get(reason, 0) - before["refused"].get(reason, 0) == each, reason
        metrics = httpx.get(f"{worker.url}/metrics").text
        assert f'fedad_worker_ingest_refused_total{{reason="malformed_json"}} {float(refused["malformed_json"])}' \
            in metrics
        form = {"content-type": "application/x-www-form-urlencoded"}
        for body, code in [("Current=high", "not_a_number"), ("Speed=1", "unknown_property"), ("Current", "bad_payload")]:
            r = httpx.post(f"{worker.url}/v1/ingest/push/steady", content=body, headers=form)
            assert r.status_code == 422 and r.json()["code"] == code and "steady" in r.json()["detail"]
        r = httpx.post(f"{worker.url}/v1/ingest/push/bad%20id", content="Current=1", headers=form)
        assert r.status_code == 422 and r.json()["code"] == "bad_device_id"
        after = ingest_status(worker)["refused"]
        assert after["not_a_number"] == refused["not_a_number"] + 1 and after["bad_device_id"] == 1
        assert httpx.get(f"{worker.url}/healthz").status_code == 200
    finally:
        publisher.close()


def test_a_broker_outage_and_a_worker_crash_lose_no_alarm_event(trained_stack, mosquitto, mqtt_worker, tmp_path):
    """Normal rows over MQTT; the broker stops; the rest of the file (the fault and the normal rows after it)
    arrives by HTTP push, so alarms open and clear while nothing can be published; the worker is killed (-9) with
    the events in its outbox; the broker comes back, rows are published while the worker is still down, then the
    worker comes back: every event arrives, in order, and the rows it missed are scored."""
    folder = tmp_path / "worker"
    worker = mqtt_worker(trained_stack, mosquitto, folder)
    listener = Client(mosquitto, "alarm-listener-outage", listen=ALARM_TOPIC)
    publisher = Client(mosquitto, "publisher-outage")
    try:
        publisher.publish_all(rows_messages("pump", WHOLE_FILE[:FAULT_START], 0))
        wait_until(lambda: ingest_status(worker)["counts"]["rows_scored"] == FAULT_START - BASELINE, 60,
                   "the normal rows to be scored")
        early = len(listener.events)
        mosquitto.stop()
        wait_until(lambda: not ingest_status(worker)["mqtt"]["connected"], 30, "the worker to see the outage")
        push_rows(worker.url, "pump", WHOLE_FILE[FAULT_START:], FAULT_START)
        wait_until(lambda: ingest_status(worker)["counts"]["rows_scored"] == len(WHOLE_FILE) - BASELINE, 60,
                   "the fault rows to be scored")
        made = httpx.get(f"{worker.url}/v1/alarms").json()
        assert made["events"]["opened"] >= 1 and made["events"]["cleared"] >= 1, \
            "the fault segment should open an alarm, the normal rows after it clear it"
        pending = ingest_status(worker)["alarm_outbox"]["pending"]
        assert pending == sum(made["events"].values()) - early > 0
        worker.kill()  # kill -9: the outbox is on disk
        mosquitto.start()
        # published while the worker is down: its persistent session keeps them at the broker
        assert publisher.connected.wait(10), "the test publisher did not reconnect"
        publisher.publish_all(rows_messages("pump-after", WHOLE_FILE[:BASELINE + 20], 0))
        worker = mqtt_worker(trained_stack, mosquitto, folder)
        wait_until(lambda: len(listener.events) >= early + pending, 60, "the events held through the outage")
        assert ingest_status(worker)["alarm_outbox"]["pending"] == 0
        held = listener.events[early:]
        assert len({(e["alarm_id"], e["event"]) for e in held}) == pending  # every one, none twice
        assert [e["time"] for e in held] == sorted(e["time"] for e in held)
        cleared = [e for e in held if e["event"] == "cleared"]
        assert {e["alarm_id"] for e in cleared} == {a["alarm_id"] for a in made["recent"]}
        wait_until(lambda: ingest_status(worker)["counts"]["rows_scored"] == 20, 60,
                   "the rows published while the worker was down")
    finally:
        listener.close()
        publisher.close()
        worker.kill()
