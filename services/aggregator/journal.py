"""Durable state that grows with the fleet, written by group commit: an append-only log, one fdatasync per batch.

Why: a fleet joins, enrolls and reports by the thousand. Rewriting a file that holds every node on each request makes
each request cost O(nodes) (the run state did: 2,000 joins took 414 s, the last ones 0.3 s each; BENCHMARKS.md), and
an fsync per request makes the disk the limit. Here a request appends one line and waits until a batch holding it is
on disk; the requests that arrive while one batch is being synced form the next one (group commit, as databases do
for their write-ahead log). A request is answered only once its line is durable, so kill -9 loses nothing that was
acknowledged.

``GroupCommit`` is the batching; ``Journal`` a keyed state on top of it (``key → value``, a null value deletes).
Each line is ``<crc32 hex> <json>``. On open the log is replayed: a last line cut short by a crash is cut off (it was
never acknowledged), a damaged line elsewhere is named with its place (file:line) in the log and counted, never
taken. The log is compacted (one line per live key: temp file, fsync, rename) when it opens and whenever it has grown
to twice its live size, so its length stays proportional to the state, and compaction's cost, amortised, is O(1) per
write.

Without a running event loop (tests, in-process benchmarks) every write is synced before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from services import atomic

log = logging.getLogger("fedad.aggregator")
_sync = getattr(os, "fdatasync", os.fsync)
COMPACT_MIN_BYTES = 1 << 20  # below this a log is never compacted while running: it is cheap to replay
_MISSING = object()


class GroupCommit:
    """Writes queued records in batches: ``write_batch(records)`` must make them durable (or raise OSError).

    ``submit`` from the event loop's thread returns a future that resolves once the record is durable, or fails with
    the OSError of its batch (then ``undo`` of every record in the batch has run, newest first). Without a running
    loop, ``submit`` writes at once and raises on failure.
    """

    def __init__(self, write_batch: Callable[[list], None], after_batch: Callable[[], None] | None = None):
        self._write_batch = write_batch
        self._after_batch = after_batch  # on the loop's thread, once a batch is durable and nothing is queued
        self._queue: list[tuple[Any, asyncio.Future, Callable[[], None] | None]] = []
        self._lock = threading.Lock()  # one batch at a time, in the order they were taken
        self._task: asyncio.Task | None = None
        self.batches = 0  # batches written (each one fdatasync)
        self.records = 0  # records written

    def submit(self, record, undo: Callable[[], None] | None = None) -> asyncio.Future | None:
        return self.submit_many([record], [undo])

    def submit_many(self, records: list, undos: Sequence[Callable[[], None] | None]) -> asyncio.Future | None:
        """Several records in one batch; the future resolves once all are durable."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write(records)
            return None
        futures = []
        for record, undo in zip(records, undos):
            future = loop.create_future()
            self._queue.append((record, future, undo))
            futures.append(future)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        if len(futures) == 1:
            return futures[0]
        together = asyncio.gather(*futures)
        return together

    def flush(self) -> None:
        """Write what is queued now, from the loop's thread (waits for a batch already being written). Raises the
        OSError of a failed write after undoing its records."""
        batch, self._queue = self._queue, []
        if batch:
            self._finish(batch, self._attempt(batch))

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            error = None
            try:
                await asyncio.to_thread(self._write, [record for record, _, _ in batch])
            except OSError as exc:
                error = exc
            with contextlib.suppress(OSError):  # a failed batch is answered below; the next one tries again
                self._finish(batch, error)
        if self._after_batch is not None:
            self._after_batch()

    def _attempt(self, batch) -> OSError | None:
        try:
            self._write([record for record, _, _ in batch])
        except OSError as exc:
            return exc
        return None

    def _finish(self, batch, error: OSError | None) -> None:
        if error is not None:
            for _, _, undo in reversed(batch):
                if undo is not None:
                    undo()
        for _, future, _ in batch:
            if not future.done():
                future.set_exception(error) if error is not None else future.set_result(None)
        if error is not None:
            raise error

    def _write(self, records: list) -> None:
        with self._lock:
            self._write_batch(records)
            self.batches += 1
            self.records += len(records)


async def durable(*futures: asyncio.Future | None) -> None:
    """Wait until every write behind ``futures`` is on disk; raises the OSError of one that failed."""
    pending = [f for f in futures if f is not None]
    if pending:
        await asyncio.gather(*pending)


class Journal:
    """``entries``: key → value (a JSON object), kept in memory and as an append-only log at ``path``.

    ``put`` changes the entry at once, so the next request sees it, and returns the future of its line (None when it
    was written synchronously). If that write fails, the entry goes back to what it was.
    """

    def __init__(self, path: Path, label: str | None = None):
        self.path = Path(path)
        self.label = label or self.path.name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, dict] = {}
        self.damaged_lines = 0  # lines that failed their check on the last open (named in the log)
        self._size = 0
        self._live_bytes = 0  # the size of the log once compacted: the latest line of each live key
        self._line_bytes: dict[str, int] = {}
        self._load()
        self._commit = GroupCommit(self._append, after_batch=self._maybe_compact)
        if self.damaged_lines:  # kept for whoever wants to see what was damaged, before compaction drops it
            atomic.write_bytes(self.path.with_name(self.path.name + ".damaged"), self.path.read_bytes())
        if self._size > max(2 * self._live_bytes, 4096) or self.damaged_lines:
            self.compact()

    # -- reading -------------------------------------------------------------------------------------------------------
    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def items(self) -> Iterator[tuple[str, dict]]:
        return iter(self.entries.items())

    @property
    def batches(self) -> int:
        return self._commit.batches

    @property
    def records(self) -> int:
        return self._commit.records

    # -- writing -------------------------------------------------------------------------------------------------------
    def put(self, key: str, value: dict | None) -> asyncio.Future | None:
        """Set (or with None delete) ``key``; durable once the returned future resolves."""
        return self.put_many({key: value})

    def put_many(self, changes: Mapping[str, dict | None]) -> asyncio.Future | None:
        """Several keys at once, written as one batch."""
        if not changes:
            return None
        lines, undos = [], []
        for key, value in changes.items():
            previous = self.entries.get(key, _MISSING)
            previous_bytes = self._line_bytes.get(key)
            line = _line(key, value)
            self._set(key, value, len(line))
            lines.append(line)
            undos.append(self._undo(key, previous, previous_bytes))
        try:
            return self._commit.submit_many(lines, undos)
        except OSError:
            for undo in reversed(undos):
                undo()
            raise

    def _undo(self, key: str, previous, previous_bytes: int | None) -> Callable[[], None]:
        def undo() -> None:
            self._set(key, None if previous is _MISSING else previous, previous_bytes)

        return undo

    def flush(self) -> None:
        self._commit.flush()

    def compact(self) -> None:
        """Rewrite the log as one line per live key (temp file, fsync, rename): the replay and the file stay
        proportional to the state. Safe at any moment: the old log stays whole until the rename."""
        with self._commit._lock:
            lines = [_line(key, value) for key, value in self.entries.items()]
            data = b"".join(lines)
            atomic.write_bytes(self.path, data)
            self._size = len(data)
            self._line_bytes = {key: len(line) for key, line in zip(self.entries, lines)}
            self._live_bytes = self._size

    def _set(self, key: str, value: dict | None, line_bytes: int | None) -> None:
        """The entry and the live-size estimate (a compacted log holds each live key's latest line)."""
        self._live_bytes -= self._line_bytes.pop(key, 0)
        if value is None:
            self.entries.pop(key, None)
        else:
            self.entries[key] = value
            if line_bytes:
                self._line_bytes[key] = line_bytes
                self._live_bytes += line_bytes

    def _append(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            _sync(fd)
        finally:
            os.close(fd)
        self._size += len(data)

    def _maybe_compact(self) -> None:
        """After a batch, on the loop's thread with nothing queued: compact once the log is twice its live size."""
        if self._size > max(COMPACT_MIN_BYTES, 2 * self._live_bytes):
            try:
                self.compact()
            except OSError as exc:  # the log itself is intact: compaction waits for the next batch
                log.warning("cannot compact %s: %s", self.path, exc)

    # -- replay --------------------------------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a batch cut short by a crash: never acknowledged, so never taken
            log.warning("%s: %d bytes after the last complete line were cut off (a write interrupted by a crash)",
                        self.path, len(data) - end)
            with open(self.path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        self._size = end
        for number, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
            parsed = _parse(line)
            if parsed is None:
                self.damaged_lines += 1
                log.error("%s:%d: damaged line skipped (checksum or JSON): %r", self.path, number, line[:120])
                continue
            key, value = parsed
            self._set(key, value, len(line) + 1)


def _line(key: str, value: dict | None) -> bytes:
    body = orjson.dumps({"k": key, "v": value})
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _parse(line: bytes) -> tuple[str, dict | None] | None:
    crc, _, body = line.partition(b" ")
    try:
        if len(crc) != 8 or int(crc, 16) != zlib.crc32(body):
            return None
        record = orjson.loads(body)
        key, value = record["k"], record["v"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(key, str) or not (value is None or isinstance(value, dict)):
        return None
    return key, value
