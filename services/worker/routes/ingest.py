"""Device data and alarms: the mapper's HTTP push, what ingestion counted, the alarms. The router also runs the
ingestion (MQTT link, ingestion thread, alarm outbox) for the app's lifetime through its lifespan."""

from __future__ import annotations

import contextlib
import time

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from services.observability.metrics import IngestCollector
from services.worker.deps import WorkerContext
from services.worker.ingest.http_push import FORM_TYPE, parse_push
from services.worker.ingest.messages import MAX_PAYLOAD, Refused
from services.worker.ingest.pipeline import DeviceIngest


def router(ctx: WorkerContext) -> APIRouter:
    ingest = DeviceIngest(ctx.settings, ctx.worker, ctx.streams)
    ctx.ingest = ingest  # /v1/status lists its alarms (WorkerContext.status_document)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.ingest = ingest
        observability = getattr(app.state, "observability", None)
        if observability is not None:
            observability.metrics.registry.register(IngestCollector(ingest.metrics))
        ingest.start()
        try:
            yield
        finally:
            ingest.stop()

    api = APIRouter(tags=["device data"], lifespan=lifespan)

    @api.post("/v1/ingest/push/{device}", status_code=202,
              openapi_extra={"requestBody": {"required": True, "content": {FORM_TYPE: {"schema": {
                  "type": "object", "additionalProperties": {"type": "string"},
                  "example": {"Current": "1.53", "time": "2026-11-27 10:00:00"}}}}}},
              responses={422: {"description": "refused: code is the reason (not_a_number, unknown_property, ...)"}})
    async def push(device: str, request: Request):
        """KubeEdge mapper's HTTP push (``pushMethod: http``, ``requestPath: /v1/ingest/push/<device>``): one or
        more ``<property>=<value>`` and ``time=<YYYY-MM-DD HH:MM:SS>``, form-encoded. Accepted readings are
        assembled, scored and fed to the alarms like MQTT messages."""
        declared = request.headers.get("content-length", "")
        try:
            if declared.isdigit() and int(declared) > MAX_PAYLOAD:
                raise Refused("too_large", f"HTTP push {device[:80]}: {declared} bytes exceed {MAX_PAYLOAD}")
            reading = parse_push(device, await request.body(), ingest.feature_set, time.time())
        except Refused as exc:
            ingest.refuse(exc.reason, exc.detail)
            return JSONResponse({"code": exc.reason, "detail": exc.detail},
                                status_code=413 if exc.reason == "too_large" else 422)
        ingest.push(reading)
        return {"accepted": sorted(reading.values), "device": reading.device, "timestamp": reading.timestamp}

    @api.get("/v1/ingest")
    async def ingest_status():
        """Device data counted so far: messages, rows scored, refusals by reason, the MQTT link, the alarm outbox."""
        return ingest.document()

    @api.get("/v1/alarms")
    async def alarms():
        """Open alarms and recently cleared ones, newest first (also under ``alarms`` in /v1/status)."""
        return ingest.alarms.document()

    return api
