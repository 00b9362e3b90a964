"""The ingestion thread without a broker: readings before a first model wait in the queue (not refused),
a full queue refuses and counts, and nothing ends the thread."""

import time

from services.config import load_settings
from services.data.windows import Preprocessing
from services.worker.ingest.messages import Reading
from services.worker.ingest.pipeline import DeviceIngest
from services.worker.serving import ModelSlot
from services.worker.streams import StreamTable


def make(tmp_path, **ingest):
    settings = load_settings(environ={})
    for key, value in ingest.items():
        setattr(settings.ingest, key, value)
    worker = settings.worker("valve1")
    worker.state_dir = tmp_path
    table = StreamTable(ModelSlot(), Preprocessing.from_settings(settings.data), settings.data.features, 10)
    return settings, DeviceIngest(settings, worker, table)


def row(t: float, settings) -> Reading:
    return Reading("pump", t, {f: 1.0 + i for i, f in enumerate(settings.data.features)})


def wait(predicate, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_rows_before_a_first_model_wait_in_the_queue_instead_of_being_refused(tmp_path):
    """A restarting worker serves its persisted model a moment after its broker link is up: what arrives meanwhile
    waits (the queue is bounded) rather than being refused as no_model."""
    settings, ingest = make(tmp_path, baseline_rows=3)
    window = settings.data.window
    assert ingest.baseline_rows == window  # a baseline spans at least one window
    ingest.start()
    try:
        for t in range(window + 2):
            ingest.push(row(1000.0 + t, settings))
        time.sleep(0.5)
        doc = ingest.document()
        assert doc["queued"] == window + 2 and doc["refused"] == {}
        assert doc["counts"].get("rows_scored", 0) == 0 and doc["counts"].get("baseline_rows", 0) == 0
    finally:
        ingest.stop()


def test_a_full_queue_refuses_and_counts(tmp_path):
    settings, ingest = make(tmp_path, queue_messages=2)  # not started: nothing takes from the queue
    for t in range(5):
        ingest.push(row(1000.0 + t, settings))
    assert ingest.document()["refused"] == {"queue_full": 3} and ingest.document()["queued"] == 2
