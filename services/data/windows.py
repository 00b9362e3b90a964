"""From raw sensor rows to model inputs: SKAB is a once-a-second time series, and a fault often shows in how rows
change, not in one row.

Two steps, both set in config.yaml's ``data`` section:

1. **Reference scaling** (``data.baseline``). ``federation``: every node scales with the federation's merged mean and
   std (one scaler for all). ``run``: each run of the machine is scaled by its own reference rows — SKAB's protocol
   gives every experiment file an anomaly-free start (its first ``train_rows`` rows), so a run is compared with how
   *that run* looked when it started. SKAB's runs come from three sessions at very different operating points
   (~125, ~76, ~32 l/min) and temperatures drift between runs, so a single global scaler mistakes the operating
   point for the fault; the reference removes it. Only local rows are used: nothing leaves the node.
2. **Windows** (``data.window``, ``data.window_stats``). Row i stands for rows i-window+1 … i (rows before the first
   repeat the first row, so n rows give n inputs). Either flattened (``window_stats: []``), or summarised per
   channel by statistics (``mean``, ``std``, ``slope`` of a least-squares line), which keeps the input narrow
   however long the window is. With the ``run`` baseline the statistics are standardised once more with their own
   mean and std over the reference rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from services.data.scaling import MIN_STD, Scaler

WINDOW_STATS = ("mean", "std", "slope")


def make_windows(rows: np.ndarray, window: int) -> np.ndarray:
    """Row i becomes rows i-window+1 … i flattened (oldest first); rows before the first repeat the first row,
    so every row gets a score and a batch of n rows gives n windows."""
    rows = np.asarray(rows, dtype=np.float32)
    if window == 1:
        return rows
    padded = np.concatenate([np.repeat(rows[:1], window - 1, axis=0), rows])
    view = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)  # (n, features, window)
    return np.ascontiguousarray(view.transpose(0, 2, 1).reshape(len(rows), -1))


def window_stats(rows: np.ndarray, window: int, stats: tuple[str, ...]) -> np.ndarray:
    """Per row, statistics of each channel over its window (padded like make_windows): blocks of
    ``len(stats)`` × channels, in the order of ``stats``."""
    rows = np.asarray(rows, dtype=np.float64)
    padded = np.concatenate([np.repeat(rows[:1], window - 1, axis=0), rows])
    view = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)  # (n, channels, window)
    blocks = []
    for name in stats:
        if name == "mean":
            blocks.append(view.mean(axis=2))
        elif name == "std":
            blocks.append(view.std(axis=2))
        elif name == "slope":
            t = np.arange(window, dtype=np.float64) - (window - 1) / 2
            denominator = float((t**2).sum()) or 1.0
            blocks.append((view * t).sum(axis=2) / denominator)
        else:
            raise ValueError(f"unknown window statistic {name!r}; known: {WINDOW_STATS}")
    return np.concatenate(blocks, axis=1).astype(np.float32)


class Reference(BaseModel):
    """How one run is scaled: raw per-channel mean/std (model channels only), then mean/std of the window
    statistics (empty lists: no second step)."""

    mean: list[float]
    std: list[float]
    feature_mean: list[float] = []
    feature_std: list[float] = []


@dataclass(frozen=True)
class Preprocessing:
    """Raw rows in ``data.features`` order → model inputs; built from config with ``from_settings``."""

    columns: tuple[int, ...]  # which of data.features the model sees
    window: int
    stats: tuple[str, ...]  # () = flattened window
    baseline: str  # "federation" | "run"
    train_rows: int

    @classmethod
    def from_settings(cls, data) -> "Preprocessing":
        used = data.model_features or data.features
        return cls(columns=tuple(data.features.index(f) for f in used), window=data.window,
                   stats=tuple(data.window_stats), baseline=data.baseline, train_rows=data.train_rows)

    @property
    def channels(self) -> int:
        return len(self.columns)

    @property
    def width(self) -> int:
        return self.channels * (len(self.stats) if self.stats else self.window)

    def reference(self, reference_rows: np.ndarray | None, scaler: Scaler | None) -> Reference:
        """The scaling of one run: from its own reference rows (``run``) or the federation's scaler."""
        if self.baseline == "federation":
            if scaler is None:
                raise ValueError("the federation baseline needs the federation's scaler")
            cols = list(self.columns)
            return Reference(mean=np.asarray(scaler.mean)[cols].tolist(), std=np.asarray(scaler.std)[cols].tolist())
        rows = np.asarray(reference_rows, dtype=np.float64)[:, self.columns]
        if len(rows) < 2:
            raise ValueError("a run's reference needs at least 2 rows")
        mean, std = rows.mean(axis=0), np.maximum(rows.std(axis=0), MIN_STD)
        reference = Reference(mean=mean.tolist(), std=std.tolist())
        if self.stats:
            features = self._features(rows, reference)
            reference.feature_mean = features.mean(axis=0).tolist()
            reference.feature_std = np.maximum(features.std(axis=0), MIN_STD).tolist()
        return reference

    def _features(self, rows: np.ndarray, reference: Reference) -> np.ndarray:
        z = (rows - np.asarray(reference.mean)) / np.asarray(reference.std)
        return window_stats(z, self.window, self.stats) if self.stats else make_windows(z, self.window)

    def inputs(self, rows: np.ndarray, reference: Reference) -> np.ndarray:
        """Rows of one run (consecutive, oldest first, all data.features columns) → one model input per row."""
        rows = np.asarray(rows, dtype=np.float64)[:, self.columns]
        features = self._features(rows, reference)
        if reference.feature_mean:
            features = (features - np.asarray(reference.feature_mean)) / np.asarray(reference.feature_std)
        return np.ascontiguousarray(features, dtype=np.float32)

    def run_inputs(self, values: np.ndarray, scaler: Scaler | None) -> tuple[np.ndarray, Reference]:
        """A whole run under the protocol: its first ``train_rows`` rows are its reference."""
        reference = self.reference(values[: self.train_rows] if self.baseline == "run" else None, scaler)
        return self.inputs(values, reference), reference
