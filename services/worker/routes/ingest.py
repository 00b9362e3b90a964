"""Device data and alarms: the mapper's HTTP push, what ingestion counted, the alarms."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from services.protocol import errors
from services.protocol.bodies import read_limited
from services.protocol.errors import ProtocolError, openapi_responses
from services.worker.deps import Context
from services.worker.ingest.http_push import FORM_TYPE, parse_push
from services.worker.ingest.messages import MAX_PAYLOAD, Refused

router = APIRouter(tags=["device data"])
PUSH_REFUSALS = openapi_responses(errors.TOO_LARGE, errors.CLIENT_DISCONNECTED, errors.BAD_DEVICE_ID,
                                  errors.BAD_PAYLOAD, errors.UNKNOWN_PROPERTY, errors.NOT_A_NUMBER, errors.NON_FINITE,
                                  errors.BAD_TIMESTAMP, errors.QUEUE_FULL)


@router.post("/v1/ingest/push/{device}", status_code=202, responses=PUSH_REFUSALS,
             openapi_extra={"requestBody": {"required": True, "content": {FORM_TYPE: {"schema": {
                 "type": "object", "additionalProperties": {"type": "string"},
                 "example": {"Current": "1.53", "time": "2026-11-27 10:00:00"}}}}}})
async def push(device: str, request: Request, ctx: Context):
    """KubeEdge mapper's HTTP push (``pushMethod: http``, ``requestPath: /v1/ingest/push/<device>``): one or
    more ``<property>=<value>`` and ``time=<YYYY-MM-DD HH:MM:SS>``, form-encoded. Accepted readings are
    assembled, scored and fed to the alarms like MQTT messages; a refusal's code is its reason, counted like theirs."""
    ingest = ctx.ingest
    try:
        body = await read_limited(request, MAX_PAYLOAD, f"HTTP push {device[:80]}")
        reading = parse_push(device, body, ingest.feature_set, time.time())
    except ProtocolError as exc:  # too large (counted like a message too large), or the client hung up
        if exc.code == errors.TOO_LARGE.code:
            ingest.refuse(exc.code, exc.detail)
        raise
    except Refused as exc:
        ingest.refuse(exc.reason, exc.detail)
        raise ProtocolError(errors.CODES[exc.reason], exc.detail) from None
    if not ingest.push(reading):
        raise ProtocolError(errors.QUEUE_FULL, f"HTTP push {reading.device}: {ingest.queue.maxsize} messages already "
                                               "wait to be scored; send the reading again")
    return {"accepted": sorted(reading.values), "device": reading.device, "timestamp": reading.timestamp}


@router.get("/v1/ingest")
async def ingest_status(ctx: Context):
    """Device data counted so far: messages, rows scored, refusals by reason, the MQTT link, the alarm outbox."""
    return ctx.ingest.document()


@router.get("/v1/alarms")
async def alarms(ctx: Context):
    """Open alarms and recently cleared ones, newest first (also under ``alarms`` in /v1/status)."""
    return ctx.alarms.document()
