"""StreamTable in-process, with a detector fitted on a real SKAB run: the entry point MQTT ingestion shares with
/detect (threads scoring at once), the handover file across a graceful restart, and the refusals."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from services.config import load_settings
from services.model.detector import AnomalyDetector, DetectorSpec
from services.protocol.errors import ProtocolError
from services.protocol.messages import TrainingPlan
from services.worker.serving import ModelSlot, ServedModel
from services.worker.streams import HANDOVER_FILE, StreamTable
from support import partition_runs

SETTINGS = load_settings(environ={})
SPEC = DetectorSpec.from_settings(SETTINGS)
FEATURES = SETTINGS.data.features


@pytest.fixture(scope="module")
def run() -> tuple[np.ndarray, np.ndarray]:
    [run] = partition_runs(SETTINGS, ["valve1/3.csv"])
    return run.values[:400], run.values[400:]


@pytest.fixture(scope="module")
def slot(run) -> ModelSlot:
    detector = AnomalyDetector(SPEC).fit(run[0], TrainingPlan.from_settings(SETTINGS), epochs=2)
    slot = ModelSlot()
    slot.swap(ServedModel(detector, 1))
    return slot


def table(slot, state_dir=None, max_streams=100, prep=SPEC.prep) -> StreamTable:
    return StreamTable(slot, prep, FEATURES, max_streams, state_dir)


def test_threads_scoring_streams_at_once_get_the_batch_scores(slot, run):
    baseline, rows = run
    expected = slot.current.detector.decision_function(rows, baseline)
    streams, results = table(slot), {}

    def feed(name: str) -> None:
        first = streams.score(name, rows[:1], baseline)
        rest = [streams.score(name, rows[i:i + 1]) for i in range(1, len(rows))]
        results[name] = np.concatenate([first.scores] + [r.scores for r in rest])

    threads = [threading.Thread(target=feed, args=(f"device-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    for scores in results.values():
        np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_the_handover_file_carries_streams_to_the_next_start_once(slot, run, tmp_path):
    baseline, rows = run
    before = table(slot, tmp_path)
    before.score("pump-1", rows[:50], baseline)
    before.score("pump-2", rows[:3])
    before.save()
    after = table(slot, tmp_path)
    assert after.load() == 2 and not (tmp_path / HANDOVER_FILE).exists()
    assert after.describe("pump-1") | {"last_seen": 0} == before.describe("pump-1") | {"last_seen": 0}
    continued = after.score("pump-1", rows[50:60])
    assert continued.stream_rows == 50
    np.testing.assert_allclose(continued.scores, slot.current.detector.decision_function(rows[:60], baseline)[50:],
                               rtol=1e-5)
    assert table(slot, tmp_path).load() == 0  # taken over once: a later crash never brings these back


def test_a_handover_of_another_window_or_a_damaged_file_is_dropped(slot, run, tmp_path):
    baseline, rows = run
    old = table(slot, tmp_path, prep=dataclasses.replace(SPEC.prep, window=5))
    old.score("pump-1", rows[:10], baseline)
    old.save()
    assert table(slot, tmp_path).load() == 0 and not (tmp_path / HANDOVER_FILE).exists()
    (tmp_path / HANDOVER_FILE).write_bytes(b'{"window": 20, "features": [')
    fresh = table(slot, tmp_path)
    assert fresh.load() == 0 and len(fresh) == 0 and not (tmp_path / HANDOVER_FILE).exists()


def test_refusals_carry_codes_and_change_nothing(run):
    baseline, rows = run
    empty = table(ModelSlot())
    with pytest.raises(ProtocolError) as no_model:
        empty.score("pump-1", rows[:1])
    assert no_model.value.code == "no_model" and len(empty) == 0
    with pytest.raises(ProtocolError) as bad_id:
        empty.score("pump 1", rows[:1])
    assert bad_id.value.code == "bad_stream_id"
    with pytest.raises(ProtocolError) as unknown:
        empty.forget("pump-1")
    assert unknown.value.code == "unknown_stream"


@pytest.mark.parametrize("rows,baseline,code", [
    (np.ones((2, 3)), None, "wrong_width"),
    (np.ones(8), None, "wrong_width"),
    (np.ones((0, 8)), None, "empty_batch"),
    (np.full((1, 8), np.nan), None, "non_finite"),
    (np.full((1, 8), 1e39), None, "non_finite"),
    (np.ones((1, 8)), np.ones((3, 8)), "bad_baseline"),
], ids=["narrow", "flat", "empty", "NaN", "beyond float32", "short baseline"])
def test_rows_from_any_caller_are_checked(slot, rows, baseline, code):
    streams = table(slot)
    with pytest.raises(ProtocolError) as refused:
        streams.score("pump-1", rows, baseline)
    assert refused.value.code == code and len(streams) == 0
