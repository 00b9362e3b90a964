"""The worker's FastAPI app: the parts ``build_worker`` assembled (services/worker/assembly.py) behind the routes
(services/worker/routes) and the pages, their lifespan, and one error shape for every 4xx/5xx:
``{"code": ..., "detail": ...}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from services.config import Settings, WorkerSettings
from services.protocol import errors
from services.protocol.errors import ProtocolError
from services.security.admin import AdminCheck
from services.worker.assembly import build_worker, running
from services.worker.deps import WorkerContext
from services.observability.metrics import NO_FRAMEWORK_TELEMETRY
from services.worker.routes import admin, detect, ingest, otlp, status, streams

log = logging.getLogger("fedad.worker")
HTTP_CODES = {404: errors.NOT_FOUND.code, 405: errors.METHOD_NOT_ALLOWED.code}


def create_app(settings: Settings, worker: WorkerSettings, start_loop: bool = True) -> FastAPI:
    """``start_loop`` False: the app serves and ingests but does not federate (no loop, no reports, no telemetry)."""
    ctx = build_worker(settings, worker)
    app = FastAPI(title=f"fedad worker {worker.id}", version="1", lifespan=lambda app: running(ctx, start_loop),
                  description="Scores sensor rows with this edge node's federated autoencoder.",
                  telemetry=NO_FRAMEWORK_TELEMETRY)
    app.state.worker = ctx  # what every route and page reads (services/worker/deps.py)
    app.state.admin = AdminCheck(settings.admin)  # rollback and pin: the admin token, never a worker's
    _error_handlers(app, ctx)

    app.include_router(status.router)
    app.include_router(detect.router(ctx))
    app.include_router(streams.router)
    app.include_router(admin.public)
    app.include_router(admin.router)
    app.include_router(ingest.router)
    app.include_router(otlp.router)
    app.include_router(ctx.observability.router(ctx.status_document))
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
