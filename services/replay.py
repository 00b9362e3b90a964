"""A live demo from any configured data set: its held-out rows played as device traffic to the workers' /detect.

Each run (a file of the data set) becomes one device, its stream id ``replay:<run name>``; its rows go one per
request, in the order and at the pace of their timestamps (one second apart when the source has no clock), ``speed``
times faster. A device's first request brings the run's training rows as the stream's baseline, as a real device
would on its first connection. Each worker plays ``lanes`` devices at a time, the next run when one ends, and the
whole set again from the start with ``repeat`` (the streams are forgotten first, so they take their baseline anew;
an alarm a run ended in clears once the replayed rows are normal again).

``AlarmWatcher`` turns the workers' alarms (``/v1/status``) into one line per alarm opened or cleared: what
``fedad run`` and ``fedad replay`` print while the demo plays.
"""

from __future__ import annotations

import heapq
import logging
import re
import threading
import time
from dataclasses import dataclass

import httpx
import numpy as np
import orjson

from services.config import Settings
from services.data.sources import load_node

log = logging.getLogger("fedad.replay")
SAMPLE_S = 1.0  # pace of a source without timestamps
MAX_GAP_S = 60.0  # a longer pause in a run's clock is played as this long
RETRY_S = 1.0


@dataclass
class Device:
    """One run of the data set as a device: the rows it sends and when, relative to its first row (seconds)."""

    worker: str
    url: str  # the worker's /detect
    stream: str
    rows: np.ndarray  # (n, columns) float32: the run's held-out rows
    offsets: np.ndarray  # (n,) seconds after the first row
    baseline: np.ndarray | None  # the run's training rows (its normal start), sent with the first row


def stream_name(run_name: str) -> str:
    """A stream id /detect accepts, from a run's name (``valve1/0.csv`` → ``replay:valve1-0.csv``)."""
    return ("replay:" + re.sub(r"[^A-Za-z0-9_.:-]+", "-", run_name))[:128]


def devices(settings: Settings, worker_ids: list[str] | None = None) -> dict[str, list[Device]]:
    """Every configured worker's runs as devices (held-out rows only), by worker id."""
    out: dict[str, list[Device]] = {}
    max_baseline = settings.serving.max_batch_rows - 1
    for w in settings.workers:
        if worker_ids and w.id not in worker_ids:
            continue
        node = load_node(settings, w)
        url = f"http://{w.host}:{w.port}/detect"
        out[w.id] = []
        for run, mask in zip(node.runs, node.masks):
            rows = np.asarray(run.values[~mask], dtype=np.float32)
            if not len(rows):
                continue
            if run.timestamps is not None:
                seconds = (run.timestamps[~mask] - run.timestamps[~mask][0]) / np.timedelta64(1, "s")
                offsets = np.concatenate([[0.0], np.cumsum(np.clip(np.diff(seconds), 0.0, MAX_GAP_S))])
            else:
                offsets = np.arange(len(rows)) * SAMPLE_S
            baseline = run.values[mask][-max_baseline:] if settings.data.baseline == "run" else None
            if baseline is not None and len(baseline) < max(2, settings.data.window):
                baseline = None  # too short to scale by: the worker's own reference serves
            out[w.id].append(Device(w.id, url, stream_name(run.name), rows, offsets, baseline))
    return out


class Replayer:
    """Plays devices to their workers from one thread: a heap of the next row due per lane."""

    def __init__(self, by_worker: dict[str, list[Device]], speed: float = 20.0, lanes: int = 1,
                 repeat: bool = True, client: httpx.Client | None = None):
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.by_worker, self.speed, self.lanes, self.repeat = by_worker, speed, max(1, lanes), repeat
        self.client = client or httpx.Client(timeout=10)
        self.sent = 0
        self.failed = 0
        self.stop_event = threading.Event()

    def run(self, duration: float | None = None) -> None:
        """Until every device has played (``repeat`` False), ``duration`` seconds passed, or ``stop``."""
        end = time.monotonic() + duration if duration is not None else float("inf")
        heap: list = []  # (due, order, lane state)
        order = 0
        for devs in self.by_worker.values():
            for lane in range(min(self.lanes, len(devs))):
                state = {"queue": devs[lane::self.lanes], "index": 0, "row": 0, "start": time.monotonic()}
                heapq.heappush(heap, (state["start"], order, state))
                order += 1
        while heap and not self.stop_event.is_set():
            due, n, state = heapq.heappop(heap)
            now = time.monotonic()
            if min(due, end) > now:
                self.stop_event.wait(min(due, end) - now)
            if time.monotonic() >= end or self.stop_event.is_set():
                return
            device = state["queue"][state["index"]]
            if not self._send(device, state["row"]):
                heapq.heappush(heap, (time.monotonic() + RETRY_S, n, state))  # the worker is busy or away: retry
                continue
            state["row"] += 1
            if state["row"] == len(device.rows):  # the run has played: the lane's next one
                state["index"], state["row"] = state["index"] + 1, 0
                if state["index"] == len(state["queue"]):
                    if not self.repeat:
                        continue
                    state["index"] = 0
                state["start"] = time.monotonic()
                due = state["start"]
            else:
                due = state["start"] + device.offsets[state["row"]] / self.speed
            heapq.heappush(heap, (due, n, state))

    def stop(self) -> None:
        self.stop_event.set()

    def _send(self, device: Device, row: int) -> bool:
        body = {"stream": device.stream, "samples": device.rows[row:row + 1].tolist()}
        try:
            if row == 0:
                self.client.delete(device.url.replace("/detect", f"/v1/streams/{device.stream}"))
                if device.baseline is not None:
                    body["baseline"] = device.baseline.tolist()
            response = self.client.post(device.url, content=orjson.dumps(body),
                                        headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            self.failed += 1
            log.warning("replay to %s: %s", device.url, exc)
            return False
        if response.status_code != 200:
            self.failed += 1
            log.warning("replay %s row %d to %s: HTTP %d %s", device.stream, row, device.url, response.status_code,
                        response.text[:200])
            return response.status_code < 500 and response.status_code != 429  # a refused row is skipped
        self.sent += 1
        return True


class AlarmWatcher:
    """The workers' alarms as lines: one per alarm opened, one per alarm cleared (polling ``/v1/status``)."""

    def __init__(self, worker_urls: dict[str, str], client: httpx.Client | None = None):
        self.worker_urls = worker_urls
        self.client = client or httpx.Client(timeout=5)
        self.opened: set[str] = set()
        self.cleared: set[str] = set()

    def poll(self) -> list[str]:
        lines = []
        for worker, url in self.worker_urls.items():
            try:
                alarms = self.client.get(f"{url}/v1/status").json().get("alarms")
            except (httpx.HTTPError, ValueError):
                continue
            if not alarms:
                continue
            for alarm in reversed(alarms["open"]):  # oldest first
                if alarm["alarm_id"] not in self.opened:
                    self.opened.add(alarm["alarm_id"])
                    lines.append(f"alarm opened   {worker:<10} {alarm['stream']:<28} peak {alarm['peak_score']:.3g} "
                                 f"(threshold {alarm['threshold']:.3g})  top: {_top(alarm)}")
            for alarm in reversed(alarms["recent"]):
                if alarm["alarm_id"] not in self.cleared:
                    self.cleared.add(alarm["alarm_id"])
                    if alarm["alarm_id"] not in self.opened:  # opened and cleared between two polls
                        self.opened.add(alarm["alarm_id"])
                        lines.append(f"alarm opened   {worker:<10} {alarm['stream']:<28} peak "
                                     f"{alarm['peak_score']:.3g} (threshold {alarm['threshold']:.3g})  "
                                     f"top: {_top(alarm)}")
                    lines.append(f"alarm cleared  {worker:<10} {alarm['stream']:<28} after "
                                 f"{alarm['end_time'] - alarm['start_time']:.0f}s, {alarm['anomalous_rows']} "
                                 f"anomalous rows, peak {alarm['peak_score']:.3g}")
        return lines


def _top(alarm: dict) -> str:
    return ", ".join(f"{t['sensor']} {100 * t['share']:.0f}%" for t in alarm.get("top_sensors") or []) or "-"
