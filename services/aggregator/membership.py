"""The workers that joined the run, who trains which round, and how fairly.

Members live in ``members.log`` (a journal: services/aggregator/journal.py), one entry per worker: its role, its
declared sample count, its scaling statistics until the federated scaler is frozen (they are merged once, then
dropped: a late joiner's statistics never enter a frozen scaler), and the last round it trained in with its loss.
A join appends one line; nothing rewrites the whole table.

Sampling (``federation.clients_per_round``): round r trains on a random sample of the live training nodes drawn by
``random.Random(f"{sample_seed}/{r}")`` over their sorted ids, so the same seed, round and live set give the same
sample in any process (tests predict it) while successive rounds draw afresh. Uniform sampling without replacement is
what FedAvg assumes (McMahan et al. 2017, "a random fraction C of clients"); the fairness report shows how it spreads
over the fleet: rounds since each node last trained.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable
from pathlib import Path

from services.aggregator.journal import Journal

log = logging.getLogger("fedad.aggregator")
FAIRNESS_BINS = ((0, 0), (1, 1), (2, 4), (5, 9), (10, 19), (20, None))  # rounds since a node last trained


class Members:
    def __init__(self, state_dir: Path):
        self.journal = Journal(Path(state_dir) / "members.log")
        self.trainers: set[str] = {k for k, v in self.journal.items() if v.get("role", "train") == "train"}

    def __contains__(self, worker_id: str) -> bool:
        return worker_id in self.journal

    def __len__(self) -> int:
        return len(self.journal)

    def get(self, worker_id: str) -> dict | None:
        return self.journal.get(worker_id)

    def items(self):
        return self.journal.items()

    def put(self, worker_id: str, entry: dict) -> asyncio.Future | None:
        if entry.get("role", "train") == "train":
            self.trainers.add(worker_id)
        else:
            self.trainers.discard(worker_id)
        try:
            write = self.journal.put(worker_id, entry)
        except OSError:
            self._reindex(worker_id)
            raise
        if write is not None:
            write.add_done_callback(lambda f: self._reindex(worker_id) if _failed(f) else None)
        return write

    def remove(self, worker_id: str) -> asyncio.Future | None:
        self.trainers.discard(worker_id)
        if worker_id not in self.journal:
            return None
        return self.journal.put(worker_id, None)

    def trained(self, contributions: dict[str, float], round_no: int) -> None:
        """Record the round each contributor last trained in (and its loss): one line each, one batch. Advice for
        the fairness report, so nobody waits for it; a failed write is logged (the model itself is committed)."""
        changes = {}
        for worker_id, loss in contributions.items():
            entry = self.journal.get(worker_id)
            if entry is not None:
                changes[worker_id] = {**entry, "last_round": round_no, "last_loss": loss}
        try:
            write = self.journal.put_many(changes)
        except OSError as exc:
            log.warning("cannot record who trained round %d: %s", round_no, exc)
            return
        if write is not None:
            write.add_done_callback(lambda f: log.warning("cannot record who trained round %d: %s", round_no,
                                                          f.exception()) if _failed(f) else None)

    def drop_statistics(self) -> None:
        """The scaler is frozen: nobody's statistics are needed any more (the log loses them at its next
        compaction)."""
        for worker_id, entry in list(self.journal.items()):
            if "stats" in entry:
                self.journal.entries[worker_id] = {k: v for k, v in entry.items() if k != "stats"}

    def flush(self) -> None:
        self.journal.flush()

    def _reindex(self, worker_id: str) -> None:
        entry = self.journal.get(worker_id)
        if entry is not None and entry.get("role", "train") == "train":
            self.trainers.add(worker_id)
        else:
            self.trainers.discard(worker_id)


def _failed(future: asyncio.Future) -> bool:
    return not future.cancelled() and future.exception() is not None


def draw_sample(candidates: Iterable[str], size: int, seed: int, round_no: int) -> list[str]:
    """``size`` of ``candidates`` at random, reproducibly for (``seed``, ``round_no``) and the candidates."""
    pool = sorted(candidates)
    if size >= len(pool):
        return pool
    return sorted(random.Random(f"{seed}/{round_no}").sample(pool, size))


def fairness(members: Members, rounds_done: int, sampling: bool) -> dict:
    """Rounds since each training node last trained, as a histogram, the worst and the never-trained count."""
    bins = {_label(lo, hi): 0 for lo, hi in FAIRNESS_BINS}
    never, worst = 0, 0
    for worker_id in members.trainers:
        last = (members.get(worker_id) or {}).get("last_round")
        if last is None:
            never += 1
            continue
        since = max(0, rounds_done - last)
        worst = max(worst, since)
        for lo, hi in FAIRNESS_BINS:
            if since >= lo and (hi is None or since <= hi):
                bins[_label(lo, hi)] += 1
                break
    return {"sampling": sampling, "trainers": len(members.trainers), "rounds_done": rounds_done,
            "rounds_since_trained": bins, "never_trained": never, "max_rounds_since_trained": worst}


def _label(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else str(lo) if lo == hi else f"{lo}-{hi}"
