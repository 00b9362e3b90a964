"""Device data and alarms: the mapper's HTTP push, what ingestion counted, the alarms; and what every device data
route shares (routes/otlp.py too): the body read within ``MAX_PAYLOAD``, a refusal counted like a message's and
answered with its registered code, the readings queued or a 503 ``queue_full``."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from services.protocol import errors
from services.protocol.bodies import read_limited
from services.protocol.errors import ProtocolError, openapi_responses
from services.worker.deps import Context
from services.worker.ingest.http_push import FORM_TYPE, parse_push
from services.worker.ingest.messages import MAX_PAYLOAD, Reading, Refused
from services.worker.ingest.pipeline import DeviceIngest

router = APIRouter(tags=["device data"])
PUSH_REFUSALS = openapi_responses(errors.TOO_LARGE, errors.CLIENT_DISCONNECTED, errors.BAD_DEVICE_ID,
                                  errors.BAD_PAYLOAD, errors.UNKNOWN_PROPERTY, errors.NOT_A_NUMBER, errors.NON_FINITE,
                                  errors.BAD_TIMESTAMP, errors.QUEUE_FULL)


async def device_body(request: Request, ingest: DeviceIngest, what: str) -> bytes:
    """The body within MAX_PAYLOAD; too large is counted like a message too large (a hang-up is not counted)."""
    try:
        return await read_limited(request, MAX_PAYLOAD, what)
    except ProtocolError as exc:
        if exc.code == errors.TOO_LARGE.code:
            ingest.refuse(exc.code, exc.detail)
        raise


def refused(ingest: DeviceIngest, exc: Refused) -> ProtocolError:
    """Count a refused push by its reason and answer with that reason's registered code."""
    ingest.refuse(exc.reason, exc.detail)
    return ProtocolError(errors.CODES[exc.reason], exc.detail)


def queue(ingest: DeviceIngest, readings: list[Reading], what: str) -> None:
    """Hand the readings to the ingestion thread; 503 ``queue_full`` (counted) if it takes not all of them."""
    taken = sum(ingest.push(reading) for reading in readings)
    if taken < len(readings):
        raise ProtocolError(errors.QUEUE_FULL, f"{what}: {len(readings) - taken} of {len(readings)} reading(s) not "
                                               f"taken, {ingest.queue.maxsize} messages already wait to be scored; "
                                               "send them again")


@router.post("/v1/ingest/push/{device}", status_code=202, responses=PUSH_REFUSALS,
             openapi_extra={"requestBody": {"required": True, "content": {FORM_TYPE: {"schema": {
                 "type": "object", "additionalProperties": {"type": "string"},
                 "example": {"Current": "1.53", "time": "2026-11-27 10:00:00"}}}}}})
async def push(device: str, request: Request, ctx: Context):
    """KubeEdge mapper's HTTP push (``pushMethod: http``, ``requestPath: /v1/ingest/push/<device>``): one or
    more ``<property>=<value>`` and ``time=<YYYY-MM-DD HH:MM:SS>``, form-encoded. Accepted readings are
    assembled, scored and fed to the alarms like MQTT messages; a refusal's code is its reason, counted like theirs."""
    ingest, what = ctx.ingest, f"HTTP push {device[:80]}"
    body = await device_body(request, ingest, what)
    try:
        reading = parse_push(device, body, ingest.feature_set, time.time())
    except Refused as exc:
        raise refused(ingest, exc) from None
    queue(ingest, [reading], what)
    return {"accepted": sorted(reading.values), "device": reading.device, "timestamp": reading.timestamp}


@router.get("/v1/ingest")
async def ingest_status(ctx: Context):
    """Device data counted so far: messages, rows scored, refusals by reason, the MQTT link, the alarm outbox."""
    return ctx.ingest.document()


@router.get("/v1/alarms")
async def alarms(ctx: Context):
    """Open alarms and recently cleared ones, newest first (also under ``alarms`` in /v1/status)."""
    return ctx.alarms.document()
