"""One stream's window, kept up to date row by row: a reading that arrives alone costs a few vector operations on
one row, not the statistics of its whole window again.

``InputPipeline`` (services/data/windows.py) turns a batch of consecutive rows into model inputs; a stream scored
one row per request would run it over the ``window - 1`` rows before each new row every time. ``StreamWindow``
keeps, per stream:

- the last ``window`` raw rows (a ring buffer; the raw rows are what a new reference or a handover needs), and
  the same rows scaled by the stream's reference (``z``);
- for window statistics, running sums over the window of ``z``, ``z²`` and ``position · z``: the row that enters
  is added and the row that leaves subtracted, and mean, population std and least-squares slope follow from the
  three sums. The sums are of ``z`` minus a per-channel shift (the window's mean at the last re-anchoring), so the
  std of a window far from zero does not cancel away;
- re-anchoring: every ``window`` rows the sums are computed again from the ring, exactly, so rounding never
  accumulates over a long stream (a spike's square leaves the sums at the latest ``window`` rows after it left the
  window: the bound of the batch path's block-wise sums);
- for flattened windows (``data.window_stats: []``, the conv1d and lstm kinds) the ring itself is the input.

A request of more than ``PUSH_MAX_ROWS`` rows, the first row of a stream and a change of reference (a new served
model for streams scaled by the model's default reference) take the batch path, ``InputPipeline`` over the held
rows and the new ones, and anchor the sums afresh from its rows. Both paths give the same inputs within float32 rounding
(tests/data/test_stream_window.py, on whole SKAB files).
"""

from __future__ import annotations

import numpy as np

from services.data.windows import InputPipeline

# a request of up to this many rows moves the window row by row; more take the batch path (cheaper per row beyond
# about 4: one pass over the window and the rows instead of one update each; measured in-process on SKAB, int8)
PUSH_MAX_ROWS = 4


class StreamWindow:
    """The window of one stream of raw rows (all ``data.features`` columns, float32), scaled by whichever
    ``InputPipeline`` scores it."""

    def __init__(self, window: int, n_features: int, history: np.ndarray | None = None):
        self.window = window
        self.anchor_every = window  # rows between two exact recomputations of the sums
        self._raw = np.empty((2 * window, n_features), dtype=np.float32)  # ring, each row written twice:
        self._end = window  # ... one past the newest row: [end - window, end) is the window, oldest first
        self._z: np.ndarray | None = None  # the same rows scaled, a ring alike with its own end ``_z_end``
        self._z_end = window
        self.held = 0  # real rows held (≤ window); rows before the first of a young stream repeat it
        self._pipeline: InputPipeline | None = None
        self._since_anchor = 0
        if history is not None and len(history) and window > 1:
            self._hold(np.asarray(history, dtype=np.float32)[max(0, len(history) - (window - 1)):])

    @property
    def history(self) -> np.ndarray:
        """The last ``window - 1`` raw rows (fewer in a young stream), oldest first: what the next row's window
        reaches back to."""
        keep = min(self.held, self.window - 1)
        return self._raw[self._end - keep:self._end].copy()

    def inputs(self, pipeline: InputPipeline, rows: np.ndarray) -> np.ndarray:
        """Model inputs of ``rows``, the stream's next rows (n ≥ 1, oldest first), and the window moved past them."""
        if len(rows) <= PUSH_MAX_ROWS and self.held and self.window > 1 and pipeline is self._pipeline:
            return self._push(rows[0]) if len(rows) == 1 else np.concatenate([self._push(row) for row in rows])
        history = self.history
        context = np.concatenate([history, rows]) if len(history) else rows
        out = pipeline(context)[len(history):]
        self._pipeline = pipeline
        self._hold(np.asarray(context, dtype=np.float32)[-self.window:])
        return out

    # -- the ring and its sums -------------------------------------------------------------------------------------
    def _hold(self, rows: np.ndarray) -> None:
        """Hold the last ≤ ``window`` raw rows, padded in front with the first (as the batch path pads)."""
        w = self.window
        padded = np.concatenate([np.repeat(rows[:1], w - len(rows), axis=0), rows]) if len(rows) < w else rows
        self._raw[:w] = padded
        self._raw[w:] = padded
        self._end = w
        self.held = len(rows)
        self._z = None
        if self._pipeline is not None:
            self._scale()

    def _scale(self) -> None:
        """``z`` of the held rows under the current pipeline, and the sums anchored on them."""
        p = self._pipeline
        assert p is not None
        w = self.window
        raw = self._raw[self._end - w:self._end]
        z = (raw[:, p.columns].astype(np.float64) - p.mean) / p.std
        self._z = np.concatenate([z, z])  # a doubled ring like ``_raw``, with its own end
        self._z_end = w
        self._anchor()

    def _anchor(self) -> None:
        """The sums computed exactly from the ring."""
        if self._pipeline is None or not self._pipeline.prep.stats:
            self._since_anchor = 0
            return
        z = self._window_z()
        self._shift = z.mean(axis=0)
        d = z - self._shift
        self._s1 = d.sum(axis=0)
        self._s2 = (d * d).sum(axis=0)
        self._sk = (np.arange(self.window, dtype=np.float64) @ d)
        self._since_anchor = 0

    def _window_z(self) -> np.ndarray:
        assert self._z is not None
        return self._z[self._z_end - self.window:self._z_end]

    def _push(self, row: np.ndarray) -> np.ndarray:
        """One row in, the oldest out: the sums (or the ring) updated, the row's model input returned."""
        p = self._pipeline
        assert p is not None and self._z is not None
        w = self.window
        # the raw ring
        if self._end == 2 * w:
            self._raw[:w] = self._raw[w:]
            self._end = w
        self._raw[self._end] = row
        self._end += 1
        self.held = min(self.held + 1, w)
        # the scaled ring
        z = (row[p.columns].astype(np.float64) - p.mean) / p.std
        if self._z_end == 2 * w:
            self._z[:w] = self._z[w:]
            self._z_end = w
        leaving = self._z[self._z_end - w]
        self._z[self._z_end] = z
        self._z_end += 1
        if not p.prep.stats:
            features = self._window_z().reshape(1, -1)
        else:
            self._since_anchor += 1
            if self._since_anchor >= self.anchor_every:
                self._anchor()
            else:
                d_in, d_out = z - self._shift, leaving - self._shift
                # positions move down by one: the window's sum of position · z loses the sum of the rows that stay
                self._sk += (w - 1) * d_in - (self._s1 - d_out)
                self._s1 += d_in - d_out
                self._s2 += d_in * d_in - d_out * d_out
            features = self._statistics().reshape(1, -1)
        if p.feature_mean is not None and p.feature_std is not None:
            features = (features - p.feature_mean) / p.feature_std
        return features.astype(np.float32)

    def _statistics(self) -> np.ndarray:
        """The window's statistics in ``prep.stats`` order, from the sums (services/data/windows.window_stats)."""
        p = self._pipeline
        assert p is not None
        w = self.window
        m = self._s1 / w
        blocks = []
        for name in p.prep.stats:
            if name == "mean":
                blocks.append(self._shift + m)
            elif name == "std":
                blocks.append(np.sqrt(np.maximum(self._s2 / w - m * m, 0.0)))
            else:  # slope: sum of (k - (w-1)/2)·z_k over the sum of (k - (w-1)/2)², the shift cancels
                blocks.append((self._sk - (w - 1) / 2 * self._s1) / (w * (w * w - 1) / 12))
        return np.concatenate(blocks)
