"""What the worker's routes share: settings, the served model's slot, the federation loop, the streams, the /detect
counters and the request limits, built once by ``create_app`` and handed to the routers as a FastAPI dependency."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from services.config import Settings, WorkerSettings
from services.observability.metrics import DetectStats
from services.worker.buffer import LiveBuffer
from services.worker.drift import DriftWatch
from services.worker.loop import WorkerLoop
from services.worker.parsing import BINARY_DTYPE, BYTES_PER_VALUE
from services.worker.ingest.pipeline import DeviceIngest
from services.worker.serving import ModelSlot
from services.worker.streams import StreamTable


@dataclass
class WorkerContext:
    settings: Settings
    worker: WorkerSettings
    slot: ModelSlot
    loop: WorkerLoop
    streams: StreamTable
    stats: DetectStats
    ingest: DeviceIngest | None = None  # set by routes/ingest.router: device data and alarms
    buffer: LiveBuffer | None = None  # normal live rows kept for the next rounds (buffer.enabled)
    drift: DriftWatch | None = None  # drift tests of the streams (drift.enabled)

    @property
    def features(self) -> list[str]:
        return self.settings.data.columns  # features, one-hot levels expanded: what /detect rows hold

    @property
    def max_rows(self) -> int:
        return self.settings.serving.max_batch_rows

    @property
    def max_json_body(self) -> int:
        return self.max_rows * len(self.features) * BYTES_PER_VALUE + 4096

    @property
    def max_binary_body(self) -> int:
        return self.max_rows * len(self.features) * BINARY_DTYPE.itemsize

    @property
    def min_baseline(self) -> int:
        """A baseline spans at least one window (and 2 rows for a standard deviation)."""
        return max(2, self.settings.data.window)

    def status_document(self) -> dict:
        model = self.slot.current
        loop = self.loop
        state = loop.state
        return {
            "worker_id": self.worker.id,
            "phase": loop.phase,
            "mode": self.worker.mode,  # train | detect_only
            "progress": loop.progress,
            "model_round": model.model_round if model else None,
            "rounds_total": loop.rounds_total,
            "model": model.kind if model else None,  # the served precision: int8 or fp32
            "precision": loop.models.served_precision,  # why that precision (serving.model, both figures)
            "model_kind": loop.spec.kind,  # dense | conv1d | lstm
            "shape": self.settings.model_shape,  # e.g. dense 18→8→4→8→18 (from the input width)
            "score": loop.spec.score,  # error | error_and_t2
            "threshold": model.threshold if model else None,
            "features": self.features,
            "window": self.settings.data.window,
            "streams": len(self.streams),
            "alarms": self.ingest.alarms.document() if self.ingest is not None else None,
            "buffer": self.buffer.document() if self.buffer is not None else None,
            "drift": self.drift.document() if self.drift is not None else None,
            "models": loop.models.document(),  # kept versions, served, pinned (services/worker/models.py)
            "continual": loop.continual_document(),  # rows not yet trained on, last round trained, rounds trained
            "evaluation": state.evaluation if state else None,
            "history": state.history if state else [],
            "last_error": loop.last_error,
            "last_training": loop.last_training,  # round, loss, seconds, peak_rss_mib of the training process
            "training_failures": loop.training_failures,
            "last_training_failure": loop.last_training_failure,
            "torch_loaded": "torch" in sys.modules,  # serving runs without torch: training is a child process
        }


def context(request: Request) -> WorkerContext:
    return request.app.state.worker


Context = Annotated[WorkerContext, Depends(context)]  # a route's parameter ``ctx: Context``
