"""One place that assembles a worker: every part built through its constructor, in the order they depend on each
other (each handed what it calls), and one lifespan that starts and stops them.

    slot           the model /detect serves
    models         kept versions and the gate (slot; the feed's latest data for held-out rows)
    drift          drift tests (models.recalibrate)
    buffer         live rows kept for the next rounds (drift.observe_kept)
    directive      the fleet's model directives, followed through the models
    loop           the federation (models, feed, trainer, directive, buffer, drift)
    reporter       the loop's reports, from a thread (loop.report, loop.send_report)
    link           the node's MQTT broker (started with ingestion's subscriptions and on_message, outbox.wake)
    outbox         alarm events and twin reports on their way out (link, alarms.webhook)
    twin           the verdict in each device's KubeEdge twin (outbox)
    alarms         debounced alarm state per stream (outbox, then twin)
    streams        the stream table; its watchers: the buffer (or drift without one) and the alarms
    ingest         device data (streams, twin; reads link, alarms, outbox)
    observability  /metrics, telemetry, the pages (reads them all)

Nothing is wired after it is built. The MQTT link serves ingestion (messages in) and the outbox (events out), both
built on it, so it is told whom to hand messages to when it starts. The routes and pages get the parts in one
``WorkerContext`` (services/worker/deps.py).
"""

from __future__ import annotations

import contextlib
import gc

from services.config import Settings, WorkerSettings
from services.data.sources import NodeFeed
from services.data.windows import Preprocessing
from services.model.detector import DetectorSpec
from services.observability.dashboard import WorkerObservability
from services.worker.alarms import AlarmBook, Outbox
from services.worker.buffer import LiveBuffer
from services.worker.deps import WorkerContext
from services.worker.directive import DirectiveFollower
from services.worker.drift import DriftWatch
from services.worker.explain import Explainer
from services.worker.ingest.mqtt import MqttLink
from services.worker.ingest.pipeline import DeviceIngest
from services.worker.loop import WorkerLoop
from services.worker.models import ModelShelf
from services.worker.reporter import Reporter
from services.worker.serving import ModelSlot
from services.worker.streams import StreamTable
from services.worker.trainer import Trainer
from services.worker.twin import TwinReporter, after


def build_worker(settings: Settings, worker: WorkerSettings) -> WorkerContext:
    """Every part of ``worker``, built and connected, none started (``running`` starts them)."""
    slot = ModelSlot()
    feed = NodeFeed(settings, worker)
    # held-out rows for the gate: the node's data as last read (a recalibration may come before the next round)
    trainer = Trainer(worker.state_dir)  # training and calibration in child processes: no torch, no onnx here
    models = ModelShelf(settings, worker, slot, DetectorSpec.from_settings(settings), feed.latest, trainer.calibrate)
    # a recalibrated threshold after drift is a new model version, served through the gate
    drift = DriftWatch.from_settings(settings, recalibrate=lambda scores: models.recalibrate(scores=scores))
    # with a live buffer, the drift tests see the rows it keeps (away from alarms); without, every scored request
    buffer = LiveBuffer.from_settings(settings, worker.state_dir, on_keep=drift.observe_kept if drift else None)
    directive = DirectiveFollower(worker.state_dir, models)
    loop = WorkerLoop(settings, worker, models, feed, trainer, directive, buffer, drift)
    reporter = Reporter(loop.report, loop.send_report, name=f"reporter-{worker.id}")
    link = MqttLink.from_settings(settings, worker)
    outbox = Outbox.from_settings(settings, worker, link)
    # the verdict in each device's KubeEdge twin (twin.enabled needs MQTT, so the link and the outbox exist)
    twin = TwinReporter(settings.twin.every_s, outbox.put, link.connected.is_set, settings.ingest.max_devices) \
        if settings.twin.enabled and link is not None and outbox is not None else None
    alarms = AlarmBook.from_settings(settings, worker, after(outbox.put, twin) if outbox is not None else None)
    streams = StreamTable(slot, Preprocessing.from_settings(settings.data), settings.data.columns,
                          settings.streams.max_streams, worker.state_dir,
                          watchers=(buffer, drift if buffer is None else None, alarms),
                          explainer=Explainer(settings.data.model_columns))
    ingest = DeviceIngest(settings, worker, streams, link, alarms, outbox, twin)
    observability = WorkerObservability(settings, worker, loop, slot, streams, buffer, drift, alarms, ingest)
    return WorkerContext(settings, worker, slot, models, loop, reporter, streams, alarms, outbox, link, ingest,
                         buffer, drift, observability)


@contextlib.asynccontextmanager
async def running(ctx: WorkerContext, federate: bool = True):
    """The worker's lifespan: its parts started in order and stopped in reverse. ``federate`` False: serve and
    ingest only (no federation loop, no reports or telemetry to the aggregator)."""
    ctx.streams.load()  # the streams a graceful stop handed over
    for part in (ctx.buffer, ctx.drift):
        if part is not None:
            part.start()
    ctx.ingest.start()
    if ctx.outbox is not None:
        ctx.outbox.start()
    if ctx.link is not None:  # device data in; after each (re)connection the held alarm events go out at once
        ctx.link.start(ctx.ingest.subscriptions, ctx.ingest.on_message,
                       ctx.outbox.wake if ctx.outbox is not None else None, ctx.ingest.taps)
    if federate:
        ctx.loop.start()
        ctx.reporter.start()
        ctx.observability.start()
    # What start-up built (modules, the app, settings, the served model) lives as long as the process: out of the
    # collector's sight, a full collection no longer walks it. Those walks stalled the event loop for 50-100 ms
    # under load, the p99 of one-row stream requests (85 ms, 12 ms after; BENCHMARKS.md §5).
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        if ctx.link is not None:
            ctx.link.stop()  # no more input; what is queued is still scored, its alarm events reach the outbox
        ctx.ingest.stop()
        if ctx.outbox is not None:
            ctx.outbox.stop()  # what it could not deliver stays on disk
        ctx.streams.save()
        for part in (ctx.drift, ctx.buffer):
            if part is not None:
                part.stop()
        ctx.reporter.stop()
        ctx.loop.stop()
        ctx.observability.stop()
