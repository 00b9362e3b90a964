"""Splitting one data set across several edge nodes, for data that come as a single file (Shuttle, a plant export).

Federated benchmarks split such a file's rows over N nodes either at random (every node sees the same mix) or skewed:
for each value of a column (typically the label, or a machine mode) the rows with that value are shared between the
nodes in proportions drawn from a Dirichlet(alpha) distribution, so nodes see different mixes (small alpha: very
different; large alpha: close to random). Both are deterministic for a seed, every row goes to exactly one node, and
each node keeps its rows in file order (time order, if the data has one).

A node's share is decided by its position among the workers that name the same partition (the first such worker gets
part 0), so the same config gives every node a disjoint piece without any coordination between them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from services.config import Settings, WorkerSettings
from services.data.source import DataError, Run, Source

MAX_LEVELS = 32  # a column with more distinct values is cut into quantile bins before the Dirichlet draw
QUANTILE_BINS = 10
MAX_DRAWS = 1000  # Dirichlet draws tried until every node has at least one row


@dataclass(frozen=True)
class SplitPlan:
    """How a single data set is shared between ``parts`` nodes."""

    method: Literal["random", "dirichlet"] = "random"
    column: str | None = None  # dirichlet: the column whose value mix differs between nodes
    alpha: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.method not in ("random", "dirichlet"):
            raise DataError(f"split.method must be random or dirichlet, got {self.method!r}")
        if self.method == "dirichlet" and not self.column:
            raise DataError("split.method dirichlet needs split.column: the column whose mix differs between nodes")
        if not self.alpha > 0:
            raise DataError(f"split.alpha must be > 0, got {self.alpha}")


def split_indices(n_rows: int, parts: int, plan: SplitPlan, column: np.ndarray | None = None) -> list[np.ndarray]:
    """Row indices of each part (sorted, disjoint, together every row)."""
    if parts < 1:
        raise DataError(f"cannot split into {parts} parts")
    if n_rows < parts:
        raise DataError(f"cannot split {n_rows} rows across {parts} nodes: fewer rows than nodes")
    rng = np.random.default_rng(plan.seed)
    if plan.method == "random":
        shares = np.array_split(rng.permutation(n_rows), parts)
    else:
        if column is None or len(column) != n_rows:
            raise DataError(f"split.column {plan.column!r}: no values to split by")
        shares = _dirichlet(_levels(column), parts, plan.alpha, rng)
    return [np.sort(s) for s in shares]


def _levels(column: np.ndarray) -> np.ndarray:
    """Category codes: the column's distinct values, or its quantile bins when it is continuous."""
    values, codes = np.unique(column, return_inverse=True)
    if len(values) <= MAX_LEVELS:
        return codes
    edges = np.unique(np.quantile(column, np.linspace(0, 1, QUANTILE_BINS + 1)[1:-1]))
    return np.searchsorted(edges, column, side="right")


def _dirichlet(codes: np.ndarray, parts: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Each level's rows shared by proportions ~ Dirichlet(alpha, ..., alpha); drawn again while a part is empty."""
    members = [rng.permutation(np.flatnonzero(codes == level)) for level in np.unique(codes)]
    for _ in range(MAX_DRAWS):
        shares: list[list[np.ndarray]] = [[] for _ in range(parts)]
        for rows in members:
            cuts = (np.cumsum(rng.dirichlet(np.full(parts, alpha)))[:-1] * len(rows)).astype(int)
            for part, piece in enumerate(np.split(rows, cuts)):
                shares[part].append(piece)
        out = [np.concatenate(s) for s in shares]
        if all(len(s) for s in out):
            return out
    raise DataError(f"split: no Dirichlet(alpha={alpha}) draw in {MAX_DRAWS} gave every one of {parts} nodes a row; "
                    "use a larger alpha or fewer nodes")


def column_values(runs: list[Run], column: str, features: list[str], label_column: str | None) -> np.ndarray:
    """The split column over all runs: one of the features, or the label column (its 0/1 labels)."""
    if column in features:
        return np.concatenate([run.values[:, features.index(column)] for run in runs])
    if column == label_column or (label_column is None and column == "label"):
        if not all(run.labelled for run in runs):
            raise DataError(f"split.column {column!r} is the label column, but the data has no labels")
        return np.concatenate([run.labels for run in runs])
    raise DataError(f"split.column {column!r} is neither a feature {features} nor the label column "
                    f"{label_column!r}")


def take_rows(runs: list[Run], rows: np.ndarray) -> list[Run]:
    """The runs cut down to ``rows`` (indices over all runs in order); runs left without a row are dropped."""
    out, start = [], 0
    for run in runs:
        n = len(run.values)
        local = rows[(rows >= start) & (rows < start + n)] - start
        start += n
        if len(local):
            out.append(replace(run, values=run.values[local],
                               timestamps=None if run.timestamps is None else run.timestamps[local],
                               labels=None if run.labels is None else run.labels[local]))
    return out


@dataclass(frozen=True)
class SplitSource:
    """Part ``part`` of ``parts`` of another source's rows (see the module docstring)."""

    source: Source
    plan: SplitPlan
    part: int
    parts: int
    features: list[str]
    label_column: str | None = None

    def runs(self) -> list[Run]:
        return self.part_of(self.source.runs())

    def part_of(self, runs: list[Run]) -> list[Run]:
        """This node's part of ``runs``, the other source's rows (read once by ``fedad data check``)."""
        n_rows = sum(len(run.values) for run in runs)
        column = None
        if self.plan.method == "dirichlet":
            assert self.plan.column is not None  # SplitSettings requires it for dirichlet
            column = column_values(runs, self.plan.column, self.features, self.label_column)
        return take_rows(runs, split_indices(n_rows, self.parts, self.plan, column)[self.part])


def split_for(source: Source, settings: Settings, worker: WorkerSettings) -> Source:
    """``source`` as ``worker`` sees it under ``data.split``: its part among the workers naming the same partition."""
    data = settings.data_for(worker)
    if data.split is None:
        return source
    peers = [w.id for w in settings.workers if w.partition == worker.partition]
    plan = SplitPlan(data.split.method, data.split.column, data.split.alpha, data.split.seed)
    label = data.source.label.column if data.source.label is not None else None
    return SplitSource(source, plan, peers.index(worker.id), len(peers), list(data.columns), label)
