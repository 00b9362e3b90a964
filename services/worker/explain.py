"""Which sensors a score comes from: the top contributors to a row's reconstruction error, by sensor name.

The detector gives each model channel's share of a row's squared error (``AnomalyDetector.contributions``); this
names the channels (config's ``data.model_columns``) and keeps the largest ``TOP`` of them, from the rows' model
inputs: a stateless request's come from its rows (and baseline); a stream's are the inputs the stream table scored
(services/worker/streams.py names them itself).
"""

from __future__ import annotations

import numpy as np

TOP = 3  # contributors listed per row


class Explainer:
    def __init__(self, sensors: list[str], top: int = TOP):
        self.sensors = list(sensors)
        self.top = top

    def name(self, shares: np.ndarray) -> list[list[dict]]:
        """Per row: the ``top`` sensors by share, largest first, as ``{"sensor", "share"}``."""
        order = np.argsort(-shares, axis=1, kind="stable")[:, :self.top]
        return [[{"sensor": self.sensors[j], "share": round(float(row[j]), 4)} for j in cols]
                for row, cols in zip(shares, order)]

    def rows(self, detector, rows: np.ndarray, baseline: np.ndarray | None, which: np.ndarray) -> list:
        """Stateless rows (as ``decision_function`` scored them): top sensors for the rows ``which`` marks, None for
        the others."""
        if not np.any(which):
            return [None] * len(which)
        return self.explain(detector, detector.inputs(rows, baseline), which)

    def explain(self, detector, inputs: np.ndarray, which: np.ndarray) -> list:
        """Top sensors of the rows ``which`` marks, from their model inputs; None for the others."""
        which = np.asarray(which, dtype=bool)
        out: list = [None] * len(which)
        if not which.any():
            return out
        picked = np.flatnonzero(which)
        for i, top in zip(picked, self.name(detector.contributions(inputs[picked]))):
            out[i] = top
        return out
