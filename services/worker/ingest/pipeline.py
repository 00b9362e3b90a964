"""Device data → scores, on one ingestion thread.

MQTT messages (raw, from paho's thread) and HTTP push readings (parsed in the request) wait in one bounded queue;
the ingestion thread parses, assembles rows per device (``assemble``) and scores each device's rows as its stream
(the worker's ``StreamTable``: the same scores /detect gives the same rows, and the same watchers — the alarms, the
live buffer, the drift tests — see them). One thread owns the assembly state, so it needs no lock, and a slow model
never stalls the broker connection.

With ``data.baseline: run`` a device's first ``ingest.baseline_rows`` rows (default ``data.train_rows``) are its
baseline: they set the stream's scaling and are not scored (as the baseline of a /detect request). A device the
stream table already holds (handed over by a graceful restart) is scored at once; one whose stream was evicted
meanwhile starts a new baseline.

Nothing is refused silently: every message or row not scored is counted by reason (``messages.REASONS``) and logged
with its topic, at most once per reason every ``LOG_EVERY_S`` seconds (a flood must not flood the log too).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from services.config import Settings, WorkerSettings
from services.protocol import errors
from services.protocol.errors import ProtocolError
from services.worker.alarms import AlarmBook, Outbox
from services.worker.ingest.assemble import Assembler, Row
from services.worker.ingest.broker_watch import BrokerWatch
from services.worker.ingest.messages import REASONS, Reading, Refused, TopicFilter, parse
from services.worker.ingest.mqtt import MqttLink
from services.worker.streams import StreamRequest
from services.worker.twin import TOPIC as TWIN_TOPIC
from services.worker.twin import TwinReporter

log = logging.getLogger("fedad.worker.ingest")
LOG_EVERY_S = 10.0
TICK_S = 0.25  # the ingestion thread resolves overdue rows at least this often
MAX_BATCH_ITEMS = 1024  # queued messages taken at once: their rows are scored in one model run


class StreamScorer(Protocol):
    """What ingestion needs of the worker's streams (services.worker.streams.StreamTable)."""

    def score(self, stream: str, rows: np.ndarray, baseline: np.ndarray | None = None,
              times: Sequence[float] | None = None): ...  # → services.worker.watchers.Scored; raises ProtocolError
    # (no_model, baseline_already_set, ...)

    def score_many(self, requests: Sequence[StreamRequest]) -> list: ...  # one Scored or ProtocolError each

    def describe(self, stream: str) -> dict: ...  # raises ProtocolError unknown_stream for a stream it does not hold

    def forget(self, stream: str) -> dict: ...


class DeviceIngest:
    """``link`` (the node's broker, None without MQTT) is started by the worker with this ingestion's
    ``subscriptions`` and ``on_message``; ``twin`` (twin.enabled) hears each device's scores; ``alarms`` and
    ``outbox`` are only read, for ``document`` and ``metrics``."""

    def __init__(self, settings: Settings, worker: WorkerSettings, streams: StreamScorer,
                 link: MqttLink | None = None, alarms: AlarmBook | None = None, outbox: Outbox | None = None,
                 twin: TwinReporter | None = None):
        cfg = settings.ingest
        self.worker_id = worker.id
        self.features = settings.data.features
        self.feature_set = frozenset(self.features)
        self.streams = streams
        self.link, self.alarms, self.outbox, self.twin = link, alarms, outbox, twin
        # a baseline spans at least one window (the stream table's rule), so a device's first scored row has its own
        self.baseline_rows = max(cfg.baseline_rows or settings.data.train_rows, settings.data.window, 2) \
            if settings.data.baseline == "run" else 0
        self.max_devices = cfg.max_devices
        self.batch_wait_s = settings.serving.batch_wait_ms / 1000
        self.queue: queue.Queue = queue.Queue(maxsize=cfg.queue_messages)
        self.refused: collections.Counter = collections.Counter()
        self.counts = collections.Counter()  # messages, readings, rows_scored, rows_anomalous, baseline_rows
        self._count_lock = threading.Lock()
        self._last_log: dict[str, float] = {}
        self._suppressed: collections.Counter = collections.Counter()
        self.assembler = Assembler(self.features, cfg.tolerance_s, cfg.max_wait_s, cfg.missing, cfg.max_devices,
                                   self.refuse)
        self._collecting: collections.OrderedDict[str, list[np.ndarray]] = collections.OrderedDict()
        self._ready: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

        self.routes = [(TopicFilter(t.topic.replace("{worker}", worker.id)), t.format) for t in cfg.mqtt.topics]
        # what the broker drops before it reaches this worker, and this queue filling up (with MQTT only)
        self.watch = BrokerWatch(self.queue) if link is not None else None

    @property
    def subscriptions(self) -> list[str]:
        """The MQTT topic filters device data comes from (ingest.mqtt.topics)."""
        return [f.pattern for f, _ in self.routes]

    @property
    def taps(self) -> dict:
        """Exact MQTT topics whose messages go to their own handler (the broker's $SYS counters), not to parsing."""
        return self.watch.taps if self.watch is not None else {}

    # -- life -----------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
        self._thread.start()
        if self.watch:
            self.watch.start()

    def stop(self) -> None:
        """Graceful, once no more input comes (the link stopped first): the queued messages are still scored, so
        their alarm events reach the outbox."""
        if self.watch:
            self.watch.stop()
        self._stop.set()
        if self._thread:
            self._thread.join(30)

    # -- input ----------------------------------------------------------------------------------------------------
    def on_message(self, topic: str, payload: bytes) -> None:
        """paho's thread: queue the raw message (parsing happens on the ingestion thread)."""
        self._enqueue((topic, payload, time.time()), f"topic {topic}")

    def push(self, reading: Reading) -> bool:
        """The HTTP push route: a reading it parsed. False if the queue is full (refused and counted)."""
        return self._enqueue(reading, f"HTTP push {reading.device}")

    def _enqueue(self, item, where: str) -> bool:
        try:
            self.queue.put_nowait(item)
            return True
        except queue.Full:
            self.refuse("queue_full", f"{where}: {self.queue.maxsize} messages already wait to be scored")
            return False

    def refuse(self, reason: str, detail: str) -> None:
        with self._count_lock:
            self.refused[reason] += 1
            now = time.monotonic()
            if now - self._last_log.get(reason, -LOG_EVERY_S) < LOG_EVERY_S:
                self._suppressed[reason] += 1
                return
            self._last_log[reason] = now
            more = self._suppressed.pop(reason, 0)
        log.warning("refused (%s): %s%s", reason, detail, f" (and {more} more since the last line)" if more else "")

    def _count(self, **amounts: int) -> None:
        with self._count_lock:
            self.counts.update(amounts)

    # -- the ingestion thread -------------------------------------------------------------------------------------
    def _run(self) -> None:
        next_tick = time.monotonic() + TICK_S
        while True:
            if not self._model_served():  # a restarting worker: hold what arrives (the queue is bounded) until its
                if self._stop.wait(TICK_S):  # persisted model is served, instead of refusing rows as no_model
                    return
                continue
            items = self._arrived()
            if not items and self._stop.is_set():
                return
            rows = []
            for item in items:
                try:
                    rows += self._take(item)
                except Exception:  # a bug must not end ingestion, nor cost the other messages: log it with the item
                    log.exception("ingestion failed on %s", item[0] if isinstance(item, tuple) else item)
            try:
                if time.monotonic() >= next_tick:
                    rows += self.assembler.expire(time.time())
                    next_tick = time.monotonic() + TICK_S
                if rows:
                    self._score(rows)
            except Exception:
                log.exception("ingestion failed scoring %d row(s) of %s", len(rows),
                              ", ".join(sorted({r.device for r in rows})[:5]))

    def _arrived(self) -> list:
        """What waits in the queue, and what arrives within ``batch_wait_s`` of the first (at most
        ``MAX_BATCH_ITEMS``): rows that arrive together are scored in one model run. Empty after a quiet tick."""
        try:
            items = [self.queue.get(timeout=TICK_S)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.batch_wait_s
        while len(items) < MAX_BATCH_ITEMS:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    items.append(self.queue.get(timeout=left))
                except queue.Empty:
                    break
        return items

    def _model_served(self) -> bool:
        slot = getattr(self.streams, "slot", None)  # the worker's StreamTable; a bare scorer in unit tests has none
        return slot is None or slot.current is not None

    def _take(self, item) -> list[Row]:
        if isinstance(item, tuple):
            topic, payload, arrival = item
            self._count(messages=1)
            readings = self._parse(topic, payload, arrival)
        else:
            readings = [item]
        rows = []
        for reading in readings:
            self._count(readings=1)
            rows += self.assembler.add(reading, time.time())
        return rows

    def _parse(self, topic: str, payload: bytes, arrival: float) -> list[Reading]:
        for topic_filter, fmt in self.routes:
            captured = topic_filter.match(topic)
            if captured is not None:
                try:
                    return parse(fmt, f"topic {topic}", payload, self.feature_set, *captured, now=arrival)
                except Refused as exc:
                    self.refuse(exc.reason, exc.detail)
                    return []
        self.refuse("bad_payload", f"topic {topic}: matches no configured subscription")
        return []

    def _score(self, rows: list[Row]) -> None:
        """Each device's rows (in order) as one request; all devices' requests in one model run."""
        devices: dict[str, list[Row]] = {}
        for row in rows:
            devices.setdefault(row.device, []).append(row)
        requests = []
        for device, group in devices.items():
            values, times, baseline = self._past_baseline(device, np.stack([r.values for r in group]),
                                                          [r.timestamp for r in group])
            if len(values):
                requests.append(StreamRequest(device, values, baseline, times))
        if not requests:
            return
        for request, result in zip(requests, self.streams.score_many(requests)):
            try:
                self._scored(request, result)
            except Exception:  # one device's fault (a bug) must not cost the others their counts and twin reports
                log.exception("ingestion failed on device %s", request.stream)

    def _past_baseline(self, device: str, values: np.ndarray, times: list[float]):
        """A device still collecting its baseline keeps its first rows for it: what is left to score now, and the
        baseline to send with it (None once the stream has its reference)."""
        if not self.baseline_rows:
            return values, times, None
        if device not in self._ready and device not in self._collecting and self._held(device):
            self._mark_ready(device)
        if device in self._ready:
            return values, times, None
        with self._count_lock:  # document() reads the collecting devices from another thread
            collected = self._collecting.setdefault(device, [])
            self._collecting.move_to_end(device)
            while len(self._collecting) > self.max_devices:
                self._collecting.popitem(last=False)
        take = min(self.baseline_rows - len(collected), len(values))
        collected.extend(values[:take])
        self._count(baseline_rows=take)
        values, times = values[take:], times[take:]
        return values, times, np.stack(collected) if len(values) else None

    def _scored(self, request: StreamRequest, result) -> None:
        device, values, times = request.stream, request.rows, request.times
        if isinstance(result, ProtocolError):
            if result.code == errors.BASELINE_ALREADY_SET.code:  # the stream came back meanwhile: it has its reference
                result = self.streams.score(device, values, times=times)
            elif result.code == errors.NO_MODEL.code:
                self.refuse("no_model", f"{device}: {len(values)} row(s) not scored, no model yet")
                return
            else:
                raise result
        if request.baseline is not None:
            with self._count_lock:
                self._collecting.pop(device, None)
            self._mark_ready(device)
        elif self.baseline_rows and result.stream_rows == 0:
            # the stream had been evicted: it came back without a baseline; start one with these rows
            self.streams.forget(device)
            self._ready.pop(device, None)
            with self._count_lock:
                self._collecting[device] = list(values[:self.baseline_rows])
            self._count(baseline_rows=min(len(values), self.baseline_rows))
            log.info("device %s: its stream was evicted, a new baseline starts", device)
            return
        self._count(rows_scored=len(values), rows_anomalous=int(np.count_nonzero(result.flags)))
        if self.twin is not None:
            self.twin.on_scores(device, float(result.scores[-1]), times[-1])

    def _held(self, device: str) -> bool:
        try:
            return bool(self.streams.describe(device).get("baseline"))
        except ProtocolError:  # unknown_stream
            return False

    def _mark_ready(self, device: str) -> None:
        self._ready[device] = None
        self._ready.move_to_end(device)
        while len(self._ready) > self.max_devices:
            self._ready.popitem(last=False)

    # -- reading ----------------------------------------------------------------------------------------------------
    def document(self) -> dict:
        """GET /v1/ingest: counts, refusals by reason, devices waiting for their baseline, the broker link."""
        with self._count_lock:
            counts, refused = dict(self.counts), dict(self.refused)
            collecting = {d: len(r) for d, r in list(self._collecting.items())[-20:]}
        return {"mqtt": {"enabled": self.link is not None,
                         "connected": bool(self.link and self.link.connected.is_set()),
                         "connections": self.link.connections if self.link else 0,
                         "subscriptions": self.subscriptions if self.link else []},
                "counts": {k: counts.get(k, 0) for k in ("messages", "readings", "baseline_rows", "rows_scored",
                                                         "rows_anomalous")},
                "refused": {k: refused.get(k, 0) for k in REASONS if refused.get(k)},
                "rows_carried_forward": self.assembler.carried, "queued": self.queue.qsize(),
                "losses": self.watch.snapshot() if self.watch else None,
                "baseline": {"rows": self.baseline_rows,
                             "collecting": collecting},
                "alarm_outbox": self.outbox.document() if self.outbox else {"pending": 0, "delivered": 0,
                                                                             "dropped": 0, "topic": None},
                "twin": {"enabled": self.twin is not None, "reports": self.twin.reports if self.twin else 0,
                         "topic": TWIN_TOPIC if self.twin else None}}

    def metrics(self) -> dict:
        """What /metrics shows (services.observability.metrics.IngestCollector)."""
        with self._count_lock:
            counts, refused = dict(self.counts), dict(self.refused)
        return {"refused": {k: refused.get(k, 0) for k in REASONS}, "messages": counts.get("messages", 0),
                "rows_scored": counts.get("rows_scored", 0), "rows_anomalous": counts.get("rows_anomalous", 0),
                "alarms_open": {s: 1.0 for s in self.alarms.open_streams()} if self.alarms else {},
                "alarm_events": dict(self.alarms.events) if self.alarms else {},
                "outbox_pending": self.outbox.pending() if self.outbox else 0,
                "outbox_dropped": self.outbox.dropped if self.outbox else 0,
                "mqtt_connected": 1.0 if self.link and self.link.connected.is_set() else 0.0,
                "twin_reports": self.twin.reports if self.twin else 0,
                "queue_depth": self.queue.qsize(), "queue_capacity": self.queue.maxsize,
                "broker": self.watch.snapshot() if self.watch else None}
