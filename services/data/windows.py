"""From raw sensor rows to model inputs: sensor data is a time series (SKAB's pump, the shipped data, is sampled
once a second), and a fault often shows in how rows change, not in one row.

Two steps, both set in config.yaml's ``data`` section:

1. **Reference scaling** (``data.baseline``, ``data.scaling`` standard or minmax). ``federation``: every node scales
   with the federation's merged statistics (one scaler for all). ``node``: each node with its own training rows.
   ``run``: each run of the machine is scaled by its own reference rows — SKAB's protocol
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

from services.protocol.scaling import MIN_STD, Scaler

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
    """Raw rows in ``data.columns`` order → model inputs; built from config with ``from_settings``."""

    columns: tuple[int, ...]  # which of data.columns the model sees
    window: int
    stats: tuple[str, ...]  # () = flattened window
    baseline: str  # "run" | "node" | "federation"
    scaling: str = "standard"  # "standard" | "minmax"

    @classmethod
    def from_settings(cls, data) -> Preprocessing:
        columns = data.columns
        return cls(columns=tuple(columns.index(f) for f in data.model_columns), window=data.window,
                   stats=tuple(data.window_stats), baseline=data.baseline, scaling=data.scaling)

    @property
    def channels(self) -> int:
        return len(self.columns)

    @property
    def width(self) -> int:
        return self.channels * (len(self.stats) if self.stats else self.window)

    def reference(self, reference_rows: np.ndarray | None, scaler: Scaler | None) -> Reference:
        """The scaling of one run: from reference rows (the run's own for ``run``, the node's for ``node``) or, without
        rows, the federation's scaler. ``minmax`` puts min in ``mean`` and max - min in ``std``."""
        if self.baseline == "federation" or reference_rows is None:
            if scaler is None:
                raise ValueError("the federation baseline needs the federation's scaler")
            cols = list(self.columns)
            return Reference(mean=np.asarray(scaler.mean)[cols].tolist(), std=np.asarray(scaler.std)[cols].tolist())
        rows = np.asarray(reference_rows, dtype=np.float64)[:, self.columns]
        if len(rows) < 2:
            raise ValueError("a run's reference needs at least 2 rows")
        if self.scaling == "minmax":
            mean, std = rows.min(axis=0), np.maximum(rows.max(axis=0) - rows.min(axis=0), MIN_STD)
        else:
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


def running_window_stats(z: np.ndarray, window: int, stats: tuple[str, ...]) -> np.ndarray:
    """``windows.window_stats`` (same padding, same statistics, population std) from block-wise running sums:
    O(rows × channels) instead of O(rows × channels × window), float64, not yet cast.

    The padded rows are cut into blocks of ``window`` rows; within each block, prefix sums of x, x² and
    offset·x. A window starting at offset r of block b is the rest of block b plus the first r rows of block b+1,
    so each window sum is three look-ups. Sums restart every block, so rounding grows with one block's values,
    not with the batch (a prefix sum over the whole batch would lose the std of quiet windows after a spike).
    """
    z = np.asarray(z, dtype=np.float64)
    n, c = z.shape
    w = window
    if w == 1 or n == 1:  # each window holds copies of one row: mean = the row, std = slope = 0
        return np.concatenate([z if name == "mean" else np.zeros_like(z) for name in stats], axis=1)
    blocks = -(-(n + w - 1) // w) + 1  # the padded rows, plus one block of zeros for the last window's look-up
    x = np.zeros((blocks * w, c))
    x[:w - 1] = z[0]
    x[w - 1:w - 1 + n] = z
    v = np.empty((w, blocks, 3 * c))  # [offset in block, block, (x | x² | offset·x)]: cumsum runs on axis 0
    v[:, :, :c] = x.reshape(blocks, w, c).transpose(1, 0, 2)
    np.multiply(v[:, :, :c], v[:, :, :c], out=v[:, :, c:2 * c])
    np.multiply(v[:, :, :c], np.arange(w, dtype=np.float64)[:, None, None], out=v[:, :, 2 * c:])
    prefix = np.empty((w + 1, blocks, 3 * c))  # prefix[r, b] = sum over block b's offsets < r
    prefix[0] = 0.0
    for offset in range(w):  # w vector adds: np.cumsum along a leading axis runs one short loop per element
        np.add(prefix[offset], v[offset], out=prefix[offset + 1])
    prefix = prefix.reshape(-1, 3 * c)
    b, r = np.divmod(np.arange(n), w)
    whole = prefix.take(w * blocks + b, axis=0)
    head = prefix.take(r * blocks + b, axis=0)
    tail = prefix.take(r * blocks + b + 1, axis=0)
    sums = whole - head + tail
    s1 = sums[:, :c]
    mean = s1 / w
    out = []
    for name in stats:
        if name == "mean":
            out.append(mean)
        elif name == "std":
            out.append(np.sqrt(np.maximum(sums[:, c:2 * c] / w - mean * mean, 0.0)))
        elif name == "slope":  # sum of (k - (w-1)/2)·x_k over the window, k = 0 … w-1, over sum of its squares
            rr = r[:, None].astype(np.float64)
            k = (whole[:, 2 * c:] - head[:, 2 * c:]) - rr * (whole[:, :c] - head[:, :c]) \
                + tail[:, 2 * c:] + (w - rr) * tail[:, :c]
            t = np.arange(w, dtype=np.float64) - (w - 1) / 2
            out.append((k - (w - 1) / 2 * s1) / (float((t**2).sum()) or 1.0))
        else:
            raise ValueError(f"unknown window statistic {name!r}")
    return np.concatenate(out, axis=1)


class InputPipeline:
    """``Preprocessing.inputs`` for one reference, built once per served model: the reference's lists become
    arrays here instead of on every request, and window statistics come from ``running_window_stats``. Equal to
    ``Preprocessing.inputs`` within float32 rounding (tests/data/test_windows.py)."""

    def __init__(self, prep: Preprocessing, reference: Reference):
        self.prep = prep
        self.columns = np.asarray(prep.columns, dtype=np.intp)
        self.all_columns = self.columns.tolist() == list(range(len(self.columns)))
        self.mean = np.asarray(reference.mean, dtype=np.float64)
        self.std = np.asarray(reference.std, dtype=np.float64)
        self.feature_mean = np.asarray(reference.feature_mean, dtype=np.float64) if reference.feature_mean else None
        self.feature_std = np.asarray(reference.feature_std, dtype=np.float64) if reference.feature_std else None
        # Windows of copies of one row (a batch of one row, or window 1): the mean block is the scaled row, std and
        # slope are 0, so the input is an affine map of the row; its constant part is computed here, once.
        c = len(self.columns)
        stats = prep.stats
        self.mean_block = slice(stats.index("mean") * c, (stats.index("mean") + 1) * c) if "mean" in stats else None
        self.constant = np.zeros(c * len(stats))
        if self.feature_mean is not None:
            self.constant = (self.constant - self.feature_mean) / self.feature_std

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        rows = rows if self.all_columns and rows.shape[1] == len(self.columns) else rows[:, self.columns]
        z = (rows.astype(np.float64) - self.mean) / self.std
        if self.prep.stats and (len(rows) == 1 or self.prep.window == 1):
            out = np.empty((len(rows), len(self.constant)))
            out[:] = self.constant
            if self.mean_block is not None:
                block = self.mean_block
                out[:, block] = z if self.feature_mean is None else \
                    (z - self.feature_mean[block]) / self.feature_std[block]
            return out.astype(np.float32)
        if self.prep.stats:
            features = running_window_stats(z, self.prep.window, self.prep.stats)
        else:
            features = make_windows(z, self.prep.window)
        if self.feature_mean is not None:
            features = (features - self.feature_mean) / self.feature_std
        return np.ascontiguousarray(features, dtype=np.float32)
