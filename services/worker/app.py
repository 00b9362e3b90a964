"""The worker's FastAPI app, assembled: routes (services/worker/routes), the federation loop beside them, the
streams, observability, and one error shape for every 4xx/5xx: ``{"code": ..., "detail": ...}``."""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from services.config import Settings, WorkerSettings
from services.data.windows import Preprocessing
from services.observability.dashboard import WorkerObservability
from services.observability.metrics import LiveDataCollector
from services.protocol import errors
from services.protocol.errors import ProtocolError
from services.security.admin import AdminCheck
from services.worker.buffer import LiveBuffer
from services.worker.deps import WorkerContext
from services.worker.drift import DriftWatch
from services.worker.loop import WorkerLoop
from services.worker.routes import admin, detect, ingest, otlp, status, streams
from services.worker.serving import ModelSlot
from services.worker.streams import StreamTable

log = logging.getLogger("fedad.worker")
HTTP_CODES = {404: errors.NOT_FOUND.code, 405: errors.METHOD_NOT_ALLOWED.code}


def create_app(settings: Settings, worker: WorkerSettings, start_loop: bool = True) -> FastAPI:
    slot = ModelSlot()
    loop = WorkerLoop(settings, worker, slot)
    live = LiveBuffer.from_settings(settings, worker.state_dir)  # normal live rows for the next rounds
    drift = DriftWatch.from_settings(settings, live)
    loop.buffer, loop.drift = live, drift
    if drift is not None:  # a recalibrated threshold is a new model version, served through the gate
        drift.recalibrate = lambda scores: loop.models.recalibrate(scores=scores)
    table = StreamTable(slot, Preprocessing.from_settings(settings.data), settings.data.columns,
                        settings.streams.max_streams, worker.state_dir,
                        watchers=tuple(w for w in (live, drift) if w is not None))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        table.load()  # the streams a graceful stop handed over
        for part in (live, drift):
            if part is not None:
                part.start()
        if start_loop:
            loop.start()
            observability.start()  # telemetry to the aggregator's dashboard
        yield
        table.save()
        for part in (drift, live):
            if part is not None:
                part.stop()
        loop.stop()
        observability.stop()

    app = FastAPI(title=f"fedad worker {worker.id}", version="1", lifespan=lifespan,
                  description="Scores sensor rows with this edge node's federated autoencoder.")
    app.state.loop = loop
    app.state.detector = slot
    app.state.admin = AdminCheck(settings.admin)  # rollback and pin: the admin token, never a worker's
    app.state.buffer, app.state.drift = live, drift
    observability = WorkerObservability(app, settings, worker, loop, slot, table)  # metrics, log round, page
    observability.metrics.registry.register(LiveDataCollector(live, drift))
    ctx = WorkerContext(settings, worker, slot, loop, table, observability.stats, buffer=live, drift=drift)
    app.state.worker = ctx
    _error_handlers(app, ctx)

    app.include_router(status.router)
    app.include_router(detect.router(ctx))
    app.include_router(streams.router)
    app.include_router(admin.public)
    app.include_router(admin.router)
    app.include_router(ingest.router(ctx))
    app.include_router(otlp.router)
    app.include_router(observability.router(ctx.status_document))
    # Requests to /detect are served by a plain Starlette route placed first (routes/detect.fast_route: no
    # dependency solving, no scan of the other routes); the FastAPI route above only documents it.
    app.router.routes.insert(0, detect.fast_route(ctx))
    return app


def _error_handlers(app: FastAPI, ctx: WorkerContext) -> None:
    stats = ctx.stats

    @app.exception_handler(ProtocolError)
    async def refused(request: Request, exc: ProtocolError):
        if request.url.path == "/detect":
            stats.refused(exc.status)
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return JSONResponse({"code": code, "detail": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        detail = "; ".join(f"{' '.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"code": errors.INVALID_REQUEST.code, "detail": detail}, status_code=422)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        detail = f"internal error ({type(exc).__name__}); the worker's log has the details"
        return JSONResponse({"code": errors.INTERNAL_ERROR.code, "detail": detail}, status_code=500)
