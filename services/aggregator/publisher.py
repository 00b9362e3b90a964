"""Wakes long-polling workers when a new global model is published."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.aggregator.rounds import Federation

log = logging.getLogger("fedad.aggregator")


class Publisher:
    def __init__(self, federation: Federation):
        self.federation = federation
        self.event = asyncio.Event()
        self.seen = federation.rounds_done

    def check(self) -> None:
        """Called after each update and once a second: wake the waiters if a round closed since the last call."""
        if self.federation.rounds_done != self.seen:
            self.seen = self.federation.rounds_done
            last = self.federation.state["history"][-1] if self.federation.state["history"] else None
            if last:
                log.info("round %d closed (%s): %d updates, mean loss %.5f", last["round"], last["closed_by"],
                         len(last["workers"]), last["mean_loss"], extra={"round": last["round"]})
            self.event.set()
            self.event = asyncio.Event()

    async def wait(self, after_round: int, timeout: float) -> None:
        if self.federation.rounds_done > after_round:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout)
