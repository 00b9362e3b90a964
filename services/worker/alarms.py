"""Alarms: a state per stream with debouncing, and the events that say when it changes, delivered at least once.

One anomalous row is not an alarm (a spike, a sensor glitch); one normal row in a fault does not end it. An alarm
**opens** after ``alarms.open_after`` consecutive anomalous rows of a stream (default 3) and **clears** after
``alarms.clear_after`` consecutive normal rows (default 10) — Grafana's pending period and keep-firing-for. Its start
time is the first of the anomalous rows that opened it; its peak score the highest score until it cleared.

Each change is an event (``opened`` / ``cleared``: alarm id, stream, start time, peak score, threshold, model round,
``top_sensors``) put into an ``Outbox``: one file per event in the worker's state dir (temp → fsync → rename), taken
out only once every sink (the MQTT topic with QoS 1, an optional webhook) acknowledged it. A broker outage or a
worker restart loses nothing; a delivery cut between the broker's acknowledgement and the file's removal is sent
again (at least once: consumers dedupe by ``alarm_id`` and ``event``). The outbox is bounded: beyond
``alarms.outbox_max`` events the oldest is dropped and counted.

The alarm book is a stream watcher (services/worker/watchers.py): it sees every scored request of every stream, from
/detect and from device data alike, where the stream table scores them.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx
import numpy as np
import orjson

from services import atomic
from services.config import Settings, WorkerSettings
from services.worker import twin
from services.worker.watchers import Scored

log = logging.getLogger("fedad.worker.alarms")
OUTBOX_DIR = "alarm-outbox"  # in the worker's state dir


@dataclass
class _StreamAlarm:
    anomalous: int = 0  # consecutive anomalous rows
    normal: int = 0  # consecutive normal rows while open
    run_start: float = 0.0  # time of the first row of the current anomalous run
    run_peak: float = 0.0
    run_top: list | None = None  # top sensors of the run's peak row
    open: dict | None = None  # the open alarm's record


class AlarmBook:
    """Debounced alarm state of every stream. ``observe`` runs under the stream table's lock (one scored request at
    a time, in order); ``document`` and ``open_streams`` may be read from other threads (a snapshot under a lock)."""

    def __init__(self, worker_id: str, open_after: int, clear_after: int, emit: Callable[[dict], None],
                 keep_recent: int = 50, max_streams: int = 10_000):
        self.worker_id, self.open_after, self.clear_after, self.emit = worker_id, open_after, clear_after, emit
        self.max_streams = max_streams
        self._streams: collections.OrderedDict[str, _StreamAlarm] = collections.OrderedDict()
        self._recent: collections.deque = collections.deque(maxlen=keep_recent)  # cleared alarms, newest last
        self._lock = threading.Lock()
        self.events = {"opened": 0, "cleared": 0}

    @classmethod
    def from_settings(cls, settings: Settings, worker: WorkerSettings,
                      emit: Callable[[dict], None] | None) -> AlarmBook:
        """``emit``: where events go (the outbox, and the device twins after it), None: nowhere."""
        cfg = settings.alarms
        return cls(worker.id, cfg.open_after, cfg.clear_after, emit or (lambda event: None), cfg.recent,
                   max_streams=max(settings.ingest.max_devices, settings.streams.max_streams))

    def observe(self, scored: Scored) -> list[dict]:
        """Rows of one stream, oldest first, as scored: update its alarm, emit and return the events. An alarm
        carries the top sensors of its peak row."""
        events = []
        stream, threshold, model_round = scored.stream, scored.model.threshold, scored.model.model_round
        scores = np.asarray(scored.scores, dtype=np.float64).tolist()
        flags = np.asarray(scored.flags, dtype=bool).tolist()
        with self._lock:
            state = self._state(stream)
            for when, score, flag, top in zip(scored.times, scores, flags, scored.top_sensors):
                if flag:
                    state.normal = 0
                    state.anomalous += 1
                    if state.anomalous == 1 or score > state.run_peak:
                        state.run_peak, state.run_top = score, top
                    if state.anomalous == 1:
                        state.run_start = float(when)
                    if state.open is not None:
                        if score > state.open["peak_score"]:
                            state.open["peak_score"] = score
                            state.open["top_sensors"] = list(top or [])
                        state.open["anomalous_rows"] += 1
                        state.open["last_anomalous_time"] = float(when)
                    elif state.anomalous >= self.open_after:
                        state.open = {"alarm_id": uuid.uuid4().hex, "worker": self.worker_id, "stream": stream,
                                      "start_time": state.run_start, "peak_score": state.run_peak,
                                      "threshold": float(threshold), "model_round": int(model_round),
                                      "anomalous_rows": state.anomalous, "last_anomalous_time": float(when),
                                      "top_sensors": list(state.run_top or [])}
                        events.append(self._event("opened", state.open, float(when)))
                else:
                    state.anomalous = 0
                    if state.open is not None:
                        state.normal += 1
                        if state.normal >= self.clear_after:
                            cleared = {**state.open, "end_time": float(when)}
                            events.append(self._event("cleared", cleared, float(when)))
                            self._recent.append(cleared)
                            state.open, state.normal = None, 0
        for event in events:
            self.events[event["event"]] += 1
            log.info("alarm %s: stream %s, start %.3f, peak score %.4g", event["event"], stream,
                     event["start_time"], event["peak_score"])
            self.emit(event)
        return events

    def _event(self, kind: str, record: dict, when: float) -> dict:
        return {"event": kind, "time": when, "published_at": time.time(), **record}

    def _state(self, stream: str) -> _StreamAlarm:
        state = self._streams.get(stream)
        if state is None:
            state = self._streams[stream] = _StreamAlarm()
            if len(self._streams) > self.max_streams:  # forget the least recently seen stream without an open alarm
                for name, other in self._streams.items():
                    if other.open is None and name != stream:
                        del self._streams[name]
                        break
        else:
            self._streams.move_to_end(stream)
        return state

    def open_streams(self) -> dict[str, dict]:
        with self._lock:
            return {name: dict(s.open) for name, s in self._streams.items() if s.open is not None}

    def document(self) -> dict:
        """For /v1/status: the open alarms and the recently cleared ones, newest first."""
        with self._lock:
            open_ = [dict(s.open) for s in self._streams.values() if s.open is not None]
            recent = [dict(r) for r in reversed(self._recent)]
        return {"open_after": self.open_after, "clear_after": self.clear_after, "events": dict(self.events),
                "open": sorted(open_, key=lambda a: a["start_time"], reverse=True), "recent": recent}


class Outbox:
    """Events waiting for delivery, one JSON file each (``<sequence>.json``), delivered oldest first by a thread.

    ``sinks`` maps a sink name to a function that delivers one event and says whether it was acknowledged; an
    event's file records the sinks already done, so a webhook that is down does not make MQTT repeat itself.
    ``topic``: the MQTT topic the events go to, if one of the sinks publishes there (for the documents)."""

    def __init__(self, folder: Path, sinks: dict[str, Callable[[dict], bool]], max_events: int,
                 retry_s: tuple[float, float] = (0.2, 5.0), topic: str | None = None):
        self.folder = Path(folder)
        self.sinks, self.max_events, self.retry_s, self.topic = sinks, max_events, retry_s, topic
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic.remove_stale_temps(self.folder)
        existing = self._files()
        self._next = int(existing[-1].stem) + 1 if existing else 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.dropped = 0
        if existing:
            log.info("%d alarm event(s) left from before: delivering them first", len(existing))

    @classmethod
    def from_settings(cls, settings: Settings, worker: WorkerSettings, link=None) -> Outbox | None:
        """The alarm events' way out: the node's MQTT broker through ``link`` (services/worker/ingest/mqtt.py,
        QoS 1 on ``alarms.topic``; a device twin report on its device's twin topic, services/worker/twin.py) and
        ``alarms.webhook`` (alarm events only); None when neither is configured."""
        cfg = settings.alarms
        sinks: dict[str, Callable[[dict], bool]] = {}
        topic = cfg.topic.replace("{worker}", worker.id) if link is not None else None
        webhook = cfg.webhook or ""

        def publish(event: dict) -> bool:
            if twin.is_twin(event):
                twin_topic, message = twin.topic_and_payload(event)
                return link.publish(twin_topic, orjson.dumps(message), qos=1)
            return link.publish(topic, orjson.dumps(event), qos=1)

        def post(event: dict) -> bool:
            if twin.is_twin(event):
                return True  # the webhook takes alarm events; twin reports are for the node's broker
            return httpx.post(webhook, content=orjson.dumps(event), timeout=5,
                              headers={"content-type": "application/json"}).is_success

        if link is not None:
            sinks["mqtt"] = publish
        if cfg.webhook:
            sinks["webhook"] = post
        if not sinks:
            return None
        return cls(Path(worker.state_dir) / OUTBOX_DIR, sinks, cfg.outbox_max, topic=topic)

    def document(self) -> dict:
        return {"pending": self.pending(), "delivered": self.delivered, "dropped": self.dropped, "topic": self.topic}

    def _files(self) -> list[Path]:
        return sorted((p for p in self.folder.glob("*.json") if p.stem.isdigit()), key=lambda p: int(p.stem))

    def pending(self) -> int:
        return len(self._files())

    def put(self, event: dict) -> None:
        with self._lock:
            path = self.folder / f"{self._next:012d}.json"
            self._next += 1
            atomic.write_json(path, {"event": event, "done": []})
            files = self._files()
            for old in files[:max(0, len(files) - self.max_events)]:
                old.unlink(missing_ok=True)
                self.dropped += 1
                log.warning("alarm outbox full (%d events): oldest event %s dropped", self.max_events, old.name)
        self._wake.set()

    def wake(self) -> None:
        """Try the next delivery now (a sink came back) instead of at the end of the backoff."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="alarm-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        delay = self.retry_s[0]
        while not self._stop.is_set():
            files = self._files()
            if not files:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            if self._deliver(files[0]):
                delay = self.retry_s[0]
                continue
            self._wake.wait(delay)  # a sink is down: retry, backing off up to retry_s[1], or when woken
            self._wake.clear()
            delay = min(delay * 2, self.retry_s[1])

    def _deliver(self, path: Path) -> bool:
        try:
            record = atomic.read_json(path)
        except ValueError:  # cannot happen with atomic writes; never let one bad file block the rest
            log.error("alarm outbox: unreadable %s removed", path.name)
            path.unlink(missing_ok=True)
            return True
        if record is None:  # dropped meanwhile
            return True
        done = list(record["done"])
        for name, deliver in self.sinks.items():
            if name in done:
                continue
            try:
                ok = deliver(record["event"])
            except Exception as exc:  # a sink must never stop the outbox
                log.warning("alarm delivery to %s failed: %s", name, exc)
                ok = False
            if not ok:
                if done != record["done"]:
                    with self._lock:
                        if path.exists():
                            atomic.write_json(path, {"event": record["event"], "done": done})
                return False
            done.append(name)
        with self._lock:
            path.unlink(missing_ok=True)
        self.delivered += 1
        return True
