"""The model a worker serves on /detect: a calibrated AnomalyDetector and the global round it came from.

The worker builds a new ``ServedModel`` for every installed round and swaps the whole object, so a request uses
one consistent session, reference and threshold even while the next round is being installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.model.detector import AnomalyDetector


@dataclass(frozen=True)
class ServedModel:
    detector: AnomalyDetector
    model_round: int

    @property
    def kind(self) -> str:
        return self.detector.spec.served

    @property
    def threshold(self) -> float:
        return self.detector.threshold_

    def score(self, rows: np.ndarray, reference_rows: np.ndarray | None = None) -> np.ndarray:
        return self.detector.decision_function(rows, reference_rows)


class ModelSlot:
    """Holds the current ServedModel; ``swap`` installs a new one atomically."""

    def __init__(self):
        self.current: ServedModel | None = None

    def swap(self, model: ServedModel) -> None:
        self.current = model
