"""Prometheus metrics of both services, each app with its own registry (several apps may share a test process).

Label values are closed sets: refusal reason codes chosen in the code (never messages), HTTP status codes the
routes document, closing causes, worker ids from config.yaml. State that already lives in the federation or the
worker (rounds done, phase, model round, threshold, held-out figures) is read at scrape time by a collector, so it
cannot drift from what /v1/status says and survives restarts like that state does.

The worker's /detect counters are plain integers incremented on the event loop (one thread, no lock) and turned
into samples at scrape time: no prometheus-client object is touched on the hot path.
"""

from __future__ import annotations

import collections
import math
import re
import threading
import time
import uuid
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, ProcessCollector,
                               disable_created_metrics, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from starlette.responses import Response

if TYPE_CHECKING:
    from fastapi.telemetry import TelemetryConfig

# FastAPI ≥ 0.165 checks OpenTelemetry's providers on every request (opentelemetry-api is installed for OTLP ingest):
# several µs of environment lookups per request for tracing nobody configured. The services export /metrics instead.
NO_FRAMEWORK_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}

disable_created_metrics()  # *_created series double every counter for no use here

ENDPOINTS = (("updates", re.compile(r"^/v1/rounds/[^/]+/updates$")), ("join", re.compile(r"^/v1/workers/[^/]+/join$")),
             ("telemetry", re.compile(r"^/v1/workers/[^/]+/telemetry$")), ("model", re.compile(r"^/v1/model$")),
             ("enroll", re.compile(r"^/v1/enroll$")))
ROUND_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def endpoint_of(path: str) -> str:
    for name, pattern in ENDPOINTS:
        if pattern.match(path):
            return name
    return "other"


def metrics_response(registry: CollectorRegistry) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _gauge(name: str, doc: str, value, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels) if labels else None)
    if _finite(value) is not None:
        family.add_metric(list(labels.values()) if labels else [], float(value))
    return family


# -- aggregator -------------------------------------------------------------------------------------------------------
class AggregatorMetrics:
    def __init__(self, federation, worker_ids: list[str], nodes=None):
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        self.updates_accepted = Counter("fedad_aggregator_updates_accepted", "Updates accepted into the open round "
                                        "(duplicate: the same bytes sent again, taken once)", ["duplicate"],
                                        registry=registry)
        self.updates_refused = Counter("fedad_aggregator_updates_refused", "Updates refused, by reason code",
                                       ["reason"], registry=registry)
        self.requests_refused = Counter("fedad_aggregator_requests_refused", "Requests refused, by endpoint and "
                                        "HTTP status", ["endpoint", "status"], registry=registry)
        self.update_bytes = Counter("fedad_aggregator_update_received_bytes", "Bytes of update bodies read",
                                    registry=registry)
        self.rounds_completed = Counter("fedad_aggregator_rounds_completed", "Rounds closed by this process, by "
                                        "cause (min_workers | deadline)", ["closed_by"], registry=registry)
        self.round_duration = Histogram("fedad_aggregator_round_duration_seconds", "Time from a round's opening to "
                                        "its close", buckets=ROUND_BUCKETS, registry=registry)
        self.telemetry_reports = Counter("fedad_aggregator_telemetry_reports", "Telemetry reports taken from "
                                         "workers", registry=registry)
        self.enrollments_refused = Counter("fedad_aggregator_enrollments_refused", "Enrollments refused, by reason "
                                           "code", ["reason"], registry=registry)
        registry.register(FederationCollector(federation, worker_ids))
        if nodes is not None:
            registry.register(EnrollmentCollector(nodes))

    def refused(self, path: str, status: int, code: str) -> None:
        """Every refusal carries its stable error code (services/protocol/errors.py): the reason label."""
        endpoint = endpoint_of(path)
        self.requests_refused.labels(endpoint, str(status)).inc()
        if endpoint == "updates":
            self.updates_refused.labels(code).inc()
        elif endpoint == "enroll":
            self.enrollments_refused.labels(code).inc()

    def accepted(self, result: dict) -> None:
        self.updates_accepted.labels("true" if result.get("duplicate") else "false").inc()

    def round_closed(self, record: dict) -> None:
        self.rounds_completed.labels(record["closed_by"]).inc()
        self.round_duration.observe(record["duration_s"])


class FederationCollector:
    """The round state machine's own figures, read at each scrape."""

    def __init__(self, federation, worker_ids: list[str]):
        self.federation = federation
        self.worker_ids = list(worker_ids)

    def describe(self):
        return []  # values appear and go with the state; nothing to check at registration

    def collect(self):
        f = self.federation
        phase = f.phase
        yield _gauge("fedad_aggregator_rounds_done", "Rounds closed and published in this run", f.rounds_done)
        yield _gauge("fedad_aggregator_rounds_planned", "Rounds this run trains (federation.rounds)",
                     f.fed.rounds)
        phases = GaugeMetricFamily("fedad_aggregator_phase", "1 for the current phase", labels=["phase"])
        for name in ("waiting", "training", "idle", "done"):
            phases.add_metric([name], 1.0 if phase == name else 0.0)
        yield phases
        yield _gauge("fedad_aggregator_updates_in_open_round", "Updates received for the open round",
                     len(f.pending))
        yield _gauge("fedad_aggregator_round_deadline_seconds", "Seconds until the open round's deadline",
                     f.deadline() - f.clock() if phase == "training" else None)
        yield _gauge("fedad_aggregator_workers_joined", "Workers that joined this run", len(f.members))
        yield _gauge("fedad_aggregator_live_trainers", "Training workers seen in the last 90 s",
                     len(f.live_trainers()))
        yield _gauge("fedad_aggregator_last_publish_seconds", "Seconds from the last complete round (or full async "
                     "buffer) to its published model: aggregate, persist, publish",
                     f.publish_times[-1] if f.publish_times else None)
        counts = f.counts
        triggered = CounterMetricFamily("fedad_aggregator_rounds_triggered", "Rounds opened by a continual trigger "
                                        "since start, by trigger", labels=["trigger"])
        for trigger in ("schedule", "admin", "new_data", "drift"):
            triggered.add_metric([trigger], counts[f"triggered:{trigger}"])
        yield triggered
        for name, key, doc in (
                ("rounds_skipped", "skipped", "Scheduled rounds skipped for want of new rows since start"),
                ("rounds_sampled", "rounds_sampled", "Rounds opened for a sample of the live nodes since start"),
                ("nodes_sampled", "nodes_sampled", "Nodes drawn into round samples since start (summed over rounds)"),
                ("stale_updates_refused", "stale_refused", "Updates refused as older than federation.max_staleness "
                                                           "versions since start"),
                ("versions_published", "versions_published", "Global models published since start")):
            yield CounterMetricFamily(f"fedad_aggregator_{name}", doc, value=counts[key])
        history = f.state.history
        yield _gauge("fedad_aggregator_last_round_mean_loss", "Sample-weighted mean training loss of the last "
                     "closed round", history[-1]["mean_loss"] if history else None)
        yield _gauge("fedad_aggregator_storage_error", "1 while the state dir refuses writes",
                     1.0 if f.storage_error else 0.0)
        seen = GaugeMetricFamily("fedad_aggregator_worker_last_seen_timestamp_seconds", "When a worker last "
                                 "called (join, update, telemetry), Unix time", labels=["worker"])
        loss = GaugeMetricFamily("fedad_aggregator_worker_last_loss", "A worker's training loss in the last round "
                                 "it contributed to", labels=["worker"])
        last_loss = {w: (f.members.get(w) or {}).get("last_loss") for w in self.worker_ids}
        for worker in self.worker_ids:  # config's workers only: the label set is bounded by config.yaml
            if worker in f.last_seen:
                seen.add_metric([worker], f.last_seen[worker])
            if _finite(last_loss.get(worker)) is not None:
                loss.add_metric([worker], last_loss[worker])
        yield seen
        yield loss


class EnrollmentCollector:
    """The enrolled-node registry's figures, read at each scrape."""

    def __init__(self, nodes):
        self.nodes = nodes

    def describe(self):
        return []

    def collect(self):
        nodes = self.nodes
        yield _gauge("fedad_aggregator_nodes_enrolled", "Nodes enrolled (revoked ones included)", len(nodes))
        yield _gauge("fedad_aggregator_nodes_revoked", "Enrolled nodes revoked", nodes.revoked)
        enrolled = CounterMetricFamily("fedad_aggregator_enrollments", "Enrollment requests taken since start: "
                                       "enrolled (a new node or a new token) or again (an answer sent again)",
                                       labels=["result"])
        for result in ("enrolled", "again"):
            enrolled.add_metric([result], nodes.counts[result])
        yield enrolled


# -- worker -----------------------------------------------------------------------------------------------------------
class DetectStats:
    """/detect counters and the most recent scores, kept as plain Python values on the event loop.

    ``scored`` costs /detect well under a microsecond (~0.4 µs on the development machine, ``flush`` amortised): an
    integer add and two deque appends of references to arrays the handler computed anyway (the scores are copied
    only when a batch is larger than the page shows). Counting
    anomalies and bucketing latencies happen in ``flush``, at most every ``FLUSH_EVERY`` requests and before every
    read (a scrape, a page, a telemetry report), in numpy over the whole backlog. Readers may be other threads (the
    telemetry reporter): deque appends and pops are atomic, and ``flush`` takes a lock that ``scored`` never needs."""

    FLUSH_EVERY = 1024

    def __init__(self, keep: int = 500):
        self.boot_id = uuid.uuid4().hex[:12]
        self.keep = keep
        self.by_status: dict[int, int] = {200: 0}
        self.rows = 0
        self._anomalies = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self._pending: collections.deque = collections.deque()  # (seconds, flags) not yet counted
        self._lock = threading.Lock()
        self._recent: collections.deque = collections.deque(maxlen=keep)  # (time, first row no., threshold, scores)

    def scored(self, scores: np.ndarray, flags: np.ndarray, threshold: float, seconds: float) -> None:
        first = self.rows
        n = len(scores)
        self.rows = first + n
        self._pending.append((seconds, flags))
        if len(self._pending) >= self.FLUSH_EVERY:
            self.flush()
        if n > self.keep:
            first += n - self.keep
            scores = scores[-self.keep:].copy()
        self._recent.append((time.time(), first, threshold, scores))

    def flush(self) -> None:
        with self._lock:
            taken = []
            try:
                while True:
                    taken.append(self._pending.popleft())
            except IndexError:
                pass
            if not taken:
                return
            seconds = np.fromiter((t[0] for t in taken), dtype=np.float64, count=len(taken))
            buckets = np.bincount(np.searchsorted(LATENCY_BUCKETS, seconds, side="left"),
                                  minlength=len(LATENCY_BUCKETS) + 1)
            for i, count in enumerate(buckets.tolist()):
                self.latency_counts[i] += count
            self.latency_sum += float(seconds.sum())
            self._anomalies += int(np.count_nonzero(np.concatenate([t[1] for t in taken])))
            self.by_status[200] += len(taken)

    def refused(self, status: int) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1

    @property
    def anomalies(self) -> int:
        self.flush()
        return self._anomalies

    @property
    def requests(self) -> int:
        self.flush()
        return sum(self.by_status.values())

    def recent(self) -> dict:
        """The last ``keep`` scored rows, oldest first: row number, time, score, threshold then in service."""
        parts, n = [], 0
        for entry in reversed(self._recent):
            parts.append(entry)
            n += len(entry[3])
            if n >= self.keep:
                break
        row, t, score, threshold = [], [], [], []
        for when, first, thr, scores in reversed(parts):
            k = len(scores)
            row.extend(range(first, first + k))
            t.extend([when] * k)
            score.extend(np.asarray(scores, dtype=np.float64).tolist())
            threshold.extend([thr] * k)
        cut = max(0, len(row) - self.keep)
        return {"row": row[cut:], "time": t[cut:], "score": score[cut:], "threshold": threshold[cut:]}


class WorkerMetrics:
    def __init__(self, worker_id: str, loop, detector, stats: DetectStats, streams=None):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(WorkerCollector(worker_id, loop, detector, stats, streams))


class WorkerCollector:
    def __init__(self, worker_id: str, loop, detector, stats: DetectStats, streams=None):
        self.worker_id, self.loop, self.detector, self.stats = worker_id, loop, detector, stats
        self.streams = streams  # services/worker/streams.StreamTable

    def describe(self):
        return []

    def collect(self):
        s, loop, model = self.stats, self.loop, self.detector.current
        s.flush()
        info = InfoMetricFamily("fedad_worker", "This edge node", labels=["worker", "model"])
        info.add_metric([self.worker_id, model.kind if model else "none"], {})
        yield info
        requests = CounterMetricFamily("fedad_worker_detect_requests", "/detect requests by HTTP status",
                                       labels=["status"])
        for status, count in sorted(s.by_status.items()):
            requests.add_metric([str(status)], count)
        yield requests
        yield CounterMetricFamily("fedad_worker_detect_rows_scored", "Rows scored by /detect", value=s.rows)
        yield CounterMetricFamily("fedad_worker_detect_anomalies_flagged", "Rows /detect flagged as anomalies "
                                  "(score above the threshold)", value=s.anomalies)
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS, math.inf), s.latency_counts):
            cumulative += count
            buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
        yield HistogramMetricFamily("fedad_worker_detect_latency_seconds", "Time /detect took from reading the "
                                    "body to a serialised answer", buckets=buckets, sum_value=s.latency_sum)
        if self.streams is not None:
            yield _gauge("fedad_worker_streams", "Streams held (per-stream rows and reference)", len(self.streams))
            yield CounterMetricFamily("fedad_worker_streams_evicted", "Streams evicted as least recently used "
                                      "beyond streams.max_streams", value=self.streams.evicted)
        yield _gauge("fedad_worker_model_round", "Federated round of the model /detect serves",
                     model.model_round if model else None)
        yield _gauge("fedad_worker_threshold", "Anomaly threshold of the model in service",
                     model.threshold if model else None)
        shelf = getattr(loop, "models", None)
        latest = shelf.state.latest if shelf is not None and shelf.state is not None else None
        yield _gauge("fedad_worker_model_latest_refused", "1 while the gate refused the newest installed model "
                     "version (an older one serves)", None if latest is None else float(latest.status == "refused"))
        trained = getattr(loop, "last_training", None) or {}
        yield _gauge("fedad_worker_training_loss", "Mean training loss of the last epoch of the last local round",
                     trained.get("loss"))
        yield _gauge("fedad_worker_training_duration_seconds", "Wall time of the last local round's training process",
                     trained.get("seconds"))
        yield CounterMetricFamily("fedad_worker_training_rounds", "Local rounds trained by this process",
                                  value=getattr(loop, "rounds_trained", 0))
        yield _gauge("fedad_worker_training_peak_rss_bytes", "Peak resident memory of the last local round's training "
                     "process", trained.get("peak_rss_bytes"))
        yield CounterMetricFamily("fedad_worker_training_failures", "Training processes that crashed or were killed "
                                  "(each retried)", value=getattr(loop, "training_failures", 0))
        progress = loop.progress or {}
        yield _gauge("fedad_worker_training_epoch_loss", "Loss of the latest epoch, live during training",
                     progress.get("loss"))
        evaluation = (loop.state.evaluation if loop.state else None) or {}
        yield _gauge("fedad_worker_heldout_f1", "F1 of the served model on this node's held-out rows",
                     evaluation.get("f1"))
        far, mar = _finite(evaluation.get("far")), _finite(evaluation.get("mar"))
        yield _gauge("fedad_worker_heldout_false_alarm_ratio", "False alarm rate on held-out rows (0-1)",
                     far / 100 if far is not None else None)
        yield _gauge("fedad_worker_heldout_missed_alarm_ratio", "Missed alarm rate on held-out rows (0-1)",
                     mar / 100 if mar is not None else None)


class IngestCollector:
    """Device data over MQTT / HTTP push and the alarms, read at each scrape from ``snapshot()`` (the worker's
    ``DeviceIngest.metrics``). Labels stay bounded: refusal reasons are a closed set, and the open-alarm gauge has a
    series only for streams whose alarm is open now (Alertmanager routes on it; a cleared stream's series goes)."""

    def __init__(self, snapshot):
        self.snapshot = snapshot

    def describe(self):
        return []

    def collect(self):
        s = self.snapshot()
        refused = CounterMetricFamily("fedad_worker_ingest_refused", "Device messages or rows not scored, by reason",
                                      labels=["reason"])
        for reason, count in s["refused"].items():
            refused.add_metric([reason], count)
        yield refused
        yield CounterMetricFamily("fedad_worker_ingest_messages", "MQTT messages received", value=s["messages"])
        yield CounterMetricFamily("fedad_worker_ingest_rows_scored", "Device rows scored", value=s["rows_scored"])
        yield CounterMetricFamily("fedad_worker_ingest_rows_anomalous", "Device rows above the threshold",
                                  value=s["rows_anomalous"])
        alarms = GaugeMetricFamily("fedad_worker_alarm_open", "1 while a stream's alarm is open", labels=["stream"])
        for stream, value in sorted(s["alarms_open"].items()):
            alarms.add_metric([stream], value)
        yield alarms
        events = CounterMetricFamily("fedad_worker_alarm_events", "Alarm events, by kind", labels=["event"])
        for kind, count in sorted(s["alarm_events"].items()):
            events.add_metric([kind], count)
        yield events
        yield _gauge("fedad_worker_alarm_outbox_pending", "Alarm events (and device twin reports) waiting for "
                     "delivery", s["outbox_pending"])
        yield CounterMetricFamily("fedad_worker_twin_reports", "Verdicts queued for the devices' KubeEdge twins "
                                  "(twin.enabled)", value=s.get("twin_reports", 0))
        yield CounterMetricFamily("fedad_worker_alarm_outbox_dropped", "Alarm events dropped from a full outbox",
                                  value=s["outbox_dropped"])
        yield _gauge("fedad_worker_mqtt_connected", "1 while connected to the MQTT broker", s["mqtt_connected"])
        yield _gauge("fedad_worker_ingest_queue_depth", "Device messages waiting to be scored", s["queue_depth"])
        yield _gauge("fedad_worker_ingest_queue_capacity", "Messages the ingestion queue holds; beyond, refused "
                     "(queue_full)", s["queue_capacity"])
        broker = s.get("broker") or {}
        dropped = CounterMetricFamily("fedad_worker_mqtt_broker_dropped", "Messages the MQTT broker dropped at its "
                                      "queue limits, all its clients, since it started ($SYS/broker/publish/messages/"
                                      "dropped; no series until the broker reports it)")
        if broker.get("broker_dropped") is not None:
            dropped.add_metric([], broker["broker_dropped"])
        yield dropped


class LiveDataCollector:
    """The live buffer (normal rows kept for the next rounds) and the drift tests of the streams, read at each
    scrape; no series when they are switched off (buffer.enabled, drift.enabled: the families stay, empty)."""

    def __init__(self, buffer, drift):
        self.buffer, self.drift = buffer, drift  # services/worker/buffer.LiveBuffer, drift.DriftWatch, or None

    def describe(self):
        return []

    def collect(self):
        buffer, drift = self.buffer, self.drift
        yield _gauge("fedad_worker_buffer_rows", "Live rows kept for the next rounds' training (scored normal, away "
                     "from alarms)", len(buffer) if buffer is not None else None)
        added = CounterMetricFamily("fedad_worker_buffer_rows_added", "Live rows kept since the state dir began")
        if buffer is not None:
            added.add_metric([], buffer.added)
        yield added
        events = CounterMetricFamily("fedad_worker_drift_events", "Drift signals of the streams' Page-Hinkley tests "
                                     "since this process started")
        if drift is not None:
            events.add_metric([], drift.events)
        yield events
