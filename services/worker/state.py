"""A worker's persisted state: the global model it serves, its scaler and threshold, its ONNX files.

Written with atomic.commit_snapshot, so kill -9 at any instant leaves the previous round's complete state; on
restart the worker serves that model at once and rejoins the federation from its round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services import atomic
from services.protocol.codec import decode_weights, encode_weights


@dataclass
class WorkerState:
    run_id: str
    model_round: int
    threshold: float
    scaler: dict
    spec_hash: str
    served: str  # "int8" or "fp32"
    weights: np.ndarray
    onnx_fp32: bytes
    onnx_int8: bytes
    history: list[dict] = field(default_factory=list)  # per round: local loss, threshold, held-out figures
    evaluation: dict | None = None
    reference: dict | None = None  # default scaling of /detect rows (services/data/windows.Reference)


class WorkerStore:
    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic.remove_stale_temps(self.dir)

    def load(self, n_params: int) -> WorkerState | None:
        meta = atomic.read_json(self.dir / "state.json")
        if meta is None:
            return None
        files = meta.pop("files")
        atomic.remove_unreferenced(self.dir, files)
        return WorkerState(
            **meta,
            weights=decode_weights((self.dir / files["global.f32"]).read_bytes(), n_params),
            onnx_fp32=(self.dir / files["model.onnx"]).read_bytes(),
            onnx_int8=(self.dir / files["model.int8.onnx"]).read_bytes(),
        )

    def save(self, state: WorkerState) -> None:
        meta = {k: v for k, v in state.__dict__.items() if k not in ("weights", "onnx_fp32", "onnx_int8")}
        blobs = {"global.f32": encode_weights(state.weights), "model.onnx": state.onnx_fp32,
                 "model.int8.onnx": state.onnx_int8}
        atomic.commit_snapshot(self.dir, state.model_round, blobs, meta)
