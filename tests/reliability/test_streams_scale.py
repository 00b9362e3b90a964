"""10,000 distinct devices on one worker: its state stays at the configured caps and every eviction is counted.

A real trained worker takes device data from a real Mosquitto (Debian's package). Each of 10,000 device ids sends
one MQTT message on ``fedad/<worker>/rows/<device>``: a list of real normal SKAB rows, its baseline and one row to
score. With ``streams.max_streams`` and ``ingest.max_devices`` at 200, the worker must score every device's row,
hold no more than 200 streams, count the 9,800 evictions in /metrics, refuse nothing, and keep its memory flat
from 3,000 devices to 10,000 (bursts of 1,000 alike, so the queue's high-water mark is the same).
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from benchmarks.common import rss_mib
from benchmarks.streams import Broker, client
from services.config import load_settings
from services.data.sources import load_node
from support import Stack, get_json, wait_until

DEVICES = 10_000
CAP = 200
BASELINE = 20  # = data.window: the smallest baseline a stream takes
CHUNK = 1000  # devices per burst: the worker's queue holds at most one burst's payloads (~4 MB)
MAX_RSS_GROWTH_MIB = 20  # from 3,000 devices to 10,000, once the allocator has seen a burst's worth of messages


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    b = Broker(tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


def test_ten_thousand_devices_keep_state_at_its_caps(tmp_path, broker):
    settings = load_settings()
    assert settings.data.window <= BASELINE
    stack = Stack(tmp_path, workers=["valve1"], rounds=1, epochs=1, overrides={
        "FEDAD__INGEST__MQTT__ENABLED": "true", "FEDAD__INGEST__MQTT__PORT": str(broker.port),
        "FEDAD__INGEST__MQTT__CLIENT_ID": f"fedad-scale-{tmp_path.name}",
        "FEDAD__INGEST__MAX_DEVICES": str(CAP), "FEDAD__STREAMS__MAX_STREAMS": str(CAP),
        "FEDAD__INGEST__BASELINE_ROWS": str(BASELINE), "FEDAD__INGEST__QUEUE_MESSAGES": str(2 * DEVICES),
        "FEDAD__DASHBOARD__TELEMETRY_INTERVAL_S": "0"})
    try:
        stack.start()
        stack.wait_done(timeout=300)
        url = stack.worker_url("valve1")
        wait_until(lambda: (get_json(f"{url}/v1/ingest") or {}).get("mqtt", {}).get("connected"), 30,
                   "the worker's MQTT connection")
        normal = load_node(settings, settings.worker("valve1")).train_raw()[:BASELINE + 1]
        features = settings.data.features
        pid = stack.worker_services["valve1"].pid

        def publish(first: int, last: int) -> None:
            pub = client(broker.port, "scale-pub")
            base = time.time() - 3600
            infos = []
            for d in range(first, last):
                rows = [{**{f: float(v) for f, v in zip(features, row)}, "timestamp": base + i}
                        for i, row in enumerate(normal)]
                infos.append(pub.publish(f"fedad/valve1/rows/dev-{d:05d}", orjson.dumps(rows), qos=1))
            for info in infos:
                info.wait_for_publish(60)
            pub.disconnect()
            pub.loop_stop()

        def scored_at_least(n: int):
            doc = get_json(f"{url}/v1/ingest")
            return doc if doc and doc["counts"]["rows_scored"] >= n else None

        rss = {}
        for first in range(0, DEVICES, CHUNK):
            publish(first, first + CHUNK)
            doc = wait_until(lambda n=first + CHUNK: scored_at_least(n), 300, f"{first + CHUNK} devices scored",
                             interval=0.2)
            rss[first + CHUNK] = rss_mib(pid)
        rss_first, rss_last = rss[3 * CHUNK], rss[DEVICES]

        assert doc["counts"]["rows_scored"] == DEVICES, doc
        assert doc["counts"]["baseline_rows"] == DEVICES * BASELINE, doc
        assert doc["refused"] == {}, doc
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert metric(metrics, "fedad_worker_streams") == CAP
        assert metric(metrics, "fedad_worker_streams_evicted_total") == DEVICES - CAP
        assert metric(metrics, "fedad_worker_ingest_rows_scored_total") == DEVICES
        held = httpx.get(f"{url}/v1/streams", timeout=10).json()
        assert (held["streams"], held["max_streams"], held["evicted"]) == (CAP, CAP, DEVICES - CAP), held
        # the devices still assembling or collecting a baseline are capped too: nothing waits
        assert len(doc["baseline"]["collecting"]) == 0, doc["baseline"]
        assert rss_last - rss_first < MAX_RSS_GROWTH_MIB, rss
        # and the worker still scores a device it evicted long ago: it starts afresh with a new baseline
        publish(0, 1)
        wait_until(lambda: scored_at_least(DEVICES + 1), 60, "an evicted device scored again", interval=0.2)
        assert np.isfinite(rss_mib(pid))
    finally:
        stack.stop()
