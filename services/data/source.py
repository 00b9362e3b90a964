"""What every data source gives an edge node: its runs.

A run is one stretch of a machine's operation in time order (one experiment file, or a stream cut where its clock
jumps): raw rows in config's feature order, optionally their timestamps and per-row labels. Which rows train is not
the source's business but a ``TrainingSelection``'s (services/data/selection.py); how rows become model inputs is
the detector's (services/data/windows.py). Unlabelled data is a first-class case: ``labels`` is None, never zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class DataError(RuntimeError):
    """The data cannot be found, fetched or read; the message says where and what to do."""


@dataclass(frozen=True)
class Run:
    name: str
    values: np.ndarray  # (n, features) float32, columns in config's feature order
    timestamps: np.ndarray | None = None  # (n,) datetime64, or None when the source has no clock
    labels: np.ndarray | None = None  # (n,) int8, 1 = anomaly; None = unlabelled

    @property
    def labelled(self) -> bool:
        return self.labels is not None


class Source(Protocol):
    """An edge node's local data as runs, read the same way for training, evaluation and ``fedad data check``."""

    def runs(self) -> list[Run]: ...
