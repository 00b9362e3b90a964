"""The aggregator's state on disk, written so that kill -9 at any instant leaves the old or the new state.

Layout of the state dir:
  state.json                 run id, rounds done, the round target and what opened it, scaler, joined workers,
                             history, skipped scheduled rounds, hash of the global weights
  global-<round>.f32         global weights after <round> rounds (written before state.json names it)
  pending/<round>.log        the accepted updates of the open round, appended one record each (below)
  members.log, reports.log,  the joined workers, their latest reports, the enrolled nodes: keyed journals
  nodes.log                  (services/aggregator/journal.py)
  bases/<round>.f32          federation.mode async: the recent global models updates may still be based on
  rounds.log                 the last closed rounds' records with every contributor (a journal), when there were
                             too many for the history in state.json
  history.jsonl              history records older than the ones state.json keeps
  outbox.json, outbox-<r>.f32  a site aggregator's aggregate for its upstream, until the upstream has taken it

Each accepted update is appended to its round's log and made durable before it is acknowledged. The appends of
updates that arrive together share one fdatasync (group commit): on a busy disk fsync is the whole cost of a round
with many workers (BENCHMARKS.md, benchmarks/round.py and benchmarks/fleet.py). A record is one JSON header line
(worker, sample_count, loss, sha256, bytes) and the raw body. Records are written at the end of the last complete
one, so a write cut short (kill -9, full disk) leaves at most a partial record after the complete ones, which reading
ignores (and the next record overwrites); its upload was never acknowledged, so its worker sends it again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import orjson

from services import atomic
from services.aggregator.journal import GroupCommit, Journal
from services.protocol.codec import CodecError, content_hash, decode_weights, encode_weights

MAX_HEADER = 4096  # bytes of one record's header line
ROUNDS_KEPT = 1000  # closed rounds whose full record (every contributor) rounds.log keeps
_sync = getattr(os, "fdatasync", os.fsync)


class AggregatorStore:
    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic.remove_stale_temps(self.dir)
        self._log: tuple[int, int] | None = None  # the open round's log: (round, end of its complete records)
        self._updates = GroupCommit(self._append_updates)  # accepted updates, one fdatasync per batch
        self._round_log: Journal | None = None  # rounds.log, opened when first needed

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

    def save_update(self, round_no: int, worker_id: str, body: bytes, meta: dict):
        """Append the update to its round's log: durable when this returns (no event loop running) or when the
        returned future resolves (group commit with the updates that arrive meanwhile); OSError if the disk
        refused."""
        header = orjson.dumps({"worker": worker_id, **meta, "bytes": len(body)}, option=orjson.OPT_SORT_KEYS) + b"\n"
        return self._updates.submit((round_no, header + body))

    def flush_updates(self) -> None:
        """Make every update queued so far durable now (before the round they belong to is committed)."""
        self._updates.flush()

    def _append_updates(self, records: list[tuple[int, bytes]]) -> None:
        """Write a batch of records at the end of their rounds' logs, one fdatasync per log. The file is not kept
        open between batches (an open file would keep its disk from being remounted read-only)."""
        by_round: dict[int, list[bytes]] = {}
        for round_no, record in records:
            by_round.setdefault(round_no, []).append(record)
        for round_no, parts in by_round.items():
            end = self._log_end(round_no)
            data = b"".join(parts)
            fd = os.open(self._log_path(round_no), os.O_WRONLY)
            try:
                written = 0
                while written < len(data):
                    written += os.pwrite(fd, data[written:], end + written)
                _sync(fd)
            finally:
                os.close(fd)
            self._log = (round_no, end + len(data))

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
        with self._updates._lock:  # not while a batch is being written
            self._drop_pending(up_to_round)

    def _drop_pending(self, up_to_round: int) -> None:
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

    # -- async: the recent global models -----------------------------------------------------------------------------
    def keep_base(self, round_no: int, weights: np.ndarray, keep_from: int, current: str | None = None) -> None:
        """Keep global model ``round_no`` while updates may be based on it; drop those older than ``keep_from``.
        ``current``: the file state.json names for it, already durable: linked, not written again."""
        folder = self.dir / "bases"
        if not folder.exists():
            folder.mkdir()
            _sync_folder(self.dir)
        target = folder / f"{round_no}.f32"
        try:
            if current is None:
                raise FileNotFoundError(round_no)
            target.unlink(missing_ok=True)
            os.link(self.dir / current, target)
            _sync_folder(folder)
        except OSError:  # no link (another file system, a fresh start): a copy
            atomic.write_bytes(target, encode_weights(weights))
        for old in folder.glob("*.f32"):
            if old.stem.isdigit() and int(old.stem) < keep_from:
                old.unlink(missing_ok=True)

    def bases(self, n_params: int) -> dict[int, np.ndarray]:
        found = {}
        for path in (self.dir / "bases").glob("*.f32"):
            if path.stem.isdigit():
                try:
                    found[int(path.stem)] = decode_weights(path.read_bytes(), n_params)
                except CodecError:  # written atomically, so only a foreign file: an update based on it is refused
                    continue
        return found

    # -- closed rounds beyond what state.json keeps ---------------------------------------------------------------
    def save_round(self, round_no: int, record: dict) -> None:
        """A closed round's record with every contributor, durable before state.json names it: one line in
        rounds.log (the last ROUNDS_KEPT rounds; older ones are dropped and compacted away)."""
        rounds = self._rounds()
        changes: dict[str, dict | None] = {str(round_no): record}
        if round_no > ROUNDS_KEPT:
            changes[str(round_no - ROUNDS_KEPT)] = None
        rounds.put_many(changes)
        rounds.flush()

    def round_record(self, round_no: int) -> dict | None:
        return self._rounds().get(str(round_no))

    def _rounds(self) -> Journal:
        if self._round_log is None:
            self._round_log = Journal(self.dir / "rounds.log")
        return self._round_log

    def archive_history(self, records: list[dict]) -> None:
        """Append history records that state.json no longer keeps (oldest first), synced."""
        with open(self.dir / "history.jsonl", "ab") as f:
            f.write(b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    # -- a site's aggregate on its way upstream ----------------------------------------------------------------------
    def save_outbox(self, meta: dict, weights: np.ndarray) -> None:
        """The site's aggregate of ``meta["round"]``: weights first, then the meta naming them (a crash leaves the
        old outbox or the new one)."""
        body = encode_weights(weights)
        name = f"outbox-{meta['round']}.f32"
        atomic.write_bytes(self.dir / name, body)
        atomic.write_json(self.dir / "outbox.json", {**meta, "file": name, "sha256": content_hash(body)})

    def outbox(self, n_params: int) -> tuple[dict, np.ndarray] | None:
        meta = atomic.read_json(self.dir / "outbox.json")
        if meta is None:
            return None
        try:
            return meta, decode_weights((self.dir / meta["file"]).read_bytes(), n_params, meta["sha256"])
        except (OSError, CodecError):
            return None

    def drop_outbox(self) -> None:
        meta = atomic.read_json(self.dir / "outbox.json")
        (self.dir / "outbox.json").unlink(missing_ok=True)
        if meta is not None:
            (self.dir / meta["file"]).unlink(missing_ok=True)

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
