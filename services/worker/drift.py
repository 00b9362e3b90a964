"""Drift: the scores of a stream's normal rows creep up while its alarms stay quiet.

A machine whose operating point moves slowly (wear, a recalibrated sensor, another season) keeps scoring below the
threshold for a while, but higher and higher: the model describes it less and less well, and the first real fault
will be missed or mixed with false alarms. Per stream, a Page–Hinkley test watches the rows the served model scored
normal and the live buffer kept (services/worker/buffer.py: away from alarms, so a fault's onset is an alarm's
business, not a drift; they reach the test ``buffer.margin_rows`` rows late; without a buffer, every row scored
normal), each as ``score / threshold`` (so ``drift.page_hinkley_delta`` and ``drift.page_hinkley_threshold`` are in
thresholds, the same for every model). It signals an upward change of their mean: the cumulative deviation from the
running mean, less ``delta`` per row and slowly forgotten (factor ``1 - 1e-4`` per row), rising more than ``lambda``
above its lowest point, after at least ``drift.min_rows`` rows. After a signal, and whenever the served model
changes (its scores mean something else), the stream's test starts afresh.

On a drift: the event is counted (``fedad_worker_drift_events_total``, telemetry ``drift_events``, /v1/status and the
worker's page) and logged, and ``drift.action`` says what follows: ``recalibrate`` hands the served model's scores of
the last ``drift.recalibrate_rows`` kept rows (any stream) to ``recalibrate`` (``ModelShelf.recalibrate``: a new
model version with the same weights and a threshold computed on them, served only through the gate). Scores, not
rows: each stream's rows were scored with that stream's own scaling reference (its baseline), which only the stream
table knows. ``retrain`` raises a request the federation loop's report carries to the aggregator
(``WorkerReport.drift``), ``both`` does both, ``none`` only counts. Actions run on a thread of their own: the
scoring path (the event loop, the ingestion thread) only updates the tests.

Why not a library. river's ``PageHinkley`` (and ``ADWIN``) is the well-kept reference, but ``from river.drift import
PageHinkley, ADWIN`` (river 0.26.1) added 82.5 MiB of resident memory to a process that had numpy loaded, took 0.9 s
and pulled scipy in (113 MiB installed with it); the serving process stays lean. The test here is river's update rule
for an increase, written out (``PageHinkley.update`` with ``mode="up"``): on river's own documented example
(tests/worker/test_drift.py) it signals at the same row. ADWIN is not offered: a faithful one is longer than the
problem needs.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from typing import Callable

import numpy as np

from services.worker.watchers import Scored

log = logging.getLogger("fedad.worker.drift")
FORGETTING = 1 - 1e-4  # river's default alpha
KEEP_EVENTS = 20


class PageHinkley:
    """Page–Hinkley test for an increase of the mean (river's rule, mode "up")."""

    def __init__(self, min_instances: int = 30, delta: float = 0.005, threshold: float = 50.0,
                 alpha: float = FORGETTING):
        self.min_instances, self.delta, self.threshold, self.alpha = min_instances, delta, threshold, alpha
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.sum = 0.0
        self.low = float("inf")

    @property
    def statistic(self) -> float:
        return self.sum - self.low if self.n else 0.0

    def update(self, x: float) -> bool:
        """Take one value; True when it signals a change (then the test starts afresh)."""
        self.n += 1
        self.mean += (x - self.mean) / self.n
        self.sum = self.alpha * self.sum + (x - self.mean) - self.delta
        if self.sum < self.low:
            self.low = self.sum
        if self.n >= self.min_instances and self.sum - self.low > self.threshold:
            self.reset()
            return True
        return False


class DriftWatch:
    """The drift tests of the worker's streams (at most ``max_streams``, least recently seen out), their events,
    and the actions they start. Fed either the live buffer's kept rows (``observe_kept`` as its ``on_keep``) or,
    without a buffer, every scored request as a stream watcher (``observe``)."""

    def __init__(self, cfg, max_streams: int = 10_000, recalibrate: Callable[[np.ndarray], object] | None = None):
        self.cfg, self.max_streams = cfg, max_streams
        self.recalibrate = recalibrate  # scores of recent kept rows → a recalibrated model version
        self._scores: collections.deque = collections.deque(maxlen=cfg.recalibrate_rows)  # kept rows, served model
        self._scores_model: tuple | None = None
        self._tests: collections.OrderedDict[str, tuple[tuple, PageHinkley]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.events = 0
        self.by_stream: collections.Counter = collections.Counter()
        self.recent: collections.deque = collections.deque(maxlen=KEEP_EVENTS)
        self.recalibrations = {"done": 0, "failed": 0, "skipped": 0}
        self._retrain = False
        self._actions: queue.Queue = queue.Queue(maxsize=1)  # one waiting action at most: later drifts coalesce
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings, recalibrate: Callable[[np.ndarray], object] | None = None) -> DriftWatch | None:
        if not settings.drift.enabled:
            return None
        return cls(settings.drift, settings.streams.max_streams, recalibrate)

    @property
    def retrains(self) -> bool:
        return self.cfg.action in ("retrain", "both")

    @property
    def recalibrates(self) -> bool:
        return self.cfg.action in ("recalibrate", "both")

    # -- scoring path ------------------------------------------------------------------------------------------------
    def observe(self, scored: Scored) -> None:
        """A scored request (as a stream watcher, when no live buffer hands over the rows it keeps): the tests take
        its rows scored normal."""
        threshold = float(scored.model.threshold)
        if not threshold > 0:
            return
        normal = np.asarray(scored.scores, dtype=np.float64)[~np.asarray(scored.flags, dtype=bool)] / threshold
        model_id = (scored.model.model_round, threshold)
        self.observe_kept(scored.stream, [(x, model_id) for x in normal.tolist()])

    def observe_kept(self, stream: str, kept: list[tuple]) -> None:
        """Rows of ``stream`` as (score / threshold, (model round, threshold)), oldest first."""
        signalled = None
        with self._lock:
            for x, model_id in kept:
                if model_id is None or not model_id[1] > 0:
                    continue
                if model_id != self._scores_model:  # another model serves: its scores mean something else
                    self._scores.clear()
                    self._scores_model = model_id
                self._scores.append(x * model_id[1])
                known = self._tests.get(stream)
                if known is None or known[0] != model_id:  # a new stream, or a new model: its scores start afresh
                    known = (model_id, PageHinkley(self.cfg.min_rows, self.cfg.page_hinkley_delta,
                                                   self.cfg.page_hinkley_threshold))
                    self._tests[stream] = known
                    self._tests.move_to_end(stream)
                    while len(self._tests) > self.max_streams:
                        self._tests.popitem(last=False)
                test = known[1]
                mean, statistic = test.mean, test.statistic
                if test.update(x):
                    signalled = {"stream": stream, "time": time.time(), "model_round": model_id[0],
                                 "threshold": model_id[1], "mean_before": mean, "statistic": statistic,
                                 "score_ratio": x, "action": self.cfg.action}
                    self.events += 1
                    self.by_stream[stream] += 1
                    self.recent.append(signalled)
                    if self.retrains:
                        self._retrain = True
            if stream in self._tests:
                self._tests.move_to_end(stream)
        if signalled is not None:
            self._signalled(signalled)

    def _signalled(self, event: dict) -> None:
        log.warning("drift on stream %s: normal rows score higher than before (running mean %.3g of the threshold, "
                    "Page-Hinkley %.3g); action: %s", event["stream"], event["mean_before"], event["statistic"],
                    event["action"])
        if self.recalibrates:
            try:
                self._actions.put_nowait(event["stream"])
            except queue.Full:  # a recalibration already waits: it will use the newest rows anyway
                pass

    # -- actions -----------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="drift-actions", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._actions.put(None)
            self._thread.join(30)
            self._thread = None

    def _run(self) -> None:
        while True:
            stream = self._actions.get()
            if stream is None:
                return
            try:
                with self._lock:
                    scores = np.asarray(self._scores, dtype=np.float64)
                self.on_drift(stream, scores)
            except Exception:  # never lose the thread: the next drift gets its action
                log.exception("drift on %s: the action failed", stream)

    def on_drift(self, stream: str, recent_scores: np.ndarray) -> None:
        """Recalibrate on the served model's scores of the newest kept rows, if this watch was given a way to
        (``recalibrate``)."""
        if self.recalibrate is None or not len(recent_scores):
            self.recalibrations["skipped"] += 1
            log.info("drift on %s: no recalibration (%s)", stream, "no live rows kept" if self.recalibrate else
                     "this worker cannot recalibrate")
            return
        try:
            self.recalibrate(recent_scores)
            self.recalibrations["done"] += 1
        except Exception:  # a failed recalibration must not stop the next one
            self.recalibrations["failed"] += 1
            log.exception("drift on %s: recalibration on %d scores failed", stream, len(recent_scores))

    # -- what the loop and the pages read ----------------------------------------------------------------------------
    @property
    def pending_retrain(self) -> bool:
        return self._retrain

    def take_retrain_request(self) -> bool:
        """True once per drift (or several since the last call) when drift.action asks for a round."""
        with self._lock:
            wanted, self._retrain = self._retrain, False
        return wanted

    def document(self) -> dict:
        with self._lock:
            return {"method": self.cfg.method, "action": self.cfg.action, "min_rows": self.cfg.min_rows,
                    "events": self.events, "streams_watched": len(self._tests), "pending_retrain": self._retrain,
                    "recalibrations": dict(self.recalibrations), "by_stream": dict(self.by_stream.most_common(20)),
                    "recent": [dict(e) for e in reversed(self.recent)]}
