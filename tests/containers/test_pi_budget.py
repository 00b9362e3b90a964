"""A Raspberry Pi-class budget: the detect-only worker container under ``--cpus=0.25 --memory=128m`` (a quarter of
one core and 128 MiB, about what a Pi-class gateway has left beside KubeEdge's edgecore) serves 100 MQTT devices
sending one KubeEdge device-data message a second each for 60 s through a real Mosquitto, with no message refused
or dropped, no OOM kill, every row scored, and alarms published; the test reports publish -> alarm latency (p50,
p99, max), the container's peak memory and how long it took to drain after the last message.

Each device replays one of valve1's SKAB runs: its first 400 rows as its baseline (one ``rows`` message, as a
mapper that buffered them would send), then from 10 s before the run's fault on, one row a second stamped with the
time it is published; an alarm event's ``time`` is the row that opened it, so latency = received - time.
The container runs on the host's network namespace (the broker and the worker on 127.0.0.1 only) and serves a
copy of a trained worker's state with the aggregator unreachable: one fixed model throughout.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import httpx
import numpy as np
import orjson
import paho.mqtt.client as paho
import pytest

from support import free_port, wait_until
from worker.conftest import Mosquitto, require_mosquitto

from .conftest import RUN_ID, TIMINGS, run
from .test_compose import data_dir
from .test_constrained import cgroup_memory

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

WORKER = "valve1"
DEVICES, SECONDS, HZ = 100, 60, 1.0
CPUS, MEMORY = "0.25", "128m"
BASELINE = 400  # data.train_rows: a device's first rows scale its stream (data.baseline: run)
LEAD = 10  # live rows before the fault


def device_rows(settings) -> list[tuple[np.ndarray, np.ndarray]]:
    """(baseline, live) rows per device, from valve1's runs in turn."""
    from services.data.sources import load_node

    runs = [r for r in load_node(settings, settings.worker(WORKER)).runs if r.labels is not None]
    out = []
    for k in range(DEVICES):
        r = runs[k % len(runs)]
        fault = BASELINE + int(np.argmax(r.labels[BASELINE:] == 1))
        start = max(BASELINE, fault - LEAD)
        live = r.values[start:start + int(SECONDS * HZ)]
        assert len(live) == int(SECONDS * HZ), f"{r.name}: too short"
        out.append((r.values[:BASELINE], live))
    return out


class AlarmListener:
    def __init__(self, port: int):
        self.latencies: list[float] = []
        self.events: list[dict] = []
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"pi-alarms-{RUN_ID}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"fedad/{WORKER}/alarms", qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, message):
        received = time.time()
        event = orjson.loads(message.payload)
        self.events.append(event)
        if event["event"] == "opened":
            self.latencies.append(received - event["time"])

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def publish(port: int, rows, features: list[str]) -> float:
    """Baselines, then every device's next row once a second (devices spread over the second); returns the time
    of the last publish."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"pi-mapper-{RUN_ID}")
    client.max_inflight_messages_set(200)
    client.connect("127.0.0.1", port)
    client.loop_start()
    t0 = time.time() - BASELINE - 5
    infos = []
    for k, (baseline, _) in enumerate(rows):
        doc = [{**dict(zip(features, map(float, row))), "timestamp": t0 + i} for i, row in enumerate(baseline)]
        infos.append(client.publish(f"fedad/{WORKER}/rows/pi{k:03d}", orjson.dumps(doc), qos=1))
    for info in infos:
        info.wait_for_publish(60)
    start = time.monotonic() + 1
    for second in range(int(SECONDS * HZ)):
        for k, (_, live) in enumerate(rows):
            at = start + (second + k / DEVICES) / HZ
            time.sleep(max(0.0, at - time.monotonic()))
            ms = int(time.time() * 1000)
            data = {f: {"value": repr(float(v)), "metadata": {"timestamp": ms, "type": "float"}}
                    for f, v in zip(features, live[second])}
            infos.append(client.publish(f"$ke/events/device/pi{k:03d}/data/update",
                                        orjson.dumps({"event_id": f"{k}-{second}", "timestamp": ms, "data": data}),
                                        qos=1))
    last = time.time()
    for info in infos:  # all acknowledged by the broker before the mapper goes
        info.wait_for_publish(60)
    assert all(info.is_published() for info in infos)
    client.disconnect()
    client.loop_stop()
    return last


def test_a_pi_class_container_serves_100_devices_at_1_hz(detect_image, trained_state, tmp_path):
    from services.config import load_settings

    require_mosquitto()
    settings = load_settings(environ={})
    rows = device_rows(settings)
    broker = Mosquitto(tmp_path / "broker").start()
    state = tmp_path / "state"
    shutil.copytree(trained_state / WORKER, state, ignore=shutil.ignore_patterns("streams.json", "logs"))
    run(["chown", "-R", "10001:10001", str(state)])
    port, name = free_port(), f"fedadpi{RUN_ID}"
    key = WORKER.upper()
    env = {"FEDAD_WORKER_ID": WORKER, f"FEDAD__WORKERS__{key}__HOST": "127.0.0.1",
           f"FEDAD__WORKERS__{key}__PORT": str(port), f"FEDAD__WORKERS__{key}__STATE_DIR": "/state",
           "FEDAD__AGGREGATOR__URL": f"http://127.0.0.1:{free_port()}", "FEDAD__DASHBOARD__TELEMETRY_INTERVAL_S": "0",
           "FEDAD__INGEST__MQTT__ENABLED": "true", "FEDAD__INGEST__MQTT__HOST": "127.0.0.1",
           "FEDAD__INGEST__MQTT__PORT": str(broker.port), "FEDAD__INGEST__MQTT__CLIENT_ID": f"fedad-pi-{RUN_ID}"}
    args = ["docker", "run", "-d", "--name", name, "--network", "host", f"--cpus={CPUS}", f"--memory={MEMORY}",
            f"--memory-swap={MEMORY}", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
            "-v", f"{state}:/state", "-v", f"{data_dir()}/skab/{WORKER}:/data/skab/{WORKER}:ro"]
    for k, v in env.items():
        args += ["-e", f"{k}={v}"]
    listener = None
    try:
        t0 = time.monotonic()
        run(args + [detect_image])
        url = f"http://127.0.0.1:{port}"

        def ingest():
            try:
                r = httpx.get(f"{url}/v1/ingest", timeout=10, trust_env=False)
                return r.json() if r.status_code == 200 else None
            except httpx.HTTPError:
                return None

        def serving():
            try:
                ok = httpx.get(f"{url}/readyz", timeout=10, trust_env=False).status_code == 200
            except httpx.HTTPError:
                ok = False
            return ok and (ingest() or {}).get("mqtt", {}).get("connected")

        wait_until(serving, 300, "the worker to serve its model and connect to the broker", interval=1)
        TIMINGS[f"pi-class ({CPUS} CPU, {MEMORY}): start to serving"] = f"{time.monotonic() - t0:.0f} s"
        listener = AlarmListener(broker.port)
        before = ingest()
        last = publish(broker.port, rows, settings.data.features)

        expected = DEVICES * int(SECONDS * HZ)
        done = wait_until(lambda: (d := ingest()) and d["counts"]["rows_scored"] - before["counts"]["rows_scored"]
                          >= expected and not d["queued"] and d, 300, "every live row to be scored", interval=0.5)
        drained = time.time() - last
        time.sleep(2)  # alarm events still on their way
        doc = ingest()
        status = json.loads(run(["docker", "inspect", name]).stdout)[0]["State"]
        memory = cgroup_memory(name)
        vm = dict(line.split(":", 1) for line in run(["docker", "exec", name, "cat", "/proc/1/status"]).stdout
                  .splitlines() if line.startswith(("VmRSS", "VmHWM")))
        lat = np.sort(np.asarray(listener.latencies))
        summary = (f"{len(lat)} alarms, publish -> alarm p50 {np.percentile(lat, 50) * 1e3:.0f} ms, p99 "
                   f"{np.percentile(lat, 99) * 1e3:.0f} ms, max {lat.max() * 1e3:.0f} ms; drained "
                   f"{drained:.1f} s after the last message; worker RSS peak {vm['VmHWM'].strip()}, now "
                   f"{vm['VmRSS'].strip()}; cgroup peak (page cache included) {memory['peak_bytes'] / 2**20:.0f} MiB, "
                   f"OOM kills {memory['oom_kills']}; load average {os.getloadavg()[0]:.1f}" if len(lat) else "no alarm")
        TIMINGS[f"pi-class ({CPUS} CPU, {MEMORY}): {DEVICES} devices x {HZ:g} Hz x {SECONDS} s"] = summary
        print(summary)

        assert status["Running"] and not status["OOMKilled"] and memory["oom_kills"] == 0, (status, memory)
        assert doc["refused"] == {}, f"refused: {doc['refused']}"
        assert doc["losses"]["broker_dropped"] == before["losses"]["broker_dropped"], doc["losses"]
        assert doc["counts"]["rows_scored"] - before["counts"]["rows_scored"] == expected, done["counts"]
        assert doc["counts"]["messages"] - before["counts"]["messages"] == DEVICES + expected
        assert len(lat) > 0, "the faults opened no alarm"
        assert all(e["stream"].startswith("pi") for e in listener.events)
    finally:
        if listener:
            listener.close()
        logs = run(["docker", "logs", "--tail", "40", name], check=False)
        print(f"--- {name}\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}")
        run(["docker", "rm", "-f", name], check=False)
        broker.stop()
