"""No silent loss under a burst: a real Mosquitto with small queue limits, a trained worker subscribed to it, and a
burst of KubeEdge device-data messages larger than both the broker's queue for the worker and the worker's own
ingestion queue. Every message published (and acknowledged by the broker) is either counted by the worker
(received, or refused as queue_full) or reported as dropped by the broker ($SYS, which the worker exposes) —
never neither; and both losses show in /metrics and in the worker's log.

The worker is stopped (SIGSTOP) while the burst is published, as a worker busy scoring, swapping or restarting
would be: the broker then holds its max_inflight_messages + max_queued_messages and drops the rest, so the test
does not depend on how fast this machine is.
"""

from __future__ import annotations

import signal
import threading

import orjson
import paho.mqtt.client as paho
import pytest

from support import get_json, wait_until

from .conftest import Mosquitto, require_mosquitto

INFLIGHT, QUEUED = 10, 200
BURST = 3000  # > INFLIGHT + QUEUED (broker) and > the worker's queue below
WORKER_QUEUE = 500
FEATURES = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple",
            "Voltage", "Volume Flow RateRMS"]


@pytest.fixture
def small_broker(tmp_path):
    require_mosquitto()
    broker = Mosquitto(tmp_path / "broker")
    text = broker.config.read_text().replace("max_queued_messages 100000\n", "")
    broker.config.write_text(text + f"max_inflight_messages {INFLIGHT}\nmax_queued_messages {QUEUED}\n"
                                    "sys_interval 1\n")
    broker.start()
    yield broker
    broker.stop()


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def publish_burst(port: int, clients: int, per_client: int) -> None:
    """``clients`` publishers at once, QoS 1, each waiting for all its acknowledgements (the broker took them)."""
    def one(k: int) -> None:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"burst-{k}")
        client.max_inflight_messages_set(100)
        client.connect("127.0.0.1", port)
        client.loop_start()
        infos = []
        for i in range(per_client):
            data = {f: {"value": "1.0", "metadata": {"timestamp": 1_764_000_000_000 + i * 1000}} for f in FEATURES}
            infos.append(client.publish(f"$ke/events/device/burst{k}/data/update",
                                        orjson.dumps({"event_id": f"{k}-{i}", "data": data}), qos=1))
        for info in infos:
            info.wait_for_publish(60)
        assert all(info.is_published() for info in infos)
        client.disconnect()
        client.loop_stop()

    threads = [threading.Thread(target=one, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


def test_every_message_of_a_burst_is_counted_by_the_worker_or_reported_dropped(trained_stack, small_broker,
                                                                               mqtt_worker, tmp_path):
    worker = mqtt_worker(trained_stack, small_broker, tmp_path / "worker",
                         overrides={"FEDAD__INGEST__QUEUE_MESSAGES": str(WORKER_QUEUE)})
    try:
        wait_until(lambda: (get_json(worker.url + "/v1/ingest") or {}).get("losses", {}).get("broker_dropped")
                   is not None, 30, "the broker's first $SYS report")
        before = get_json(worker.url + "/v1/ingest")
        dropped_before = before["losses"]["broker_dropped"]
        received_before = before["counts"]["messages"] + before["refused"].get("queue_full", 0)

        worker.proc.send_signal(signal.SIGSTOP)  # busy: reads nothing while the burst arrives
        try:
            publish_burst(small_broker.port, clients=5, per_client=BURST // 5)
        finally:
            worker.proc.send_signal(signal.SIGCONT)

        def settled():
            doc = get_json(worker.url + "/v1/ingest")
            if not doc or doc["queued"]:
                return None
            received = doc["counts"]["messages"] + doc["refused"].get("queue_full", 0) - received_before
            dropped = doc["losses"]["broker_dropped"] - dropped_before
            return (received, dropped, doc) if received + dropped == BURST else None

        received, dropped, doc = wait_until(settled, 120, "every message to be accounted for", interval=0.5)
        print(f"burst of {BURST}: worker received {received} (scored path {doc['counts']['messages']}, refused "
              f"queue_full {doc['refused'].get('queue_full', 0)}), broker dropped {dropped}")
        assert dropped > 0, "the burst was meant to overflow the broker's queue for the worker"
        assert received <= INFLIGHT + QUEUED + 64, received  # what the broker held for it (+ socket buffers)

        metrics = get_json_text(worker.url + "/metrics")
        assert metric(metrics, "fedad_worker_mqtt_broker_dropped_total") == doc["losses"]["broker_dropped"]
        assert metric(metrics, "fedad_worker_ingest_queue_capacity") == WORKER_QUEUE
        log = worker.log()
        assert "the MQTT broker dropped" in log and "max_queued_messages" in log, log[-3000:]
    finally:
        worker.kill()


def get_json_text(url: str) -> str:
    import httpx

    return httpx.get(url, timeout=10, trust_env=False).text


def test_the_drop_counter_survives_a_broker_restart_and_warns_once_per_period(caplog):
    """The watcher on its own: $SYS values as the broker sends them (text), including a restart (the counter starts
    again from 0) and a value that is not a number."""
    import queue
    import logging

    from services.worker.ingest.broker_watch import BrokerWatch

    q: queue.Queue = queue.Queue(maxsize=10)
    watch = BrokerWatch(q, warn_every_s=3600)
    tap = watch.taps["$SYS/broker/publish/messages/dropped"]  # what the MQTT link hands the $SYS messages to
    with caplog.at_level(logging.WARNING, logger="fedad.worker.broker"):
        for value in (b"100", b"130", b"not a number", b"150", b"20", b"25"):  # 20: the broker restarted
            tap("$SYS/broker/publish/messages/dropped", value)
    snap = watch.snapshot()
    assert snap["broker_dropped"] == 25 and snap["broker_dropped_while_connected"] == 30 + 20 + 20 + 5
    assert len([r for r in caplog.records if "dropped" in r.message]) == 1  # once per warn_every_s
    for i in range(9):
        q.put(i)
    with caplog.at_level(logging.WARNING, logger="fedad.worker.broker"):
        watch.check_queue()
    assert "90% full (9 of 10" in caplog.text and watch.snapshot()["queue_peak"] == 9
