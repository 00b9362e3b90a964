"""The model a worker serves on /detect: an onnxruntime session plus what it needs to turn raw rows into scores.

A ServedModel is immutable; the worker swaps the whole object after each round, so a /detect request uses one
consistent model, scaling and threshold even while a new round is being installed.

Scaling follows ``data.baseline`` (services/data/windows.py). With ``run``, a request may bring reference rows —
normal operation from the start of the current run, as SKAB's protocol uses the first 400 rows of each run — and
its samples are scaled by them (and windows reach back into them); without, the worker's own training rows are the
reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from services.data.windows import Preprocessing, Reference, make_windows
from services.model.onnx_export import INPUT_NAME
from services.model.scoring import SCORE_NAME, make_session, session_scores

SCORE_OUTPUT = [SCORE_NAME]


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
    ``Preprocessing.inputs`` within float32 rounding (tests/benchmarks/test_fast_paths.py)."""

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


@dataclass(frozen=True)
class ServedModel:
    session: ort.InferenceSession
    prep: Preprocessing
    reference: Reference  # used when a request brings no reference rows
    threshold: float
    model_round: int
    kind: str  # int8 | fp32
    pipeline: InputPipeline = field(init=False, repr=False, compare=False)
    scored: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "pipeline", InputPipeline(self.prep, self.reference))
        object.__setattr__(self, "scored", any(o.name == SCORE_NAME for o in self.session.get_outputs()))

    @classmethod
    def build(cls, onnx_bytes: bytes, prep: Preprocessing, reference: Reference, threshold: float,
              model_round: int, kind: str) -> "ServedModel":
        return cls(make_session(onnx_bytes), prep, reference, threshold, model_round, kind)

    def inputs(self, rows: np.ndarray, reference_rows: np.ndarray | None = None) -> np.ndarray:
        """Raw sensor rows (consecutive, in feature order) → model inputs, one per row."""
        if reference_rows is None or self.prep.baseline != "run":
            return self.pipeline(rows)
        pipeline = InputPipeline(self.prep, self.prep.reference(reference_rows, None))
        return pipeline(np.concatenate([reference_rows, rows]))[len(reference_rows):]

    def score(self, rows: np.ndarray, reference_rows: np.ndarray | None = None) -> np.ndarray:
        return self.score_inputs(self.inputs(rows, reference_rows))

    def score_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Scores of ready model inputs (what ``inputs`` returns)."""
        if self.scored:  # the session computes the scores itself (services/model/scoring.with_score_output)
            return self.session.run(SCORE_OUTPUT, {INPUT_NAME: inputs})[0]
        return session_scores(self.session, inputs)


class Detector:
    """Holds the current ServedModel; ``swap`` installs a new one atomically."""

    def __init__(self):
        self.current: ServedModel | None = None

    def swap(self, model: ServedModel) -> None:
        self.current = model
