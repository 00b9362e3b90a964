"""Loss the worker cannot see in its own counts: messages the broker dropped before they reached it, and its own
ingestion queue filling up.

A broker that keeps a subscriber's QoS 1 messages queues at most ``max_queued_messages`` (and ``max_queued_bytes``)
per client beyond the ``max_inflight_messages`` window; what comes on top is dropped, silently for the subscriber.
Mosquitto counts those drops, for all its clients together, in ``$SYS/broker/publish/messages/dropped`` (published
every ``sys_interval`` seconds, 10 by default). This watcher takes that counter from the worker's MQTT link (its
``taps``, handed to the link when it starts), exposes it and the ingestion queue's depth as metrics, and warns in the
log when either says rows are being lost (at most once per ``warn_every_s`` for each). A broker whose ACLs hide
``$SYS`` leaves the broker figures unknown (null in /v1/ingest, no series in /metrics), which is said once in the
log after ``SILENT_AFTER_S``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

log = logging.getLogger("fedad.worker.broker")
TOPICS = {"$SYS/broker/publish/messages/dropped": "dropped", "$SYS/broker/publish/messages/received": "received"}
QUEUE_WARN_SHARE = 0.8  # the ingestion queue this full: warn before rows are refused (queue_full)
SILENT_AFTER_S = 60.0  # six of Mosquitto's default sys_interval


class BrokerWatch:
    def __init__(self, ingest_queue: queue.Queue, interval_s: float = 5.0, warn_every_s: float = 60.0):
        self.queue, self.interval, self.warn_every = ingest_queue, interval_s, warn_every_s
        self.broker: dict[str, int] = {}  # the broker's own counters, as last reported
        self.dropped_since_start = 0  # broker drops seen while this worker was connected (its counter's increments)
        self.queue_peak = 0
        self._lock = threading.Lock()
        self._last_warned: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.taps = {topic: self._on_sys for topic in TOPICS}  # for the MQTT link: $SYS topic -> handler

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="broker-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _on_sys(self, topic: str, payload: bytes) -> None:
        """paho's thread: one $SYS counter."""
        try:
            value = int(payload.decode().strip())
        except ValueError:
            return
        name = TOPICS[topic]
        with self._lock:
            before = self.broker.get(name)
            self.broker[name] = value
            if name != "dropped" or before is None:
                return
            new = value - before if value >= before else value  # smaller: the broker restarted
            self.dropped_since_start += new
        if new:
            self._warn("broker", f"the MQTT broker dropped {new} message(s) since its last report ({value} since it "
                       "started, $SYS/broker/publish/messages/dropped, all its clients): a subscriber's queue was "
                       "full (max_queued_messages / max_queued_bytes in mosquitto.conf); those rows never reach "
                       "this worker")

    def _run(self) -> None:
        started, said = time.monotonic(), False
        while not self._stop.wait(self.interval):
            self.check_queue()
            if not said and "dropped" not in self.broker and time.monotonic() - started > SILENT_AFTER_S:
                said = True
                log.info("the MQTT broker has not reported $SYS/broker/publish/messages/dropped in %.0f s (not "
                         "Mosquitto, $SYS off or hidden by its ACLs): messages it drops cannot be counted here",
                         SILENT_AFTER_S)

    def check_queue(self) -> None:
        depth, capacity = self.queue.qsize(), self.queue.maxsize
        self.queue_peak = max(self.queue_peak, depth)
        if capacity and depth >= QUEUE_WARN_SHARE * capacity:
            self._warn("queue", f"the ingestion queue is {depth / capacity:.0%} full ({depth} of {capacity} "
                       "messages wait to be scored): messages arrive faster than they are scored; when it is full "
                       "they are refused and counted (queue_full)")

    def _warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warned.get(kind, -self.warn_every) >= self.warn_every:
            self._last_warned[kind] = now
            log.warning(message)

    def snapshot(self) -> dict:
        """/v1/ingest and /metrics: the broker's counters (None until it reports them) and the queue."""
        with self._lock:
            broker = dict(self.broker)
            dropped_seen = self.dropped_since_start
        return {"broker_dropped": broker.get("dropped"), "broker_received": broker.get("received"),
                "broker_dropped_while_connected": dropped_seen,
                "queue_depth": self.queue.qsize(), "queue_capacity": self.queue.maxsize,
                "queue_peak": self.queue_peak}
