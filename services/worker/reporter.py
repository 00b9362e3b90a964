"""What a worker tells the aggregator between rounds (``WorkerReport``): rows it has not trained on yet, a drift that
asks for a round, the model versions it serves or refused.

Sent from a thread of its own, because the federation loop may sit in a 30 s long-poll while new files arrive: the
report is built about once a second and sent when it differs from the last one delivered, at most every
``min_interval_s``, and at once (still rate-limited) when the loop asks after a round or a model change. Counts and
figures only, never rows.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from services.protocol.messages import WorkerReport

log = logging.getLogger("fedad.worker")


class Reporter:
    """Sends ``build()`` through ``send`` (True = delivered) when it changed; ``nudge`` asks for a send soon."""

    def __init__(self, build: Callable[[], WorkerReport], send: Callable[[WorkerReport], bool],
                 min_interval_s: float = 2.0, tick_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self._build = build
        self._send = send
        self.min_interval_s = min_interval_s
        self.tick_s = tick_s
        self._clock = clock
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._force = False
        self.last_sent: WorkerReport | None = None
        self._last_sent_at = float("-inf")
        self.sent = 0  # reports delivered
        self._thread: threading.Thread | None = None

    def start(self, name: str = "reporter") -> None:
        """Start the thread (again a no-op)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def nudge(self, force: bool = False) -> None:
        """Look at the report soon; ``force`` sends it even if unchanged (after a round: the aggregator learns
        that the rows trained on are no longer new). Safe from any thread."""
        if force:
            self._force = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.tick_s)
            self._wake.clear()
            if self._stopped.is_set():
                return
            try:
                self.step()
            except Exception:  # a report is advice: its failure must never stop the thread
                log.exception("building or sending the worker report failed")

    def step(self) -> bool:
        """One look: build the report and send it if it changed (or a send is forced) and the last send is at least
        ``min_interval_s`` old. True if a report was delivered."""
        if self._clock() - self._last_sent_at < self.min_interval_s:
            return False  # a forced send stays asked for: the next look (within tick_s) takes it
        force, self._force = self._force, False
        report = self._build()
        if not force and report == self.last_sent:
            return False
        if not self._send(report):
            self._force = self._force or force  # try again at the next look
            return False
        self.last_sent, self._last_sent_at = report, self._clock()
        self.sent += 1
        return True
