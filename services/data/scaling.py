"""Feature scaling whose statistics are federated: each worker sends count, sum and sum of squares per feature;
the aggregator adds them up. Rows never leave a worker, yet every node scales with the same global mean and std."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field, model_validator

MIN_STD = 1e-6


class FeatureStats(BaseModel):
    """Sufficient statistics for per-feature mean and standard deviation."""

    count: int = Field(gt=0)
    sum: list[float]
    sum_sq: list[float]

    @model_validator(mode="after")
    def _same_width(self) -> "FeatureStats":
        if len(self.sum) != len(self.sum_sq) or not self.sum:
            raise ValueError("sum and sum_sq must be non-empty lists of the same length")
        if not np.all(np.isfinite(self.sum + self.sum_sq)):
            raise ValueError("sum and sum_sq must be finite numbers")
        return self

    @classmethod
    def from_rows(cls, rows: np.ndarray) -> "FeatureStats":
        rows = np.asarray(rows, dtype=np.float64)
        return cls(count=len(rows), sum=rows.sum(0).tolist(), sum_sq=(rows**2).sum(0).tolist())

    @classmethod
    def merge(cls, parts: list["FeatureStats"]) -> "FeatureStats":
        return cls(
            count=sum(p.count for p in parts),
            sum=np.sum([p.sum for p in parts], axis=0).tolist(),
            sum_sq=np.sum([p.sum_sq for p in parts], axis=0).tolist(),
        )

    def scaler(self) -> "Scaler":
        mean = np.asarray(self.sum) / self.count
        var = np.maximum(np.asarray(self.sum_sq) / self.count - mean**2, 0.0)
        return Scaler(mean=mean.tolist(), std=np.maximum(np.sqrt(var), MIN_STD).tolist())


class Scaler(BaseModel):
    """Standard scaling with the federation's merged mean and std."""

    mean: list[float]
    std: list[float]

    def transform(self, rows: np.ndarray) -> np.ndarray:
        return ((rows - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)).astype(np.float32)
