"""The aggregator's state on disk, written so that kill -9 at any instant leaves the old or the new state.

Layout of the state dir:
  state.json                 run id, rounds done, the round target and what opened it, scaler, joined workers,
                             history, skipped scheduled rounds, hash of the global weights
  global-<round>.f32         global weights after <round> rounds (written before state.json names it)
  pending/<round>.log        the accepted updates of the open round, appended one record each (below)

Each accepted update is appended to its round's log and made durable with one fdatasync before it is acknowledged,
instead of two files written atomically (temp → fsync → rename → fsync of the folder, twice: four fsyncs, two
renames, and two unlinks when the round closes). On a busy disk fsync is the whole cost of a round with many
workers (BENCHMARKS.md, benchmarks/round.py). A record is one JSON header line (worker, sample_count, loss, sha256,
bytes) and the raw body. Records are written at the end of the last complete one, so a write cut short (kill -9,
full disk) leaves at most a partial record after the complete ones, which reading ignores (and the next record
overwrites); its upload was never acknowledged, so its worker sends it again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from services import atomic
from services.protocol.codec import CodecError, content_hash, decode_weights, encode_weights

MAX_HEADER = 4096  # bytes of one record's header line
_sync = getattr(os, "fdatasync", os.fsync)


class AggregatorStore:
    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic.remove_stale_temps(self.dir)
        self._log: tuple[int, int] | None = None  # the open round's log: (round, end of its complete records)

    def load(self, n_params: int) -> tuple[dict, np.ndarray] | None:
        """The last committed state and its global weights, or None on a first start."""
        state = atomic.read_json(self.dir / "state.json")
        if state is None:
            return None
        atomic.remove_unreferenced(self.dir, state["files"])
        body = (self.dir / state["files"]["global.f32"]).read_bytes()
        return state, decode_weights(body, n_params, state["global_sha256"])

    def commit(self, state: dict, global_weights: np.ndarray) -> dict:
        body = encode_weights(global_weights)
        state = {**state, "global_sha256": content_hash(body)}
        return atomic.commit_snapshot(self.dir, state["rounds_done"], {"global.f32": body}, state)

    def commit_state(self, state: dict) -> dict:
        """Persist a change of ``state.json`` alone (a round opened, a scheduled round skipped): the global weights
        it names stay as they are, so nothing but one small atomic write happens."""
        if "files" not in state:
            raise ValueError("commit_state needs a state that commit() wrote before")
        atomic.write_json(self.dir / "state.json", state)
        return state

    def save_update(self, round_no: int, worker_id: str, body: bytes, meta: dict) -> None:
        """Append the update to its round's log and fdatasync it: durable when this returns, or OSError. The file
        is not kept open between updates (an open file would keep its disk from being remounted read-only)."""
        end = self._log_end(round_no)
        header = json.dumps({"worker": worker_id, **meta, "bytes": len(body)}, sort_keys=True).encode() + b"\n"
        record = header + body
        fd = os.open(self._log_path(round_no), os.O_WRONLY)
        try:
            written = 0
            while written < len(record):
                written += os.pwrite(fd, record[written:], end + written)
            _sync(fd)
        finally:
            os.close(fd)
        self._log = (round_no, end + len(record))

    def pending_updates(self, round_no: int, n_params: int) -> list[tuple[str, np.ndarray, dict]]:
        """Updates accepted for ``round_no`` before a restart, so no completed upload is lost."""
        found = {worker_id: (weights, meta) for worker_id, weights, meta, _ in self._read_log(round_no, n_params)
                 if weights is not None}  # never None when n_params is given
        legacy = self.dir / "pending" / str(round_no)  # one folder per round, two files per update (before the log)
        for meta_file in sorted(legacy.glob("*.json")):
            meta = atomic.read_json(meta_file)
            weights_file = meta_file.with_suffix(".f32")
            if meta is None or not weights_file.exists() or meta_file.stem in found:
                continue
            found[meta_file.stem] = (decode_weights(weights_file.read_bytes(), n_params, meta["sha256"]), meta)
        return [(worker_id, weights, meta) for worker_id, (weights, meta) in sorted(found.items())]

    def pending_workers(self, round_no: int) -> list[str]:
        """Ids of the workers whose update for ``round_no`` is on disk (without decoding the weights)."""
        ids = {worker_id for worker_id, *_ in self._read_log(round_no, None)}
        ids |= {f.stem for f in (self.dir / "pending" / str(round_no)).glob("*.json")}
        return sorted(ids)

    def drop_pending(self, up_to_round: int) -> None:
        if self._log is not None and self._log[0] <= up_to_round:
            self._log = None
        for entry in (self.dir / "pending").glob("*"):
            name = entry.name.removesuffix(".log")
            if not name.isdigit() or int(name) > up_to_round:
                continue
            if entry.is_dir():
                for f in entry.iterdir():
                    f.unlink(missing_ok=True)
                entry.rmdir()
            else:
                entry.unlink(missing_ok=True)

    # -- the log ------------------------------------------------------------------------------------------------------
    def _log_path(self, round_no: int) -> Path:
        return self.dir / "pending" / f"{round_no}.log"

    def _log_end(self, round_no: int) -> int:
        """Where the round's next record goes: after its last complete one (the log is created if need be)."""
        if self._log is not None and self._log[0] == round_no:
            return self._log[1]
        self._log = None
        path = self._log_path(round_no)
        if not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _sync_folder(self.dir)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
            _sync_folder(path.parent)  # the log's name is durable before any record in it is acknowledged
        records = self._read_log(round_no, None)
        self._log = (round_no, records[-1][3] if records else 0)
        return self._log[1]

    def _read_log(self, round_no: int, n_params: int | None) -> list[tuple[str, np.ndarray | None, dict, int]]:
        """The complete records of a round's log: (worker, weights or None, meta, offset after the record)."""
        try:
            data = self._log_path(round_no).read_bytes()
        except FileNotFoundError:
            return []
        records, offset = [], 0
        while True:
            newline = data.find(b"\n", offset, offset + MAX_HEADER)
            if newline < 0:
                break
            try:
                meta = json.loads(data[offset:newline])
                size, worker_id, sha = int(meta.pop("bytes")), str(meta.pop("worker")), str(meta["sha256"])
            except (ValueError, KeyError, TypeError):
                break
            body = data[newline + 1:newline + 1 + size]
            if len(body) != size or content_hash(body) != sha:
                break  # a record cut short: the complete ones end here
            weights = None
            if n_params is not None:
                try:
                    weights = decode_weights(body, n_params, body_hash=sha)
                except CodecError:
                    break
            offset = newline + 1 + size
            records.append((worker_id, weights, meta, offset))
        return records


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
