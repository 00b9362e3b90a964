"""What the worker's routes and pages share: its settings and its parts, built once by ``build_worker``
(services/worker/assembly.py) and handed to the routers as a FastAPI dependency (``Context``), plus the request
limits and the status document that read them."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from services.config import Settings, WorkerSettings
from services.observability.dashboard import WorkerObservability
from services.worker.alarms import AlarmBook, Outbox
from services.worker.buffer import LiveBuffer
from services.worker.drift import DriftWatch
from services.worker.ingest.mqtt import MqttLink
from services.worker.ingest.pipeline import DeviceIngest
from services.worker.loop import WorkerLoop
from services.worker.models import ModelShelf
from services.worker.parsing import BINARY_DTYPE, BYTES_PER_VALUE
from services.worker.reporter import Reporter
from services.worker.serving import ModelSlot
from services.worker.streams import StreamTable


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    worker: WorkerSettings
    slot: ModelSlot  # the model /detect serves
    models: ModelShelf  # the kept versions, the gate, which one is served or pinned
    loop: WorkerLoop  # the federation: join, train, push, install
    reporter: Reporter  # the loop's reports to the aggregator, from a thread of their own
    streams: StreamTable  # per-stream rows and references; tells the watchers below of every scored request
    alarms: AlarmBook  # debounced alarms per stream
    outbox: Outbox | None  # alarm events on their way out (MQTT, webhook); None when neither is configured
    link: MqttLink | None  # the node's broker (ingest.mqtt.enabled): device data in, alarm events out
    ingest: DeviceIngest  # device data (MQTT, HTTP push) scored as streams
    buffer: LiveBuffer | None  # normal live rows kept for the next rounds (buffer.enabled)
    drift: DriftWatch | None  # drift tests of the streams (drift.enabled)
    observability: WorkerObservability  # /metrics, telemetry, the worker's page

    @property
    def stats(self):
        return self.observability.stats  # /detect counters

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
            "precision": self.models.served_precision,  # why that precision (serving.model, both figures)
            "model_kind": self.models.spec.kind,  # dense | conv1d | lstm
            "shape": self.settings.model_shape,  # e.g. dense 18→8→4→8→18 (from the input width)
            "score": self.models.spec.score,  # error | error_and_t2
            "threshold": model.threshold if model else None,
            "features": self.features,
            "window": self.settings.data.window,
            "streams": len(self.streams),
            "alarms": self.alarms.document(),
            "buffer": self.buffer.document() if self.buffer is not None else None,
            "drift": self.drift.document() if self.drift is not None else None,
            "models": self.models.document(),  # kept versions, served, pinned (services/worker/models.py)
            # rows not yet trained on, last round trained, rounds trained, reports sent
            "continual": {**loop.continual_document(), "reports_sent": self.reporter.sent},
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
