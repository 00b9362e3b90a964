"""Wakes long-polling workers when a new global model is published or a round opens."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from services.aggregator.rounds import Federation

log = logging.getLogger("fedad.aggregator")


class Publisher:
    def __init__(self, federation: Federation):
        self.federation = federation
        self.event = asyncio.Event()
        self.seen = federation.rounds_done
        self.seen_phase = federation.phase
        self.seen_directive = federation.state.directive

    def check(self) -> None:
        """Called after each request that may change the rounds and once a second: wake the waiters if a round
        closed or opened (or the phase changed) since the last call."""
        f = self.federation
        if f.rounds_done == self.seen and f.phase == self.seen_phase and f.state.directive == self.seen_directive:
            return
        if f.rounds_done != self.seen:
            last = f.state.history[-1] if f.state.history else None
            if last and last.get("mean_loss") is not None:
                log.info("round %d closed (%s): %d updates, mean loss %.5f", last["round"], last["closed_by"],
                         last.get("contributors", len(last["workers"])), last["mean_loss"],
                         extra={"round": last["round"]})
        self.seen, self.seen_phase, self.seen_directive = f.rounds_done, f.phase, f.state.directive
        self.event.set()
        self.event = asyncio.Event()

    async def wait(self, after_round: int, timeout: float) -> None:
        """Until a model newer than ``after_round`` is published, or ``timeout`` seconds."""
        await self.wait_for(lambda: self.federation.rounds_done > after_round, timeout)

    async def wait_for(self, ready: Callable[[], bool], timeout: float) -> None:
        """Until ``ready()`` holds after a change (checked at each one), or ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not ready():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            event = self.event
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)
