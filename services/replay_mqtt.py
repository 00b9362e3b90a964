"""Play a configured data set as live device traffic over MQTT, in KubeEdge's device-data message format.

Each run of a worker's partition becomes one device, named after the run (``valve1-0.csv``); every tick publishes
one row per device as ``$ke/events/device/<device>/data/update`` with ``{"event_id", "timestamp", "data":
{"<feature>": {"value": "<string>", "metadata": {"timestamp", "type": "float"}}}}`` (QoS 1), the message a KubeEdge
mapper sends. A device first sends its run's training rows, as fast as the broker takes them: they are the
baseline that scales its stream on the worker (``ingest.baseline_rows``), so its held-out rows then score exactly
as in the evaluation. The held-out rows follow at the data's own pace (``--period-s`` between rows) times
``--speed``. Timestamps are the publication's wall-clock time in epoch milliseconds.

    python -m services.replay_mqtt --host 127.0.0.1 --port 1883 --speed 10        # every worker's partition
    python -m services.replay_mqtt --worker valve1 --runs 2 --held-out-rows 300 --speed 50

The data is read with the workers' own loader (``services.data.sources.load_node``), so any configured source
plays. Nothing is trained or scored here; the broker is the only peer.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
import uuid
from dataclasses import dataclass

import numpy as np
import orjson
import paho.mqtt.client as paho

from services.config import Settings, load_settings

log = logging.getLogger("fedad.replay_mqtt")
TOPIC = "$ke/events/device/{device}/data/update"
UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]+")


@dataclass
class Device:
    name: str
    baseline: np.ndarray  # rows sent first, as fast as possible
    rows: np.ndarray  # held-out rows, one per tick


def device_name(worker: str, run: str) -> str:
    """A device id the workers accept (``messages.DEVICE_ID``): the run's name with other characters as '-',
    prefixed by the worker's id unless it starts with it (SKAB's runs: ``valve1-0.csv``)."""
    name = UNSAFE.sub("-", run).strip("-")
    return (name if name.startswith(worker) else f"{worker}-{name}")[:128]


def kubeedge_message(features: list[str], row: np.ndarray, stamp_ms: int) -> bytes:
    """KubeEdge's device-data update for one row: every feature a property, its value a string."""
    data = {f: {"value": repr(float(v)), "metadata": {"timestamp": stamp_ms, "type": "float"}}
            for f, v in zip(features, row)}
    return orjson.dumps({"event_id": uuid.uuid4().hex, "timestamp": stamp_ms, "data": data})


def devices(settings: Settings, workers: list[str], runs: int | None, baseline_rows: int | None,
            held_out_rows: int | None) -> list[Device]:
    """Each run of each worker's partition: its first ``baseline_rows`` rows (default: the workers' ingest
    baseline, else the run's training rows) and the held-out rows after them."""
    from services.data.sources import load_node

    found = []
    for wid in workers:
        node = load_node(settings, settings.worker(wid))
        for run, mask in list(zip(node.runs, node.masks))[:runs]:
            cut = baseline_rows if baseline_rows is not None else (
                settings.ingest.baseline_rows or int(mask.sum()) or settings.data.train_rows)
            cut = max(cut, settings.data.window, 2)
            held = run.values[cut:] if held_out_rows is None else run.values[cut:cut + held_out_rows]
            found.append(Device(device_name(wid, run.name), run.values[:cut], held))
    return found


class Publisher:
    """A paho client that publishes with QoS 1 and waits for the broker to take each message."""

    def __init__(self, host: str, port: int, qos: int = 1, client_id: str | None = None):
        self.qos = qos
        client_id = client_id or f"fedad-replay-{uuid.uuid4().hex[:8]}"
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.max_inflight_messages_set(1000)
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        self.pending: list[paho.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=self.qos)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        self.pending.append(info)
        if len(self.pending) >= 500:
            self.flush()

    def flush(self, timeout: float = 30.0) -> None:
        for info in self.pending:
            info.wait_for_publish(timeout)
        self.pending.clear()

    def close(self) -> None:
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()


def replay(publisher: Publisher, features: list[str], devs: list[Device], period_s: float, speed: float,
           loops: int = 1) -> int:
    """Baselines at once, then one held-out row per device per tick; returns the rows published."""
    sent = 0
    for loop in range(loops):
        for d in devs:
            for row in d.baseline:
                publisher.publish(TOPIC.format(device=d.name), kubeedge_message(features, row, _now_ms()))
                sent += 1
        publisher.flush()
        log.info("pass %d: baselines of %d device(s) sent; held-out rows every %.3f s", loop + 1, len(devs),
                 period_s / speed)
        ticks = max((len(d.rows) for d in devs), default=0)
        tick_s = period_s / speed
        start = time.monotonic()
        for tick in range(ticks):
            delay = start + tick * tick_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for d in devs:
                if tick < len(d.rows):
                    publisher.publish(TOPIC.format(device=d.name), kubeedge_message(features, d.rows[tick], _now_ms()))
                    sent += 1
        publisher.flush()
    return sent


_last_ms = 0


def _now_ms() -> int:
    """Wall-clock epoch ms, strictly increasing (a device's rows must not share a time: they would be one row)."""
    global _last_ms
    _last_ms = max(int(time.time() * 1000), _last_ms + 1)
    return _last_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.replay_mqtt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=None, help="broker (default: ingest.mqtt.host)")
    parser.add_argument("--port", type=int, default=None, help="broker port (default: ingest.mqtt.port)")
    parser.add_argument("--worker", action="append", help="whose partition to play (repeatable; default: all)")
    parser.add_argument("--runs", type=int, default=None, help="runs per worker (default: all)")
    parser.add_argument("--baseline-rows", type=int, default=None)
    parser.add_argument("--held-out-rows", type=int, default=None, help="per device (default: all)")
    parser.add_argument("--period-s", type=float, default=1.0, help="time between a run's rows (SKAB: 1 s)")
    parser.add_argument("--speed", type=float, default=1.0, help="N: N times faster than real time")
    parser.add_argument("--loops", type=int, default=1, help="passes over the data (0: forever)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.speed <= 0 or args.period_s <= 0:
        parser.error("--speed and --period-s must be positive")
    settings = load_settings()
    workers = args.worker or [w.id for w in settings.workers]
    devs = devices(settings, workers, args.runs, args.baseline_rows, args.held_out_rows)
    if not devs:
        print("no runs to replay", file=sys.stderr)
        return 1
    host = args.host or settings.ingest.mqtt.host
    port = args.port or settings.ingest.mqtt.port
    publisher = _connect(host, port)
    log.info("replaying %d device(s) to %s:%d at %gx", len(devs), host, port, args.speed)
    try:
        passes = 0
        while args.loops == 0 or passes < args.loops:
            sent = replay(publisher, settings.data.features, devs, args.period_s, args.speed)
            passes += 1
            log.info("pass %d done: %d rows published", passes, sent)
    finally:
        publisher.close()
    return 0


def _connect(host: str, port: int, timeout: float = 60.0) -> Publisher:
    """The broker may start after the replayer (compose): retry for a while."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Publisher(host, port)
        except OSError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"broker {host}:{port} unreachable: {exc}") from None
            time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
