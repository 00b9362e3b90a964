"""The aggregator's FastAPI app: assembles the round state, the routes (routes/), their dependencies (deps.py), the
error answers and the observability that watches them.

Every refusal is ``{"code": ..., "detail": ...}`` with a stable code from services/protocol/errors.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from services import logs
from services.aggregator import strategies
from services.aggregator.deps import identify
from services.aggregator.enrollment import EnrollmentCheck, NodeRegistry
from services.aggregator.publisher import Publisher
from services.aggregator.rounds import Federation
from services.aggregator.routes import (
    admin,
    enroll,
    fast,
    fleet,
    fleet_admin,
    model,
    report,
    round_state,
    status,
    telemetry,
    updates,
    workers,
)
from services.aggregator.site import Uplink
from services.aggregator.store import AggregatorStore
from services.config import Settings
from services.observability.dashboard import AggregatorObservability
from services.observability.metrics import NO_FRAMEWORK_TELEMETRY
from services.protocol import errors
from services.protocol.errors import ProtocolError
from services.security.admin import AdminCheck
from services.security.tokens import TokenTable

log = logging.getLogger("fedad.aggregator")
# Refusals raised by Starlette itself (unknown route, wrong method, a body FastAPI cannot read), by status.
HTTP_EXCEPTION_CODES = {400: errors.UNREADABLE_BODY, 404: errors.NOT_FOUND, 405: errors.METHOD_NOT_ALLOWED}


def describe_validation(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line, e.g. 'header X-Sample-Count: Input should be a valid integer'."""
    parts = []
    for e in exc.errors():
        where = " ".join(str(p) for p in e.get("loc", ()))
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def refuse(request: Request, http_status: int, code: str, detail: str,
           headers: Mapping[str, str] | None = None) -> JSONResponse:
    """Log, count and answer one refusal."""
    log.warning("%s %s refused (%d): %s [%s]", request.method, request.url.path, http_status, detail, code)
    request.app.state.observer.refused(request.url.path, http_status, code)
    return JSONResponse({"code": code, "detail": detail}, status_code=http_status, headers=headers)


async def _protocol_error(request: Request, exc: ProtocolError) -> JSONResponse:
    return refuse(request, exc.status, exc.code, exc.detail)


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    return refuse(request, 422, errors.INVALID_REQUEST.code, describe_validation(exc))


async def _http_exception(request: Request, exc: HTTPException) -> JSONResponse:
    error = HTTP_EXCEPTION_CODES.get(exc.status_code,
                                     errors.INTERNAL_ERROR if exc.status_code >= 500 else errors.INVALID_REQUEST)
    return refuse(request, exc.status_code, error.code, str(exc.detail), headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug: the traceback goes to the log (Starlette re-raises it after this answer), the client gets the code."""
    return JSONResponse({"code": errors.INTERNAL_ERROR.code, "detail": f"internal error ({type(exc).__name__})"},
                        status_code=500)


def create_app(settings: Settings) -> FastAPI:
    federation = Federation(settings, AggregatorStore(settings.aggregator.state_dir),
                            strategy=strategies.from_settings(settings))
    tokens = TokenTable.from_settings(settings.workers)  # SHA-256 digests only; plaintext tokens are not kept
    nodes = NodeRegistry(settings.aggregator.state_dir)  # enrolled nodes (nodes.log)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.publisher = publisher = Publisher(federation)

        async def ticker():
            while True:
                await asyncio.sleep(1.0)
                federation.tick()
                publisher.check()

        tasks = [asyncio.create_task(ticker())]
        if settings.aggregator.role == "site":
            app.state.uplink = Uplink(settings, federation, publisher.check)
            tasks.append(asyncio.create_task(app.state.uplink.run()))
        log.info("aggregator run %s (%s, %s rounds): %s, round %d (first campaign: %d rounds%s); %d nodes enrolled",
                 federation.state.run_id, settings.aggregator.role, settings.federation.mode, federation.phase,
                 federation.open_round, federation.rounds_total,
                 ", then continual" if settings.federation.continual.enabled else "", len(nodes))
        yield
        for task in tasks:
            task.cancel()

    app = AggregatorApp(title="fedad aggregator", version="1", lifespan=lifespan,
                  description="Federates autoencoder weights from edge workers; never sees a data row. Every "
                              "refusal is `{\"code\", \"detail\"}`; clients branch on `code`.",
                         telemetry=NO_FRAMEWORK_TELEMETRY)
    app.state.tokens, app.state.nodes = tokens, nodes
    app.state.configured_workers = frozenset(w.id for w in settings.workers)
    app.state.enrollment = EnrollmentCheck(settings.enrollment.digest, settings.enrollment.certificates)
    app.state.uplink = None

    def who(token: str) -> str | None:  # for the log context: a revoked node is nobody
        try:
            return identify(app, token)
        except ProtocolError:
            return None

    observability = AggregatorObservability(settings, federation, who, nodes)
    observability.install(app)  # the per-request log context (which worker is calling)
    federation.round_listeners.append(observability.round_closed)
    logs.bind_round(lambda: federation.rounds_done if federation.phase in ("idle", "done") else federation.open_round)
    app.state.federation, app.state.observer = federation, observability
    app.state.admin = AdminCheck(settings.admin)  # control routes: the admin token, never a worker's

    app.exception_handler(ProtocolError)(_protocol_error)
    app.exception_handler(RequestValidationError)(_invalid_request)
    app.exception_handler(HTTPException)(_http_exception)
    app.exception_handler(Exception)(_internal_error)
    for resource in (status, workers, model, round_state, updates, report, telemetry, admin, enroll, fleet,
                     fleet_admin):
        app.include_router(resource.router)
    app.include_router(observability.router())
    return app


class AggregatorApp(FastAPI):
    """The aggregator's FastAPI app, with the two per-round requests of every node answered ahead of the framework
    (routes/fast.py)."""

    async def __call__(self, scope, receive, send) -> None:
        if not await fast.answered(self, scope, receive, send):
            await super().__call__(scope, receive, send)
