"""Aggregator HTTP routes: thin wrappers around the round state machine in rounds.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from services.aggregator.rounds import Federation, RoundError
from services.aggregator.store import AggregatorStore
from services.config import Settings
from services.observability.dashboard import AggregatorObservability
from services.protocol.codec import CONTENT_TYPE, encode_weights
from services.protocol.messages import (H_LOSS, H_ROUND, H_SAMPLES, H_SHA256, H_SPEC, JoinRequest, JoinResponse,
                                        Problem)
from services.security.tokens import TokenTable

log = logging.getLogger("fedad.aggregator")
MAX_LONG_POLL_S = 60.0
# Every refusal is {"detail": "<what is wrong>"}; documented so clients (and schemathesis) know each status.
REFUSALS = {
    400: "a body that cannot be read (not UTF-8 JSON, or cut off)", 401: "no bearer token",
    403: "unknown token, or another worker's id",
    409: "stale or future round, not joined, a different second update, or a model spec mismatch",
    413: "body larger than the model",
    415: "not application/octet-stream", 422: "invalid field, header, size, hash or value",
    503: "the state disk refused a write; retry later",
}


def refusals(*codes: int) -> dict:
    return {code: {"model": Problem, "description": REFUSALS[code]} for code in codes}


def describe_validation(exc: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one line, e.g. 'header X-Sample-Count: Input should be a valid integer'."""
    parts = []
    for e in exc.errors():
        where = " ".join(str(p) for p in e.get("loc", ()))
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


class Publisher:
    """Wakes long-polling workers when a new global model is published."""

    def __init__(self, federation: Federation):
        self.federation = federation
        self.event = asyncio.Event()
        self.seen = federation.rounds_done

    def check(self) -> None:
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


def create_app(settings: Settings) -> FastAPI:
    federation = Federation(settings, AggregatorStore(settings.aggregator.state_dir))
    tokens = TokenTable.from_settings(settings.workers)  # SHA-256 digests only; plaintext tokens are not kept
    update_limit = federation.n_params * 4

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.publisher = Publisher(federation)

        async def ticker():
            while True:
                await asyncio.sleep(1.0)
                federation.tick()
                app.state.publisher.check()

        task = asyncio.create_task(ticker())
        log.info("aggregator run %s: %s, round %d of %d", federation.state["run_id"], federation.phase,
                 federation.open_round, settings.federation.rounds)
        yield
        task.cancel()

    app = FastAPI(title="fedad aggregator", version="1", lifespan=lifespan,
                  description="Federates autoencoder weights from edge workers; never sees a data row.")
    app.state.federation = federation
    observability = AggregatorObservability(app, settings, federation, tokens.identify)  # metrics, log context, pages

    @app.exception_handler(RoundError)
    async def _round_error(request: Request, exc: RoundError):
        log.warning("%s %s refused (%d): %s", request.method, request.url.path, exc.status, exc.detail)
        observability.refused(request.url.path, exc.status, exc.reason)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError):
        detail = describe_validation(exc)
        log.warning("%s %s refused (422): %s", request.method, request.url.path, detail)
        observability.refused(request.url.path, 422, "invalid_request")
        return JSONResponse({"detail": detail}, status_code=422)

    def authenticated_worker(authorization: str | None = Header(None, description="Bearer <worker token>")) -> str:
        if not authorization or not authorization.startswith("Bearer "):
            raise RoundError(401, "missing bearer token: send 'Authorization: Bearer <worker token>'")
        worker_id = tokens.identify(authorization.removeprefix("Bearer ").strip())
        if worker_id is None:
            raise RoundError(403, "unknown worker token")
        return worker_id

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", responses=refusals(503))
    async def readyz():
        if federation.storage_error:
            return JSONResponse({"detail": f"cannot write the state dir: {federation.storage_error}"},
                                status_code=503)
        return {"status": "ready", "phase": federation.phase}

    @app.get("/v1/status")
    async def status():
        return federation.status()

    @app.post("/v1/workers/{worker_id}/join", response_model=JoinResponse,
              responses=refusals(400, 401, 403, 409, 422, 503))
    async def join(worker_id: str, body: JoinRequest, caller: str = Depends(authenticated_worker)):
        if caller != worker_id:
            raise RoundError(403, f"this token belongs to worker {caller}, not {worker_id}")
        response = federation.join(worker_id, body)
        log.info("worker %s joined (%d samples); phase %s", worker_id, body.sample_count, federation.phase)
        return response

    @app.get("/v1/model", responses={200: {"content": {CONTENT_TYPE: {}}}, 304: {"description": "not modified"},
                                     **refusals(401, 403, 422)})
    async def model(
        request: Request,
        after_round: int | None = Query(None, ge=-1, description="long-poll: wait for a model newer than this"),
        wait: float = Query(0, ge=0, le=MAX_LONG_POLL_S, description="seconds to wait for a newer model"),
        if_none_match: str | None = Header(None),
        caller: str = Depends(authenticated_worker),
    ):
        if after_round is not None and wait > 0:
            await request.app.state.publisher.wait(after_round, wait)
        etag = f'"{federation.rounds_done}-{federation.state["global_sha256"][:16]}"'
        headers = {"ETag": etag, H_ROUND: str(federation.rounds_done), H_SHA256: federation.state["global_sha256"],
                   H_SPEC: federation.spec_hash}
        if if_none_match == etag or (after_round is not None and federation.rounds_done <= after_round):
            return Response(status_code=304, headers=headers)
        return Response(encode_weights(federation.global_weights), media_type=CONTENT_TYPE, headers=headers)

    @app.post("/v1/rounds/{round_no}/updates", responses=refusals(400, 401, 403, 409, 413, 415, 422, 503),
              openapi_extra={"requestBody": {"required": True, "content": {
                  CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}}}})
    async def update(
        round_no: int,
        request: Request,
        x_sample_count: int = Header(..., alias=H_SAMPLES, description="local training windows"),
        x_train_loss: float = Header(..., alias=H_LOSS, description="mean training loss of the last epoch"),
        x_content_sha256: str | None = Header(None, alias=H_SHA256),
        caller: str = Depends(authenticated_worker),
    ):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > update_limit:
            raise RoundError(413, f"update body of {declared} bytes exceeds the model's {update_limit} bytes")
        media_type = request.headers.get("content-type", CONTENT_TYPE).split(";")[0].strip().lower()
        if media_type != CONTENT_TYPE:
            raise RoundError(415, f"update body must be raw little-endian float32 sent as {CONTENT_TYPE}, "
                                  f"not {media_type}")
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > update_limit:
                    raise RoundError(413, f"update body exceeds the model's {update_limit} bytes")
        except ClientDisconnect:
            raise RoundError(400, f"worker {caller} disconnected after {len(body)} bytes of its update: "
                                  "nothing was accepted") from None
        finally:
            observability.metrics.update_bytes.inc(len(body))
        result = federation.submit(caller, round_no, bytes(body), x_sample_count, x_train_loss, x_content_sha256)
        observability.metrics.accepted(result)
        request.app.state.publisher.check()
        return result

    app.include_router(observability.router(authenticated_worker, refusals(400, 401, 403, 422)))
    return app
