"""A site aggregator's link to its upstream (``aggregator.role: site``): one worker upstream, an aggregator below.

The same aggregator serves the worker API to its node group; this task makes it one worker of the aggregator above
(``aggregator.upstream``: its URL, and the site's id and token there; with tls.enabled it presents the certificate
``tls.dir/<id>.crt``):

1. Once ``min_workers`` of its nodes have joined, it joins upstream with their merged scaling statistics and their
   summed sample counts, and takes the upstream's scaler (the federation's) for its nodes.
2. It long-polls the upstream's ``GET /v1/round``. When the upstream opens round r for it, the site opens round r for
   its nodes (a sample of them with ``federation.clients_per_round``); it closes as a continual round does (every
   live node has sent, or the deadline with a quorum), and its aggregate waits in the outbox (on disk).
3. It sends the outbox as one update: the aggregate's weights, the contributors' summed sample counts, their mean
   loss. It joins again first when its nodes' samples grew past what it declared.
4. When the upstream publishes model r, the site adopts it: its nodes install it through their gates as from any
   aggregator. The upstream's fleet directives are relayed the same way.

A site that loses its upstream keeps serving its nodes: they pull the last model, report, send updates; the site
closes its round and keeps the aggregate. Reconnected, it sends it, or, if the upstream moved on (409), drops it and
adopts the newest model: it catches up in one step. The site reports upstream what its nodes report (rows not yet
trained on, drift) so the root's continual triggers see the whole fleet, and how many nodes followed a directive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
import numpy as np

from services.aggregator.rounds import Federation
from services.config import Settings
from services.protocol import errors
from services.protocol.codec import CONTENT_TYPE, content_hash, decode_weights, encode_weights
from services.protocol.errors import error_of
from services.protocol.messages import (
    H_LOSS,
    H_ROUND,
    H_SAMPLES,
    H_SHA256,
    DirectiveResult,
    JoinRequest,
    JoinResponse,
    RoundState,
    WorkerReport,
)
from services.protocol.scaling import FeatureStats
from services.security.tls import client_context

log = logging.getLogger("fedad.aggregator")
LONG_POLL_S = 30.0
MAX_BACKOFF_S = 15.0
MOVED_ON = {errors.STALE_ROUND.code, errors.NO_OPEN_ROUND.code, errors.TOO_STALE.code, errors.NOT_SAMPLED.code,
            errors.FUTURE_ROUND.code}


class UpstreamRefused(Exception):
    """The upstream refused a request with a code: ``code`` says which."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code


class Uplink:
    def __init__(self, settings: Settings, federation: Federation, wake=lambda: None):
        self.settings = settings
        self.federation = federation
        self.wake = wake  # the publisher's check: long-polling nodes learn of an adopted model or an opened round
        self.upstream = settings.aggregator.upstream
        self.url, self.site_id = str(self.upstream.url), str(self.upstream.id)  # required by role site
        self.client = httpx.AsyncClient(  # opened by run(), in the event loop
            base_url=self.url, timeout=LONG_POLL_S + 15, verify=client_context(settings.tls, self.site_id),
            headers={"Authorization": f"Bearer {self.upstream.token}"})
        self.connected = False
        self.last_error: str | None = None
        self.declared_samples = 0  # the sample count of the site's last join upstream
        self.pushed_round = 0  # the last round whose aggregate the upstream took
        self.last_report: WorkerReport | None = None
        self._backoff = 0.5
        self._outbox_ready = asyncio.Event()  # set when a round's aggregate lands in the outbox
        federation.outbox_listeners.append(self._outbox_ready.set)

    def status(self) -> dict:
        return {"url": self.url, "id": self.site_id, "connected": self.connected,
                "last_error": self.last_error, "declared_samples": self.declared_samples,
                "pushed_round": self.pushed_round}

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.step()
                    if not self.connected:
                        log.info("upstream %s reached as %s", self.url, self.site_id)
                    self.connected, self.last_error, self._backoff = True, None, 0.5
                except (httpx.HTTPError, UpstreamRefused, ValueError) as exc:
                    if self.connected or self.last_error != str(exc):
                        log.warning("upstream %s: %s; retrying, the site keeps serving its nodes", self.url,
                                    exc)
                    self.connected, self.last_error = False, str(exc)
                    await asyncio.sleep(self._backoff)
                    self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
        finally:
            await self.client.aclose()

    async def step(self) -> None:
        fed = self.federation
        if fed.state.scaler is None or self._samples() > self.declared_samples:
            if not await self.join():
                await asyncio.sleep(1.0)
                return
        if fed.outbox is not None and self.pushed_round < fed.outbox["round"]:
            await self.push()
        state = await self._poll(fed.rounds_done)
        if state is None:
            return  # an aggregate is ready: the next step sends it
        fed.adopt_directive(state.directive.model_dump() if state.directive else None)
        if state.rounds_done > fed.rounds_done:
            round_no, weights = await self.pull()
            if round_no > fed.rounds_done:
                fed.adopt(round_no, weights)
                self.wake()
            return
        if state.phase == "training" and state.open_round == fed.open_round and state.sampled is not False:
            fed.open_upstream_round(state.open_round)
            self.wake()
        await self.report()

    async def _poll(self, after: int) -> RoundState | None:
        """The upstream's long-poll, cut short (None) when this site's round closes and its aggregate is ready."""
        self._outbox_ready.clear()
        fed = self.federation
        if fed.outbox is not None and self.pushed_round < fed.outbox["round"]:
            return None
        poll = asyncio.ensure_future(self.round_state(after, LONG_POLL_S))
        ready = asyncio.ensure_future(self._outbox_ready.wait())
        try:
            await asyncio.wait({poll, ready}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if poll.done():
            return poll.result()
        poll.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError, UpstreamRefused):
            await poll
        return None

    # -- one request each ---------------------------------------------------------------------------------------------
    async def join(self) -> bool:
        """Join upstream with the nodes' statistics; True once the upstream's scaler is known."""
        fed = self.federation
        upstream = fed.state.upstream or {}
        stats = upstream.get("stats")
        if stats is None:
            entries = [e for _, e in fed.members.items() if "stats" in e]
            if len(entries) < fed.fed.min_workers:
                return False  # not enough nodes yet to speak for the site
            stats = FeatureStats.merge([FeatureStats(**e["stats"]) for e in entries]).model_dump()
        samples = max(1, self._samples())
        request = JoinRequest(spec_hash=fed.spec_hash, sample_count=samples, stats=FeatureStats(**stats))
        answer = await self._call("POST", f"/v1/workers/{self.site_id}/join", json=request.model_dump())
        joined = JoinResponse.model_validate(answer.json())
        self.declared_samples = samples
        fed.upstream_joined(joined.scaler.model_dump() if joined.scaler else None, joined.rounds_total,
                            joined.phase != "done", stats)
        self.wake()
        return joined.scaler is not None

    async def round_state(self, after: int, wait: float) -> RoundState:
        answer = await self._call("GET", "/v1/round", params={"after": after, "wait": wait})
        return RoundState.model_validate(answer.json())

    async def pull(self) -> tuple[int, np.ndarray]:
        answer = await self._call("GET", "/v1/model")
        return int(answer.headers[H_ROUND]), decode_weights(answer.content, self.federation.n_params,
                                                            answer.headers.get(H_SHA256))

    async def push(self) -> None:
        fed = self.federation
        meta, weights = fed.outbox, fed.outbox_weights()
        if meta is None or weights is None:
            return
        if meta["sample_count"] > self.declared_samples:
            await self.join()
        body = encode_weights(weights)
        headers = {"Content-Type": CONTENT_TYPE, H_SAMPLES: str(min(meta["sample_count"], self.declared_samples)),
                   H_LOSS: repr(float(meta["loss"])), H_SHA256: content_hash(body)}
        try:
            await self._call("POST", f"/v1/rounds/{meta['round']}/updates", content=body, headers=headers)
        except UpstreamRefused as refused:
            if refused.code in MOVED_ON:
                log.info("the upstream moved on without round %d's aggregate (%s): dropped; adopting its newest "
                         "model", meta["round"], refused.code)
                fed.outbox_refused()
                return
            if refused.code in (errors.NOT_JOINED.code, errors.TOO_MANY_SAMPLES.code):
                self.declared_samples = 0  # join again, then send
            raise
        self.pushed_round = meta["round"]
        log.info("round %d's aggregate taken upstream (%d samples from %d updates)", meta["round"],
                 meta["sample_count"], meta["record"].get("contributors", 0))

    async def report(self) -> None:
        """What the site's nodes report, summed, when it changed: the root's continual triggers see the fleet."""
        fed = self.federation
        reports = fed.reports
        directive = fed.state.directive
        result = None
        if directive is not None:
            followed = fed.directive_status() or {}
            result = DirectiveResult(seq=directive["seq"], status="applied",
                                     detail=f"relayed to {len(fed.members)} nodes: {followed.get('applied', 0)} "
                                            f"applied, {followed.get('refused', 0)} refused")
        report = WorkerReport(new_rows=sum(r.new_rows for r in reports.fresh.values()), drift=bool(reports.drifting),
                              served_round=fed.rounds_done or None, directive=result)
        if report == self.last_report:
            return
        with contextlib.suppress(UpstreamRefused):  # advice: an upstream without reports is no failure
            await self._call("POST", f"/v1/workers/{self.site_id}/report", json=report.model_dump(mode="json"))
            self.last_report = report

    async def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        answer = await self.client.request(method, path, **kwargs)
        if answer.is_error:
            problem = error_of(answer.content)
            raise UpstreamRefused(problem.code, f"{method} {path} answered {answer.status_code}: {problem.detail}")
        return answer

    def _samples(self) -> int:
        fed = self.federation
        return sum(int(e.get("sample_count", 0)) for w, e in fed.members.items() if w in fed.trainers())
