"""Which sensors a score comes from: the top contributors to a row's reconstruction error, by sensor name.

The detector gives each model channel's share of a row's squared error (``AnomalyDetector.contributions``); this
names the channels (config's ``data.model_columns``) and keeps the largest ``TOP`` of them. It needs the rows' model
inputs, which scoring does not keep: a stateless request's come from its rows (and baseline), a stream's from the
rows its window reaches back to, so ``before`` records them before the stream scores the new rows.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from services.data.windows import InputPipeline

TOP = 3  # contributors listed per row


class StreamContext(NamedTuple):
    """A stream's state just before it scores new rows: the raw rows its windows reach back to and its scaling
    (None: a stream not seen yet, or the served model's default reference)."""

    history: np.ndarray | None
    pipeline: InputPipeline | None


def before(streams, stream: str) -> StreamContext:
    """The stream's history and scaling as ``StreamTable.score`` will use them. Read without the table's lock: a
    stream replaces its history array rather than changing it, and two requests of one stream at once have no order
    anyway."""
    state = streams._streams.get(stream)  # the table keeps no public view of a stream's rows
    return StreamContext(None, None) if state is None else StreamContext(state.history, state.pipeline)


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
        return self._explain(detector, lambda: detector.inputs(rows, baseline), which)

    def stream_rows(self, detector, context: StreamContext, rows: np.ndarray, baseline: np.ndarray | None,
                    which: np.ndarray) -> list:
        """A stream's new rows, with the context ``before`` recorded."""
        def inputs():
            if context.history is None:  # a new stream: its baseline (if any) is what its windows reach back to
                return detector.inputs(rows, baseline)
            pipeline = context.pipeline or detector.pipeline_
            history = context.history
            window = np.concatenate([history, rows]) if len(history) else rows
            return pipeline(window)[len(history):]

        return self._explain(detector, inputs, which)

    def _explain(self, detector, inputs, which: np.ndarray) -> list:
        which = np.asarray(which, dtype=bool)
        out: list = [None] * len(which)
        if not which.any():
            return out
        picked = np.flatnonzero(which)
        for i, top in zip(picked, self.name(detector.contributions(inputs()[picked]))):
            out[i] = top
        return out
