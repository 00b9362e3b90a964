"""Which rows of a run train the detector (and are its normal reference); the rest is held out for evaluation.

Set by config.yaml's ``data.training.policy``:
- ``first_rows``: the first ``rows`` rows of every run (SKAB's protocol: each run starts anomaly-free);
- ``before``: rows stamped earlier than ``before`` (a period known to be normal);
- ``labelled_normal``: rows whose label says normal (labels then serve training too, so held-out figures are
  measured on anomalous rows only);
- ``all``: every row, for data that is mostly normal: the threshold is a high quantile of the training scores, so
  rare anomalies among the training rows land above it instead of moving it; nothing is held out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from services.config import TrainingSettings
from services.data.source import DataError, Run


class TrainingSelection(Protocol):
    def mask(self, run: Run) -> np.ndarray:
        """Boolean per row: True = trains."""
        ...


@dataclass(frozen=True)
class FirstRows:
    """The first ``rows`` rows of every run train."""

    rows: int

    def mask(self, run: Run) -> np.ndarray:
        mask = np.zeros(len(run.values), dtype=bool)
        mask[: self.rows] = True
        return mask


@dataclass(frozen=True)
class Before:
    """Rows stamped before ``before`` train."""

    before: np.datetime64

    def mask(self, run: Run) -> np.ndarray:
        if run.timestamps is None:
            raise DataError(f"{run.name}: training.policy before needs timestamps (data.source.timestamp)")
        return run.timestamps < self.before


@dataclass(frozen=True)
class LabelledNormal:
    """Rows labelled normal train; with ``share`` < 1 only that share of them, drawn at random by ``seed``, so the
    other normal rows stay held out and false alarms can be measured (the one-class protocol of benchmarks)."""

    share: float = 1.0
    seed: int = 0

    def mask(self, run: Run) -> np.ndarray:
        if run.labels is None:
            raise DataError(f"{run.name}: training.policy labelled_normal needs labels (data.source.label)")
        mask = run.labels == 0
        if self.share < 1:
            normal = np.flatnonzero(mask)
            mask = np.zeros(len(run.values), dtype=bool)
            mask[np.random.default_rng(self.seed).permutation(normal)[: round(self.share * len(normal))]] = True
        return mask


@dataclass(frozen=True)
class AllRows:
    """Every row trains."""

    def mask(self, run: Run) -> np.ndarray:
        return np.ones(len(run.values), dtype=bool)


def training_selection(training: TrainingSettings) -> TrainingSelection:
    if training.policy == "first_rows":
        return FirstRows(training.rows)
    if training.policy == "before":
        before = training.before
        assert before is not None, "the config requires training.before with policy before"
        offset = before.utcoffset()
        if offset is not None:  # compare in UTC, as the runs' timestamps are
            before = (before - offset).replace(tzinfo=None)
        return Before(np.datetime64(before, "ms"))
    if training.policy == "labelled_normal":
        return LabelledNormal(training.share, training.seed)
    return AllRows()
