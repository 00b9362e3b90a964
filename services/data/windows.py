"""Windows of consecutive rows: SKAB is a once-a-second time series, and a fault often shows in how rows change."""

from __future__ import annotations

import numpy as np


def make_windows(rows: np.ndarray, window: int) -> np.ndarray:
    """Row i becomes rows i-window+1 … i flattened (oldest first); rows before the first repeat the first row,
    so every row gets a score and a batch of n rows gives n windows."""
    rows = np.asarray(rows, dtype=np.float32)
    if window == 1:
        return rows
    padded = np.concatenate([np.repeat(rows[:1], window - 1, axis=0), rows])
    view = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)  # (n, features, window)
    return np.ascontiguousarray(view.transpose(0, 2, 1).reshape(len(rows), -1))
