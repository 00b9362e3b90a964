"""Which rows of a run train the detector (and are its normal reference); the rest is held out for evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from services.data.source import Run


class TrainingSelection(Protocol):
    def mask(self, run: Run) -> np.ndarray:
        """Boolean per row: True = trains."""
        ...


@dataclass(frozen=True)
class FirstRows:
    """The first ``rows`` rows of every run train (SKAB's protocol: each run starts anomaly-free)."""

    rows: int

    def mask(self, run: Run) -> np.ndarray:
        mask = np.zeros(len(run.values), dtype=bool)
        mask[: self.rows] = True
        return mask
