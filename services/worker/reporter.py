"""What a worker tells the aggregator between rounds (``WorkerReport``): rows it has not trained on yet, a drift that
asks for a round, the model versions it serves or refused.

Sent from a thread of its own, because the federation loop may sit in a 30 s long-poll while new files arrive: the
report is built about once a second (``WorkerLoop.report``) and sent when it differs from the last one delivered,
or when a round was trained since (the aggregator must hear that the rows it trained on are no longer new, even if
the counts look the same), at most every ``min_interval_s``. Counts and figures only, never rows.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from services.protocol.messages import WorkerReport

log = logging.getLogger("fedad.worker")
REPORT_INTERVAL_S = 2.0  # a changed report waits at most this long, and no two are closer


class Reporter:
    """Sends what ``build()`` returns — a report and a generation (rounds trained), or None while there is nothing
    to report — through ``send`` (True = delivered), when either changed since the last delivery."""

    def __init__(self, build: Callable[[], tuple[WorkerReport, int] | None], send: Callable[[WorkerReport], bool],
                 min_interval_s: float = REPORT_INTERVAL_S, tick_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, name: str = "reporter"):
        self._build = build
        self._send = send
        self.min_interval_s = min_interval_s
        self.tick_s = tick_s
        self._clock = clock
        self.name = name
        self._stopped = threading.Event()
        self.last_sent: WorkerReport | None = None
        self._last_generation: int | None = None
        self._last_sent_at = float("-inf")
        self.sent = 0  # reports delivered
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self.tick_s):
            try:
                self.step()
            except Exception:  # a report is advice: its failure must never stop the thread
                log.exception("building or sending the worker report failed")

    def step(self) -> bool:
        """One look: build the report and send it if it or its generation changed and the last send is at least
        ``min_interval_s`` old (a failed send is tried again at the next look). True if a report was delivered."""
        if self._clock() - self._last_sent_at < self.min_interval_s:
            return False
        built = self._build()
        if built is None:
            return False
        report, generation = built
        if report == self.last_sent and generation == self._last_generation:
            return False
        if not self._send(report):
            return False
        self.last_sent, self._last_generation, self._last_sent_at = report, generation, self._clock()
        self.sent += 1
        return True
