"""StreamTable in-process, with a detector fitted on a real SKAB run: the entry point MQTT ingestion shares with
/detect (threads scoring at once), the handover file across a graceful restart, and the refusals."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import numpy as np
import pytest

from services.config import load_settings
from services.model.detector import AnomalyDetector, DetectorSpec
from services.protocol.errors import ProtocolError
from services.protocol.messages import TrainingPlan
from services.worker.serving import ModelSlot, ServedModel
from services.worker.batching import RequestBatcher
from services.worker.streams import HANDOVER_FILE, StreamRequest, StreamTable
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


def test_requests_of_many_streams_in_one_model_run_get_what_each_gets_alone(slot, run):
    """Interleaved requests of several streams (new ones with their baselines, later rows one or several at a time,
    refusals among them) scored by ``score_many`` in one session call: each gets the scores, flags, stream rows and
    error it gets from ``score`` alone, and every stream's window moves in request order."""
    baseline, rows = run
    requests = []
    for start, size in [(0, 1), (1, 1), (2, 5), (7, 1), (8, 30), (38, 1)]:
        for device in ("a", "b", "c"):
            offset = {"a": 0, "b": 40, "c": 80}[device]
            requests.append(StreamRequest(device, rows[offset + start:offset + start + size],
                                          baseline if start == 0 else None))
    requests.insert(4, StreamRequest("a", rows[:1], baseline))  # a second baseline: baseline_already_set
    requests.insert(9, StreamRequest("b", rows[:2, :3]))  # wrong_width
    requests.insert(12, StreamRequest("bad id!", rows[:1]))  # bad_stream_id

    alone, together = table(slot), table(slot)
    expected = []
    for request in requests:
        try:
            expected.append(alone.score(*request))
        except ProtocolError as exc:
            expected.append(exc)
    runs_before = together.model_runs
    got = together.score_many(requests)
    assert together.model_runs == runs_before + 1 and together.requests == len(requests) - 3

    for request, want, have in zip(requests, expected, got):
        if isinstance(want, ProtocolError):
            assert isinstance(have, ProtocolError) and have.code == want.code, request.stream
            continue
        assert not isinstance(have, ProtocolError), have
        assert have.stream == want.stream and have.stream_rows == want.stream_rows
        np.testing.assert_allclose(have.scores, want.scores, rtol=1e-5)
        assert np.array_equal(have.flags, want.flags)
    # and one stream's rows scored together equal the stateless batch of that stream's rows
    a = np.concatenate([s.scores for s in got if not isinstance(s, ProtocolError) and s.stream == "a"])
    np.testing.assert_allclose(a, slot.current.detector.decision_function(rows[:39], baseline), rtol=1e-5)


def test_the_batcher_scores_what_arrives_together_in_one_run_and_keeps_each_answer(slot, run):
    baseline, rows = run
    streams = table(slot)
    for device in range(20):  # references first
        streams.score(f"d{device}", rows[:1], baseline)

    async def arrive(batcher):
        async def one(device):
            try:
                return await batcher.score(StreamRequest(f"d{device}", rows[1 + device:2 + device]))
            except ProtocolError as exc:
                return exc
        bad = batcher.score(StreamRequest("d0", rows[:1], baseline))  # refused alone, the others still answered
        return await asyncio.gather(*[one(d) for d in range(20)], bad, return_exceptions=True)

    runs = streams.model_runs
    answers = asyncio.run(arrive(RequestBatcher(streams, wait_s=0.05)))
    assert streams.model_runs == runs + 1, "twenty requests within the wait: one model run"
    assert isinstance(answers[-1], ProtocolError) and answers[-1].code == "baseline_already_set"
    for device, answer in enumerate(answers[:-1]):
        assert answer.stream == f"d{device}" and answer.stream_rows == 1
        sent = np.stack([rows[0], rows[1 + device]])  # the stream's rows so far
        np.testing.assert_allclose(answer.scores, slot.current.detector.decision_function(sent, baseline)[1:],
                                   rtol=1e-5)

    runs = streams.model_runs
    asyncio.run(arrive(RequestBatcher(streams, wait_s=10, max_requests=7)))  # full batches go at once, not in 10 s
    assert streams.model_runs == runs + 3  # 21 requests: three full batches of 7
    runs = streams.model_runs
    asyncio.run(arrive(RequestBatcher(streams, wait_s=0)))
    assert streams.model_runs == runs + 20, "batch_wait_ms 0: each request on its own"
