"""Aggregation rules: one small class each over one interface, the maths in plain numpy.

A strategy sees updates one at a time as they arrive (``add``), so FedAvg keeps a running weighted sum and its
memory stays one model's worth however many workers report.
"""

from __future__ import annotations

import numpy as np


class Strategy:
    name = "base"

    def begin(self, global_weights: np.ndarray) -> None:
        raise NotImplementedError

    def add(self, weights: np.ndarray, sample_count: int) -> None:
        raise NotImplementedError

    def result(self) -> np.ndarray:
        raise NotImplementedError


class FedAvg(Strategy):
    """Sample-weighted mean of the updates (McMahan et al., 2017)."""

    name = "fedavg"

    def begin(self, global_weights: np.ndarray) -> None:
        self._sum = np.zeros(global_weights.shape, dtype=np.float64)
        self._count = 0

    def add(self, weights: np.ndarray, sample_count: int) -> None:
        self._sum += np.asarray(weights, dtype=np.float64) * sample_count
        self._count += sample_count

    def result(self) -> np.ndarray:
        if self._count == 0:
            raise ValueError("no updates to aggregate")
        return (self._sum / self._count).astype(np.float32)


STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedAvg,)}


def make_strategy(name: str) -> Strategy:
    return STRATEGIES[name]()
