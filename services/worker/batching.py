"""Stream requests that arrive together, scored in one model run.

Sixteen devices that each send a row at the same moment are sixteen one-row /detect requests; scored one by one they
cost sixteen session calls (and sixteen takes of the stream table's lock). ``RequestBatcher`` scores the requests
that arrive together in one ``StreamTable.score_many`` call: a request waits while more keep coming, one turn of the
event loop at a time, and never longer than ``serving.batch_wait_ms`` (default 1 ms); a turn that brings no new
request ends the wait at once, so a lone request is not held for the whole bound and an idle event loop never sits
waiting on a timer while clients wait on it. ``MAX_REQUESTS`` at once go without waiting. Each request still gets
exactly its own answer: its stream's rows in order, the same scores as alone (one session call gives each row the
score it gives it alone), its own error. With ``batch_wait_ms: 0`` every request is scored as it comes, unbatched.

Device data over MQTT and HTTP push is batched on the ingestion thread the same way
(services/worker/ingest/pipeline.py): what waits in its queue, plus what arrives within the same bound.
"""

from __future__ import annotations

import asyncio

from services.worker.streams import StreamRequest, StreamTable
from services.worker.watchers import Scored

MAX_REQUESTS = 256  # requests in one model run: a bound on what one flush holds the event loop for


class RequestBatcher:
    """Batches stream requests on the event loop that serves them (the /detect handler's)."""

    def __init__(self, streams: StreamTable, wait_s: float, max_requests: int = MAX_REQUESTS):
        self.streams, self.wait_s, self.max_requests = streams, wait_s, max_requests
        self._pending: list[tuple[StreamRequest, asyncio.Future]] = []
        self._turn: asyncio.Handle | None = None
        self._deadline = 0.0

    async def score(self, request: StreamRequest) -> Scored:
        """The request's own result (raises its ProtocolError), once its batch is scored."""
        if self.wait_s <= 0:
            return self.streams.score(*request)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((request, future))
        if len(self._pending) >= self.max_requests:
            self._flush()
        elif self._turn is None:
            self._deadline = loop.time() + self.wait_s
            self._turn = loop.call_soon(self._next_turn, len(self._pending))
        return await future

    def _next_turn(self, seen: int) -> None:
        """Once per turn of the event loop while requests wait: wait one more turn if the last one brought new
        requests (and the bound is not reached), else score them."""
        loop = asyncio.get_running_loop()
        if len(self._pending) > seen and loop.time() < self._deadline:
            self._turn = loop.call_soon(self._next_turn, len(self._pending))
            return
        self._flush()

    def _flush(self) -> None:
        if self._turn is not None:
            self._turn.cancel()
            self._turn = None
        pending, self._pending = self._pending, []
        if not pending:
            return
        results: list[Scored | Exception]
        try:
            results = list(self.streams.score_many([request for request, _ in pending]))
        except Exception as exc:  # a fault of the scoring itself: every waiting request fails as it would alone
            results = [exc] * len(pending)
        for (_, future), result in zip(pending, results):
            if future.done():  # the client went away meanwhile
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
