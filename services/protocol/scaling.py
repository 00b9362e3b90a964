"""Feature scaling whose statistics are federated: each worker sends count, sum, sum of squares, min and max per
feature; the aggregator adds up the sums and takes the extremes. Rows never leave a worker, yet every node scales
with the same global mean and std (``standard``) or min and range (``minmax``).

Part of the protocol because both are wire messages (``JoinRequest.stats``, ``JoinResponse.scaler``); the data
package scales its rows with them."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field, model_validator

MIN_STD = 1e-6


class FeatureStats(BaseModel):
    """Sufficient statistics for per-feature mean and standard deviation."""

    count: int = Field(gt=0)
    sum: list[float]
    sum_sq: list[float]
    min: list[float] | None = None
    max: list[float] | None = None

    @model_validator(mode="after")
    def _same_width(self) -> FeatureStats:
        if len(self.sum) != len(self.sum_sq) or not self.sum:
            raise ValueError("sum and sum_sq must be non-empty lists of the same length")
        extremes = [x for x in (self.min, self.max) if x is not None]
        if any(len(x) != len(self.sum) for x in extremes) or len(extremes) == 1:
            raise ValueError("min and max must both be given, each as long as sum")
        if not all(np.all(np.isfinite(x)) for x in (self.sum, self.sum_sq, *extremes)):
            raise ValueError("sum, sum_sq, min and max must be finite numbers")
        return self

    @classmethod
    def from_rows(cls, rows: np.ndarray) -> FeatureStats:
        rows = np.asarray(rows, dtype=np.float64)
        return cls(count=len(rows), sum=rows.sum(0).tolist(), sum_sq=(rows**2).sum(0).tolist(),
                   min=rows.min(0).tolist(), max=rows.max(0).tolist())

    @classmethod
    def merge(cls, parts: list[FeatureStats]) -> FeatureStats:
        extremes = all(p.min is not None for p in parts)
        return cls(
            count=sum(p.count for p in parts),
            sum=np.sum([p.sum for p in parts], axis=0).tolist(),
            sum_sq=np.sum([p.sum_sq for p in parts], axis=0).tolist(),
            min=np.min([p.min or [] for p in parts], axis=0).tolist() if extremes else None,
            max=np.max([p.max or [] for p in parts], axis=0).tolist() if extremes else None,
        )

    def scaler(self, method: str = "standard") -> Scaler:
        """``standard``: mean and std; ``minmax``: min in ``mean`` and max - min in ``std`` (same transform)."""
        if method == "minmax":
            if self.min is None or self.max is None:
                raise ValueError("minmax scaling needs every worker's min and max")
            low = np.asarray(self.min)
            return Scaler(mean=low.tolist(), std=np.maximum(np.asarray(self.max) - low, MIN_STD).tolist())
        mean = np.asarray(self.sum) / self.count
        var = np.maximum(np.asarray(self.sum_sq) / self.count - mean**2, 0.0)
        return Scaler(mean=mean.tolist(), std=np.maximum(np.sqrt(var), MIN_STD).tolist())


class Scaler(BaseModel):
    """Scaling with the federation's merged statistics: (x - mean) / std, or (x - min) / range for minmax."""

    mean: list[float]
    std: list[float]

    def transform(self, rows: np.ndarray) -> np.ndarray:
        return ((rows - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)).astype(np.float32)
