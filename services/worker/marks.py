"""Which of its rows a worker has trained on already, so it can tell the aggregator how many are new.

Marks, not copies: the training rows per source run (by run name) and the live buffer's row counter at the last
round this worker trained. Rows beyond them are new: a file that appeared in the partition, rows the served model
scored normal since. Persisted (atomic JSON in the state folder) so a restart neither forgets nor double-counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from services import atomic
from services.data.node import NodeData

FILE = "trained.json"


@dataclass
class TrainedMarks:
    run_id: str | None = None  # the federation the marks belong to; another run starts from nothing
    source_rows: dict[str, int] = field(default_factory=dict)  # training rows per source run at the last round
    buffer_mark: int | None = None  # the live buffer's counter then (None: no buffer rows trained on yet)
    last_round: int | None = None  # the last round this worker trained for (its update taken)
    rounds: int = 0  # rounds this worker's updates were taken in, across restarts

    def new_rows(self, node: NodeData, buffer) -> int:
        """Source training rows beyond the marks, plus live rows committed to ``buffer`` since (None: no buffer)."""
        rows = node.rows_new_since(self.source_rows)
        if buffer is not None:
            rows += len(buffer) if self.buffer_mark is None else min(buffer.rows_added_since(self.buffer_mark),
                                                                     len(buffer))
        return rows

    def trained(self, round_no: int, node: NodeData, buffer_mark: int | None) -> None:
        """The rows of ``node`` (source runs) and of the buffer up to ``buffer_mark`` are in round ``round_no``."""
        self.source_rows = node.train_counts()
        self.buffer_mark = buffer_mark if buffer_mark is not None else self.buffer_mark
        self.last_round = round_no
        self.rounds += 1

    @classmethod
    def load(cls, folder: Path) -> TrainedMarks | None:
        saved = atomic.read_json(Path(folder) / FILE)
        if not isinstance(saved, dict):
            return None
        return cls(**{k: v for k, v in saved.items() if k in cls.__dataclass_fields__})

    def save(self, folder: Path) -> None:
        atomic.write_json(Path(folder) / FILE, asdict(self))
