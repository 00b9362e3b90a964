"""The live buffer: normal rows from the worker's streams, kept to train the next rounds on what the machine does now.

Which rows. Every row a stream scores (stream /detect requests, MQTT and HTTP-push device data: all go through
``StreamTable.score``) passes a gate per stream. A row is kept only if the served model scored it normal, it is not
inside an alarm, and it is more than ``buffer.margin_rows`` rows away from one: not within ``margin_rows`` rows
before the first anomalous row of the run that opened an alarm, nor within ``margin_rows`` rows after the row that
cleared it. The alarm rule is the alarms' own (``services/worker/alarms.py``): it opens after ``alarms.open_after``
consecutive flagged rows and clears after ``alarms.clear_after`` consecutive normal ones. The gate applies it to the
flags itself, so a stream /detect request and device data are judged alike and in the order the stream table scored
them. A fault's first rows often still look normal, so normal rows are *held back*: each stream's last
``margin_rows`` rows (and any rows since the start of a run of flagged rows that may still open an alarm) wait,
and an alarm opening drops them. Flagged rows that open no alarm are never kept either, but they do not drop
their neighbours. A stream whose rows stop being consecutive (forgotten, evicted, restarted without its handover)
starts a new segment, and its held rows go.

What it gives. ``runs()`` the kept rows as training runs, one per contiguous segment of one stream (raw values in
``data.columns`` order, unlabelled); ``mark()`` / ``rows_added_since()`` a counter of rows ever kept, so the
federation loop can tell how many are new since its last round; ``recent_normal(n)`` the newest rows, for a
recalibrated threshold. At most ``buffer.max_rows`` rows are kept per worker; beyond that the oldest go. The rows
it keeps also go, with their scores, to ``on_keep`` (the drift tests, services/worker/drift.py), so a fault's onset
is never taken for a drift. Cost on the scoring path: ~17 µs for a one-row request, ~1.3 µs a row in a batch of 1000
(development machine, drift tests included).

On disk (``live-buffer/`` in the worker's state dir). Append-only chunk files of records, each record one batch
of consecutive rows of one segment: ``magic, length, CRC-32`` then a JSON header and the float32 rows. A thread
appends what was kept every ``FLUSH_S`` seconds and fsyncs the file (a per-request fsync would cost /detect more
than its scoring); a graceful stop flushes. A start reads every chunk, keeps the newest ``max_rows`` rows, and
appends to a new chunk. A record cut by a crash fails its length or CRC check and is dropped with the rest of its
file (the file is truncated there). So a kill -9 or a power loss loses at most the rows kept in the last
``FLUSH_S`` seconds and the rows still held back (``margin_rows`` per stream); it never leaves a file that stops a
start. Chunks whose rows all went out are removed.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import orjson

from services.data.source import Run
from services.worker.watchers import Scored

log = logging.getLogger("fedad.worker.buffer")
FOLDER = "live-buffer"
FLUSH_S = 2.0  # what a kill -9 may lose: the rows kept in the last FLUSH_S seconds
MAGIC = b"FLB1"
HEAD = struct.Struct("<4sII")  # magic, payload length, CRC-32 of the payload
MAX_RECORD = 64 << 20


@dataclass
class _Gate:
    """One stream's alarm rule and its held-back normal rows."""

    next_index: int | None = None  # stream row number the next row must have to continue the segment
    run: int = 0  # consecutive flagged rows while no alarm is open
    run_start: int = 0  # stream row number of the run's first row
    open: bool = False
    normal: int = 0  # consecutive normal rows while the alarm is open
    quiet_until: int = -1  # rows up to this number follow a cleared alarm: dropped
    held: collections.deque = field(default_factory=collections.deque)  # (row number, raw row, score in
    # thresholds, (model round, threshold)), oldest first
    segment: int | None = None  # the segment kept rows go to, None: the next kept row starts one
    last_kept: int | None = None  # row number of the segment's last kept row


class _Ring:
    """The kept rows, oldest first, with each row's segment number: an array that grows up to ``limit`` rows, then
    overwrites its oldest rows (no copy per row, no per-row object)."""

    def __init__(self, width: int, limit: int):
        self.width, self.limit = width, limit
        self.values = np.empty((min(limit, 1024), width), dtype=np.float32)
        self.segments = np.empty(min(limit, 1024), dtype=np.int64)
        self.start = 0  # position of the oldest row
        self.count = 0

    def append(self, values: np.ndarray, segment: int) -> None:
        if self.limit == 0:
            return
        values = values[max(0, len(values) - self.limit):]
        n = len(values)
        self._room(min(self.count + n, self.limit))
        size = len(self.values)
        at = (self.start + self.count) % size
        first = min(n, size - at)
        self.values[at:at + first], self.segments[at:at + first] = values[:first], segment
        if first < n:
            self.values[:n - first], self.segments[:n - first] = values[first:], segment
        overflow = self.count + n - size
        if overflow > 0:
            self.start, self.count = (self.start + overflow) % size, size
        else:
            self.count += n

    def _room(self, rows: int) -> None:
        if rows <= len(self.values):
            return
        values, segments = self.ordered()
        size = min(self.limit, max(rows, 2 * len(self.values)))
        self.values, self.segments = np.empty((size, self.width), dtype=np.float32), np.empty(size, dtype=np.int64)
        self.values[:self.count], self.segments[:self.count] = values, segments
        self.start = 0

    def ordered(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows and their segments, oldest first (views while the ring does not wrap)."""
        size, end = len(self.values), self.start + self.count
        if end <= size:
            return self.values[self.start:end], self.segments[self.start:end]
        return (np.concatenate([self.values[self.start:], self.values[:end - size]]),
                np.concatenate([self.segments[self.start:], self.segments[:end - size]]))

    def by_segment(self) -> list[tuple[int, np.ndarray]]:
        """(segment, its rows oldest first), segments in the order their kept rows begin."""
        values, segments = self.ordered()
        if not len(segments):
            return []
        order = np.argsort(segments, kind="stable")
        _, starts = np.unique(segments[order], return_index=True)
        groups = np.split(order, starts[1:])
        groups.sort(key=lambda g: g[0])  # by the position of each segment's oldest kept row
        return [(int(segments[g[0]]), values[g]) for g in groups]


class LiveBuffer:
    """The worker's kept live rows and the gates of its streams (at most ``max_streams``, least recently seen out).
    Thread-safe: ``observe`` runs under the stream table's lock, the readers and the flushing thread take its own."""

    def __init__(self, folder: Path | None, columns: list[str], max_rows: int, margin_rows: int, open_after: int,
                 clear_after: int, max_streams: int = 10_000, chunk_rows: int | None = None,
                 on_keep: Callable[[str, list[tuple]], None] | None = None):
        self.folder = Path(folder) if folder is not None else None
        self.columns, self.width = list(columns), len(columns)
        self.max_rows, self.margin = max_rows, margin_rows
        self.open_after, self.clear_after, self.max_streams = open_after, clear_after, max_streams
        self.chunk_rows = chunk_rows or max(1000, max_rows // 8)
        self._gates: collections.OrderedDict[str, _Gate] = collections.OrderedDict()
        self._ring = _Ring(self.width, max_rows)
        self._stream_of: dict[int, str] = {}  # segment number → stream
        self.added = 0  # rows ever kept (persisted): the loop's marks count from it
        # rows not kept, by reason: anomalous, alarm, margin, gap
        self.dropped: collections.Counter[str] = collections.Counter()
        self._next_segment = 0
        self._unwritten: list[list] = []  # [stream, segment, counter of the first row, [arrays], rows]: records
        self._chunks: list[tuple[Path, int]] = []  # (file, counter after its last row), oldest first
        self._chunk: Path | None = None
        self._chunk_rows = 0
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_keep = on_keep  # (stream, [(score / threshold, (model round, threshold))]) of the rows it keeps
        if self.folder is not None:
            self._load(self.folder)

    @classmethod
    def from_settings(cls, settings, state_dir: Path | None,
                      on_keep: Callable[[str, list[tuple]], None] | None = None) -> LiveBuffer | None:
        cfg = settings.buffer
        if not cfg.enabled:
            return None
        return cls(Path(state_dir) / FOLDER if state_dir is not None else None, settings.data.columns, cfg.max_rows,
                   cfg.margin_rows, settings.alarms.open_after, settings.alarms.clear_after,
                   max_streams=settings.streams.max_streams, on_keep=on_keep)

    # -- what the federation loop reads ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._ring.count

    def mark(self) -> int:
        return self.added

    def rows_added_since(self, mark: int) -> int:
        return max(0, self.added - int(mark))

    def runs(self, min_rows: int = 1) -> list[Run]:
        """The kept rows as runs, one per segment in the order their kept rows begin: ``live:<stream>:<segment>``,
        unlabelled, no clock."""
        with self._lock:
            return [Run(f"live:{self._stream_of[number]}:{number}", values)
                    for number, values in self._ring.by_segment() if len(values) >= max(1, min_rows)]

    def recent_normal(self, n: int) -> np.ndarray:
        """The newest ``n`` kept rows (fewer if the buffer holds fewer), any stream, oldest first."""
        with self._lock:
            values, _ = self._ring.ordered()
            return values[max(0, len(values) - n):].copy()

    def document(self) -> dict:
        """For /v1/status: counts, and the segments (the 20 that began last, newest first)."""
        with self._lock:
            _, segments = self._ring.ordered()
            numbers, first, counts = np.unique(segments, return_index=True, return_counts=True)
            newest = np.argsort(first)[::-1][:20]
            listed = [{"run": f"live:{self._stream_of[int(numbers[i])]}:{int(numbers[i])}",
                       "stream": self._stream_of[int(numbers[i])], "rows": int(counts[i])} for i in newest]
            held = sum(len(g.held) for g in self._gates.values())
            return {"rows": self._ring.count, "max_rows": self.max_rows, "margin_rows": self.margin,
                    "added": self.added, "held_back": held, "dropped": dict(self.dropped), "segments": listed}

    # -- the gate: a stream watcher (services/worker/watchers.py) ------------------------------------------------------
    def observe(self, scored: Scored) -> None:
        """Rows ``stream_rows, stream_rows + 1, ...`` of a stream as the served model scored them."""
        stream, first_index, rows, scores, model = (scored.stream, scored.stream_rows, scored.rows, scored.scores,
                                                     scored.model)
        flags = np.asarray(scored.flags, dtype=bool).tolist()
        threshold = float(model.threshold) if model is not None else 0.0
        ratios = (np.asarray(scores, dtype=np.float64) / threshold if threshold > 0 else np.zeros(len(rows))).tolist()
        model_id = (model.model_round, threshold) if model is not None else None
        with self._lock:
            gate = self._gate(stream)
            if gate.next_index is not None and first_index != gate.next_index:  # the stream started afresh
                self._restart(gate)
            last = first_index + len(rows) - 1
            if not gate.open and not gate.run and gate.quiet_until < first_index and not any(flags):
                # the common case: every row normal, no alarm or margin to mind; all but the last margin rows kept
                boundary = last + 1 - self.margin
                kept = self._commit(stream, gate, min(first_index, boundary))
                split = max(0, min(len(rows), boundary - first_index))
                if split:
                    self._keep_piece(stream, gate, first_index, rows[:split])
                    kept.extend(zip(ratios[:split], itertools.repeat(model_id)))
                gate.held.extend(zip(range(first_index + split, last + 1), rows[split:], ratios[split:],
                                     itertools.repeat(model_id)))
            else:
                for i, (row, flag, ratio) in enumerate(zip(rows, flags, ratios)):
                    self._step(gate, (first_index + i, row, ratio, model_id), flag)
                kept = self._commit(stream, gate, (gate.run_start if gate.run else last + 1) - self.margin)
            gate.next_index = last + 1
        if kept and self.on_keep is not None:
            self.on_keep(stream, kept)

    def _step(self, gate: _Gate, entry: tuple, flag: bool) -> None:
        index = entry[0]
        if gate.open:
            self.dropped["alarm"] += 1
            if flag:
                gate.normal = 0
                return
            gate.normal += 1
            if gate.normal >= self.clear_after:
                gate.open, gate.normal, gate.quiet_until = False, 0, index + self.margin
            return
        if flag:
            self.dropped["anomalous"] += 1
            gate.run += 1
            if gate.run == 1:
                gate.run_start = index
            if gate.run >= self.open_after:  # an alarm opens: its run and the rows before it within the margin go
                gate.open, gate.run, gate.normal = True, 0, 0
                while gate.held and gate.held[-1][0] >= gate.run_start - self.margin:
                    gate.held.pop()
                    self.dropped["margin"] += 1
            return
        gate.run = 0
        if index <= gate.quiet_until:
            self.dropped["margin"] += 1
            return
        gate.held.append(entry)

    def _commit(self, stream: str, gate: _Gate, before: int) -> list[tuple]:
        """Keep the held rows numbered below ``before``: no alarm can open within the margin after them any more.
        Returns their (score in thresholds, model) pairs."""
        if not gate.held or gate.held[0][0] >= before:
            return []
        batch: list[tuple] = []
        while gate.held and gate.held[0][0] < before:
            batch.append(gate.held.popleft())
        start = 0
        for i in range(1, len(batch) + 1):  # consecutive row numbers form one piece of one segment
            if i == len(batch) or batch[i][0] != batch[i - 1][0] + 1:
                piece = batch[start:i]
                self._keep_piece(stream, gate, piece[0][0],
                                 piece[0][1][None] if len(piece) == 1 else np.stack([entry[1] for entry in piece]))
                start = i
        return [(entry[2], entry[3]) for entry in batch]

    def _keep_piece(self, stream: str, gate: _Gate, first: int, values: np.ndarray) -> None:
        """Consecutive rows from row number ``first``: they continue the stream's segment, or begin one."""
        if gate.segment is None or gate.last_kept != first - 1:
            gate.segment = self._next_segment
            self._next_segment += 1
        self._keep(stream, gate.segment, values)
        gate.last_kept = first + len(values) - 1

    def _keep(self, stream: str, number: int, values: np.ndarray) -> None:
        if self.max_rows == 0:
            return
        self._ring.append(values, number)
        self._stream_of[number] = stream
        last = self._unwritten[-1] if self._unwritten else None
        if last is not None and last[1] == number and last[2] + last[4] == self.added:  # one record, not one a row
            last[3].append(values)
            last[4] += len(values)
        else:
            self._unwritten.append([stream, number, self.added, [values], len(values)])
        self.added += len(values)

    def _restart(self, gate: _Gate) -> None:
        self.dropped["gap"] += len(gate.held)
        gate.held.clear()
        gate.run = gate.normal = 0
        gate.open, gate.quiet_until, gate.segment, gate.last_kept = False, -1, None, None

    def _gate(self, stream: str) -> _Gate:
        gate = self._gates.get(stream)
        if gate is None:
            gate = self._gates[stream] = _Gate()
            while len(self._gates) > self.max_streams:
                _, gone = self._gates.popitem(last=False)
                self.dropped["gap"] += len(gone.held)
        else:
            self._gates.move_to_end(stream)
        return gate

    # -- on disk -----------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Append what is kept every FLUSH_S seconds, on a thread of its own."""
        if self.folder is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="live-buffer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Graceful stop: write what is kept (rows still held back are not: their fate is unknown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_S):
            try:
                self.flush()
            except OSError as exc:  # a full disk: the rows stay in memory and are tried again
                log.warning("cannot write the live buffer (%s): retrying in %.0f s", exc, FLUSH_S)

    def flush(self) -> None:
        """Append the rows kept since the last flush to the current chunk and fsync it; remove chunks gone out."""
        folder = self.folder
        if folder is None:
            return
        with self._write_lock:
            with self._lock:
                pending, self._unwritten = self._unwritten, []
                oldest_kept = self.added - self._ring.count  # counter of the oldest row still kept
                if len(self._stream_of) > 2 * len(self._gates) + 1000:  # forget the streams of segments gone out
                    present = set(np.unique(self._ring.ordered()[1]).tolist())
                    present.update(g.segment for g in self._gates.values() if g.segment is not None)
                    self._stream_of = {k: v for k, v in self._stream_of.items() if k in present}
            if pending:
                try:
                    self._append(folder, pending)
                except OSError:
                    with self._lock:
                        self._unwritten = pending + self._unwritten
                    raise
            while len(self._chunks) > 1 and self._chunks[0][1] <= oldest_kept:
                path, _ = self._chunks.pop(0)
                path.unlink(missing_ok=True)

    def _append(self, folder: Path, pending: list) -> None:
        data = bytearray()
        for stream, number, counter, parts, n in pending:
            values = np.concatenate(parts) if len(parts) > 1 else parts[0]
            payload = orjson.dumps({"stream": stream, "segment": number, "counter": counter, "rows": n}) \
                + b"\0" + np.ascontiguousarray(values, dtype="<f4").tobytes()
            data += HEAD.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
        chunk = self._chunk
        if chunk is None or self._chunk_rows >= self.chunk_rows:
            chunk = self._new_chunk(folder)
        with open(chunk, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self._chunk_rows += sum(item[4] for item in pending)
        self._chunks[-1] = (chunk, pending[-1][2] + pending[-1][4])

    def _new_chunk(self, folder: Path) -> Path:
        number = int(self._chunks[-1][0].stem.split("-")[1]) + 1 if self._chunks else 0
        chunk = self._chunk = folder / f"chunk-{number:08d}.bin"
        chunk.touch()
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)  # the new file's name survives a power loss
        finally:
            os.close(handle)
        self._chunk_rows = 0
        self._chunks.append((chunk, self.added))
        return chunk

    def _load(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.glob("chunk-*.bin")):
            for stream, number, counter, values in self._read(path):
                if self.max_rows:
                    self._ring.append(values, number)  # the ring keeps the newest max_rows
                    self._stream_of[number] = stream
                self.added = counter + len(values)
                self._next_segment = max(self._next_segment, number + 1)
            self._chunks.append((path, self.added))
        if self._chunks:
            log.info("live buffer: %d row(s) kept from before", self._ring.count)
        self.flush()  # removes chunks whose rows all went out

    def _read(self, path: Path):
        """Yield a chunk's records; a record cut short or corrupted ends the file (truncated there)."""
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            problem = None
            if len(data) - offset < HEAD.size:
                problem = "a cut header"
            else:
                magic, length, crc = HEAD.unpack_from(data, offset)
                payload = data[offset + HEAD.size:offset + HEAD.size + length]
                if magic != MAGIC or length > MAX_RECORD:
                    problem = "a bad header"
                elif len(payload) != length or zlib.crc32(payload) != crc:
                    problem = "a cut or corrupted record"
            if problem is None:
                try:
                    header, _, raw = payload.partition(b"\0")
                    meta = orjson.loads(header)
                    values = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(int(meta["rows"]), -1)
                    if values.shape[1] != self.width:
                        log.warning("live buffer %s was kept with %d columns, not %d: dropped", path.name,
                                    values.shape[1], self.width)
                        return
                    yield str(meta["stream"]), int(meta["segment"]), int(meta["counter"]), values
                    offset += HEAD.size + length
                    continue
                except (ValueError, KeyError, TypeError) as exc:
                    problem = f"an unreadable record ({exc})"
            log.warning("live buffer %s: %s at byte %d (a crash cut it): the rest of the file is dropped",
                        path.name, problem, offset)
            os.truncate(path, offset)
            return
