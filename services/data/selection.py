"""Which rows of a run train the detector (and are its normal reference); the rest is held out for evaluation.

Set by config.yaml's ``data.training.policy``:
- ``first_rows``: the first ``rows`` rows of every run (SKAB's protocol: each run starts anomaly-free). In a labelled
  run ``count: normal`` counts and trains normal rows only (the anomalous ones among them are held out), ``count:
  all`` takes the first ``rows`` whatever their label (SKAB's published protocol); an unlabelled run has no choice;
- ``before``: rows stamped earlier than ``before`` (a period known to be normal);
- ``labelled_normal``: rows whose label says normal, or a ``share`` of them: drawn at random by ``seed`` (``order:
  random``) or the first ones in the run's order (``order: file``: time order when there is a clock); labels then
  serve training too, so held-out figures are measured on the other rows;
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
    """The first ``rows`` rows of every run train; with ``normal_only``, the first ``rows`` normal rows of a labelled
    run (an unlabelled run: its first ``rows`` rows)."""

    rows: int
    normal_only: bool = False

    def mask(self, run: Run) -> np.ndarray:
        mask = np.zeros(len(run.values), dtype=bool)
        if self.normal_only and run.labels is not None:
            mask[np.flatnonzero(run.labels == 0)[: self.rows]] = True
        else:
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
    """Rows labelled normal train; with ``share`` < 1 only that share of them, drawn at random by ``seed`` or the
    first ones in the run's order (``in_order``), so the other normal rows stay held out and false alarms can be
    measured (the one-class protocol of benchmarks)."""

    share: float = 1.0
    seed: int = 0
    in_order: bool = False

    def mask(self, run: Run) -> np.ndarray:
        if run.labels is None:
            raise DataError(f"{run.name}: training.policy labelled_normal needs labels (data.source.label)")
        mask = run.labels == 0
        if self.share < 1:
            normal = np.flatnonzero(mask)
            take = round(self.share * len(normal))
            mask = np.zeros(len(run.values), dtype=bool)
            mask[normal[:take] if self.in_order else np.random.default_rng(self.seed).permutation(normal)[:take]] = True
        return mask


@dataclass(frozen=True)
class AllRows:
    """Every row trains."""

    def mask(self, run: Run) -> np.ndarray:
        return np.ones(len(run.values), dtype=bool)


def training_selection(training: TrainingSettings) -> TrainingSelection:
    if training.policy == "first_rows":
        return FirstRows(training.rows, training.count == "normal")
    if training.policy == "before":
        before = training.before
        assert before is not None, "the config requires training.before with policy before"
        offset = before.utcoffset()
        if offset is not None:  # compare in UTC, as the runs' timestamps are
            before = (before - offset).replace(tzinfo=None)
        return Before(np.datetime64(before, "ms"))
    if training.policy == "labelled_normal":
        return LabelledNormal(training.share, training.seed, training.order == "file")
    return AllRows()
