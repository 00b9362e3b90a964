"""The live buffer: which rows it keeps (normal, away from alarms by the alarms' own rule), its bound, its segments,
and its files across a restart and a crash that cut a record."""

from __future__ import annotations

import numpy as np
import pytest

from services.worker.alarms import AlarmBook
from services.worker.buffer import LiveBuffer
from support import scored

WIDTH = 3


def rows_for(first: int, n: int) -> np.ndarray:
    """Row i holds (i, i, i): a kept row says which stream row it was."""
    return np.repeat(np.arange(first, first + n, dtype=np.float32)[:, None], WIDTH, axis=1)


def feed(buffer: LiveBuffer, stream: str, flags, sizes=None, first: int = 0) -> None:
    flags = np.asarray(flags, dtype=bool)
    sizes = sizes or [len(flags)]
    at = 0
    for size in sizes:
        part = flags[at:at + size]
        if len(part):
            buffer.observe(scored(stream, first + at, np.where(part, 2.0, 0.5), part, rows_for(first + at, len(part))))
        at += size


def kept(buffer: LiveBuffer, stream: str | None = None) -> list[int]:
    return [int(v) for run in buffer.runs() if stream is None or run.name.split(":")[1] == stream
            for v in run.values[:, 0]]


def expected(flags, open_after: int, clear_after: int, margin: int) -> list[int]:
    """The rule stated independently: the alarms' own book finds the alarms (row numbers as times); a normal row is
    kept unless it lies within ``margin`` rows of an alarm's span, or it may still be within ``margin`` rows before
    an alarm (the last ``margin`` rows, or before a run of flagged rows that can still open one)."""
    flags = np.asarray(flags, dtype=bool)
    n = len(flags)
    book = AlarmBook("w", open_after, clear_after, lambda event: None)
    events = book.observe(scored("s", 0, np.where(flags, 2.0, 0.5), flags))
    spans, start = [], None
    for event in events:
        if event["event"] == "opened":
            start = event["start_time"]
        else:
            spans.append((start, event["end_time"]))
            start = None
    if start is not None:
        spans.append((start, float("inf")))
    trailing = n
    while trailing > 0 and flags[trailing - 1]:
        trailing -= 1
    limit = (trailing if book.open_streams() == {} and trailing < n else n) - margin
    return [i for i in range(n) if not flags[i] and i < limit
            and not any(s - margin <= i <= e + margin for s, e in spans)]


def buffer_of(tmp_path=None, max_rows=10_000, margin=5, open_after=3, clear_after=2, **kw) -> LiveBuffer:
    return LiveBuffer(tmp_path, [f"c{i}" for i in range(WIDTH)], max_rows, margin, open_after, clear_after, **kw)


def test_normal_rows_are_kept_once_margin_rows_followed_them():
    buffer = buffer_of(margin=5)
    feed(buffer, "s", [0] * 20)
    assert kept(buffer) == list(range(15)) and len(buffer) == 15 and buffer.mark() == 15
    assert buffer.document()["held_back"] == 5
    feed(buffer, "s", [0] * 3, first=20)
    assert kept(buffer) == list(range(18)) and [r.name for r in buffer.runs()] == ["live:s:0"]


def test_an_alarm_drops_its_rows_and_margin_rows_before_its_start_and_after_it_cleared():
    buffer = buffer_of(margin=5, open_after=3, clear_after=2)
    flags = [0] * 30 + [1, 1, 1] + [0, 0] + [0] * 30  # opens at 32 (start 30), clears at 34
    feed(buffer, "s", flags, sizes=[1] * len(flags))  # one row per request: the held-back rows decide
    assert kept(buffer) == list(range(25)) + list(range(40, 60))
    assert [r.name for r in buffer.runs()] == ["live:s:0", "live:s:1"]


def test_flagged_rows_that_open_no_alarm_are_left_out_without_their_neighbours():
    buffer = buffer_of(margin=5, open_after=3)
    feed(buffer, "s", [0] * 10 + [1, 1] + [0] * 20)
    assert kept(buffer) == list(range(10)) + list(range(12, 27))


@pytest.mark.parametrize("seed", range(6))
def test_random_flags_in_random_requests_follow_the_alarms_rule(seed):
    rng = np.random.default_rng(seed)
    open_after, clear_after, margin = int(rng.integers(1, 5)), int(rng.integers(1, 6)), int(rng.integers(0, 8))
    flags = []
    while len(flags) < 600:  # calm stretches, spikes and faults
        flags += [0] * int(rng.integers(1, 60)) + [1] * int(rng.integers(1, 8)) + \
            list(rng.random(int(rng.integers(0, 10))) < 0.5)
    sizes = list(rng.integers(1, 40, size=600))
    buffer = buffer_of(margin=margin, open_after=open_after, clear_after=clear_after)
    feed(buffer, "s", flags, sizes=sizes)
    assert kept(buffer) == expected(flags, open_after, clear_after, margin)


def test_streams_are_judged_apart_and_a_stream_that_starts_afresh_begins_a_new_segment():
    buffer = buffer_of(margin=2)
    feed(buffer, "a", [0] * 10)
    feed(buffer, "b", [0, 0, 1, 1, 1] + [0] * 5)  # an alarm on b only
    feed(buffer, "a", [0] * 10)  # forgotten or evicted by the stream table: rows count from 0 again
    assert [r.name for r in buffer.runs()] == ["live:a:0", "live:a:1"]
    assert kept(buffer, "a") == list(range(8)) + list(range(8))
    assert buffer.document()["dropped"]["gap"] == 2  # a's held-back rows: what followed them is unknown


def test_the_buffer_is_bounded_oldest_rows_out_and_recent_rows_come_newest_last():
    buffer = buffer_of(max_rows=50, margin=0)
    feed(buffer, "a", [0] * 40)
    feed(buffer, "b", [0] * 40)
    assert len(buffer) == 50 and buffer.mark() == 80 and buffer.rows_added_since(30) == 50
    assert kept(buffer, "a") == list(range(30, 40)) and kept(buffer, "b") == list(range(40))
    recent = buffer.recent_normal(15)
    assert recent.shape == (15, WIDTH) and recent[:, 0].tolist() == list(range(25, 40))
    assert buffer.recent_normal(500).shape == (50, WIDTH)


def test_kept_rows_survive_a_restart_and_new_segments_do_not_reuse_numbers(tmp_path):
    buffer = buffer_of(tmp_path, margin=0)
    feed(buffer, "a", [0] * 30)
    feed(buffer, "b", [0] * 5 + [1] + [0] * 5)
    buffer.stop()
    again = buffer_of(tmp_path, margin=0)
    assert [(r.name, r.values.tolist()) for r in again.runs()] == [(r.name, r.values.tolist()) for r in buffer.runs()]
    assert again.mark() == buffer.mark() == 40
    feed(again, "a", [0] * 4)  # the stream table lost its streams: rows count from 0
    assert [r.name for r in again.runs()] == ["live:a:0", "live:b:1", "live:b:2", "live:a:3"]


def test_a_record_cut_by_a_crash_is_dropped_and_the_rest_is_kept(tmp_path):
    buffer = buffer_of(tmp_path, margin=0)
    feed(buffer, "a", [0] * 10)
    buffer.flush()
    feed(buffer, "a", [0] * 10, first=10)
    buffer.flush()  # kill -9 while this record was being written: cut its last bytes
    [chunk] = sorted((tmp_path).glob("chunk-*.bin"))
    size = chunk.stat().st_size
    with open(chunk, "r+b") as f:
        f.truncate(size - 7)
    again = buffer_of(tmp_path, margin=0)
    assert kept(again) == list(range(10)) and again.mark() == 10
    assert chunk.stat().st_size < size - 7  # cut back to the last whole record
    feed(again, "a", [0] * 3)
    again.stop()
    assert kept(buffer_of(tmp_path, margin=0)) == list(range(10)) + list(range(3))


def test_a_corrupted_record_ends_its_file_but_not_the_others(tmp_path):
    buffer = buffer_of(tmp_path, margin=0)
    feed(buffer, "a", [0] * 10)
    buffer.stop()
    second = buffer_of(tmp_path, margin=0)
    feed(second, "b", [0] * 10)
    second.stop()
    first, last = sorted(tmp_path.glob("chunk-*.bin"))
    data = bytearray(first.read_bytes())
    data[-5] ^= 0xFF  # a flipped bit in a's float rows: the CRC check fails
    first.write_bytes(bytes(data))
    assert kept(buffer_of(tmp_path, margin=0)) == list(range(10))  # b's rows, from the other file


def test_chunks_whose_rows_all_went_out_are_removed(tmp_path):
    buffer = buffer_of(tmp_path, max_rows=100, margin=0, chunk_rows=30)
    for i in range(20):
        feed(buffer, "a", [0] * 10, first=10 * i)
        buffer.flush()
    chunks = sorted(tmp_path.glob("chunk-*.bin"))
    assert 3 <= len(chunks) <= 6  # 200 rows written, 100 kept: about 100 / 30 + 1 files
    again = buffer_of(tmp_path, max_rows=100, margin=0, chunk_rows=30)
    assert kept(again) == list(range(100, 200)) and again.mark() == 200
