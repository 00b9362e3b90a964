"""The model a worker serves on /detect: an onnxruntime session plus what it needs to turn raw rows into scores.

A ServedModel is immutable; the worker swaps the whole object after each round, so a /detect request uses one
consistent model, scaler and threshold even while a new round is being installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from services.data.scaling import Scaler
from services.data.windows import make_windows
from services.model.scoring import make_session, session_scores


@dataclass(frozen=True)
class ServedModel:
    session: ort.InferenceSession
    scaler: Scaler
    window: int
    threshold: float
    model_round: int
    kind: str  # int8 | fp32

    @classmethod
    def build(cls, onnx_bytes: bytes, scaler: Scaler, window: int, threshold: float, model_round: int,
              kind: str) -> "ServedModel":
        return cls(make_session(onnx_bytes), scaler, window, threshold, model_round, kind)

    def inputs(self, rows: np.ndarray) -> np.ndarray:
        """Raw sensor rows (consecutive, in feature order) → scaled windows, one per row."""
        return make_windows(self.scaler.transform(rows), self.window)

    def score(self, rows: np.ndarray) -> np.ndarray:
        return session_scores(self.session, self.inputs(rows))


class Detector:
    """Holds the current ServedModel; ``swap`` installs a new one atomically."""

    def __init__(self):
        self.current: ServedModel | None = None

    def swap(self, model: ServedModel) -> None:
        self.current = model
