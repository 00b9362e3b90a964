"""Worker → aggregator telemetry for the dashboard: counts only, never rows or scores.

Why push, not pull: edge nodes dial out to the aggregator (they may sit behind NAT or a firewall that lets nothing
in), so the aggregator cannot be relied on to reach them. Every ``dashboard.telemetry_interval_s`` a worker posts
its cumulative /detect counts, its open alarms, its phase and the model round it serves to
``POST /v1/workers/{id}/telemetry`` with its own token (the message is services/protocol/messages.py's
``Telemetry``; the aggregator's route hands each report to a ``TelemetryBoard``). The board keeps, per configured
worker, the latest report and anomalies flagged per time bucket, and the enrolled nodes' counts summed as one series
(``ENROLLED``: a fleet of 10,000 would otherwise hold 10,000 series per bucket) — bounded memory, nothing persisted
(a restart starts a new chart).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable

import httpx

from services.protocol.messages import Telemetry

__all__ = ["Telemetry", "TelemetryBoard", "TelemetryReporter", "finite_or_none"]
log = logging.getLogger("fedad.telemetry")
BUCKETS_KEPT = 360  # anomalies-over-time chart: this many buckets of one report interval each
ENROLLED = "(enrolled nodes)"  # the series of every node that is not a worker of config.yaml


class TelemetryBoard:
    """The aggregator's view of its workers' serving: latest report each, and anomalies flagged per bucket."""

    def __init__(self, worker_ids: list[str], bucket_s: float, keep: int = BUCKETS_KEPT):
        self.worker_ids = list(worker_ids)
        self.bucket_s = max(float(bucket_s), 1.0)
        self.latest: dict[str, dict] = {}
        self._known = set(self.worker_ids)
        self._counted: dict[str, tuple[str, int, int]] = {}  # enrolled node → boot id, rows, anomalies last reported
        self.buckets: collections.OrderedDict[float, dict[str, list[int]]] = collections.OrderedDict()
        self.keep = keep
        self._lock = threading.Lock()

    def report(self, worker_id: str, report: Telemetry, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            known = worker_id in self._known
            previous = self.latest.get(worker_id) if known else self._previous(worker_id)
            if previous is None:  # the first report since this aggregator started: a baseline, not a burst
                rows = anomalies = 0
            elif previous["boot_id"] != report.boot_id or report.rows_scored < previous["rows_scored"]:
                rows, anomalies = report.rows_scored, report.anomalies_flagged  # the worker restarted
            else:
                rows = report.rows_scored - previous["rows_scored"]
                anomalies = max(0, report.anomalies_flagged - previous["anomalies_flagged"])
            if known:
                self.latest[worker_id] = {**report.model_dump(), "received_at": now}
            else:
                self._counted[worker_id] = (report.boot_id, report.rows_scored, report.anomalies_flagged)
            bucket = math.floor(now / self.bucket_s) * self.bucket_s
            counts = self.buckets.setdefault(bucket, {})
            slot = counts.setdefault(worker_id if known else ENROLLED, [0, 0])
            slot[0] += rows
            slot[1] += anomalies
            while len(self.buckets) > self.keep:
                self.buckets.popitem(last=False)

    def _previous(self, worker_id: str) -> dict | None:
        counted = self._counted.get(worker_id)
        if counted is None:
            return None
        return {"boot_id": counted[0], "rows_scored": counted[1], "anomalies_flagged": counted[2]}

    def snapshot(self) -> dict:
        """Anomalies and rows per bucket, one aligned series per worker (0 where a worker reported nothing)."""
        with self._lock:
            times = list(self.buckets)
            names = self.worker_ids + ([ENROLLED] if self._counted else [])
            series = {w: [self.buckets[t].get(w, [0, 0])[1] for t in times] for w in names}
            rows = {w: [self.buckets[t].get(w, [0, 0])[0] for t in times] for w in names}
            return {"bucket_s": self.bucket_s, "time": times, "anomalies": series, "rows": rows,
                    "latest": {w: dict(v) for w, v in self.latest.items()}}


class TelemetryReporter:
    """A worker's background thread posting ``snapshot()`` every ``interval`` seconds; never stops the worker."""

    def __init__(self, base_url: str, worker_id: str, token: str, interval: float, snapshot: Callable[[], dict],
                 verify=True):
        self.base_url, self.worker_id, self.interval = base_url, worker_id, interval
        self.headers = {"Authorization": f"Bearer {token}"}
        self.snapshot, self.verify = snapshot, verify
        self.stop_event = threading.Event()
        self.sent = 0
        self._failing = False

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=f"telemetry-{self.worker_id}", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        path = f"/v1/workers/{self.worker_id}/telemetry"
        with httpx.Client(base_url=self.base_url, timeout=5, verify=self.verify, headers=self.headers) as client:
            while not self.stop_event.wait(self.interval if self.sent else min(self.interval, 1.0)):
                try:
                    response = client.post(path, json=self.snapshot())
                except httpx.HTTPError as exc:
                    self._failed(f"aggregator unreachable: {exc}")
                    continue
                except Exception:  # a report is not worth the thread: say so once and try again next time
                    if not self._failing:
                        log.exception("cannot build or send the telemetry report")
                    self._failing = True
                    continue
                if response.status_code == 404:
                    log.info("the aggregator at %s takes no telemetry (404): the dashboard will not show this "
                             "worker's /detect counts", self.base_url)
                    return
                if response.status_code >= 400:
                    self._failed(f"aggregator refused telemetry ({response.status_code}): {response.text[:200]}")
                    continue
                if self._failing and self.sent:
                    log.info("telemetry reaches the aggregator again")
                self._failing = False
                self.sent += 1

    def _failed(self, why: str) -> None:
        if not self._failing:  # once per outage: the federation loop already says when the aggregator is away
            level = logging.WARNING if self.sent else logging.DEBUG  # at start-up the aggregator may not be up yet
            log.log(level, "%s; the dashboard misses this worker's counts until it answers", why)
        self._failing = True


def finite_or_none(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
