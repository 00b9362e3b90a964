"""OTLP/HTTP metrics from KubeEdge mappers (``pushMethod: otel``): ``POST /v1/ingest/otlp/v1/metrics``. The readings
join the same assembly, scoring and alarms as MQTT and the HTTP push (services/worker/ingest/otlp.py)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.protocol import errors
from services.worker.deps import Context
from services.worker.ingest.messages import Refused
from services.worker.ingest.otlp import JSON, PROTOBUF, parse_otlp
from services.worker.routes.ingest import device_body, queue, refused

router = APIRouter(tags=["device data"])
REFUSALS = (errors.BAD_MEDIA_TYPE, errors.TOO_LARGE, errors.CLIENT_DISCONNECTED, errors.BAD_PAYLOAD,
            errors.MALFORMED_JSON, errors.NO_DEVICE, errors.BAD_DEVICE_ID, errors.UNKNOWN_PROPERTY, errors.NOT_A_NUMBER,
            errors.NON_FINITE, errors.QUEUE_FULL)


@router.post("/v1/ingest/otlp/v1/metrics", responses=errors.openapi_responses(*REFUSALS),
             openapi_extra={"requestBody": {"required": True, "content": {
                 PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
                 JSON: {"schema": {"type": "object", "description": "OTLP JSON ExportMetricsServiceRequest"}}}}})
async def otlp_metrics(request: Request, ctx: Context):
    """OTLP/HTTP ``ExportMetricsServiceRequest`` (protobuf or JSON, optionally gzip): gauge or sum data points named
    by a configured feature, the device from the resource attribute ``device.id`` (``<namespace>/<device>``). Answers
    ``ExportMetricsServiceResponse`` in the request's encoding; metrics that are not features are counted in its
    ``partial_success``. A refused request is ``{"code", "detail"}`` with a 4xx, and nothing of it is scored."""
    ingest, what = ctx.ingest, "OTLP metrics"
    body = await device_body(request, ingest, what)
    try:
        parsed = parse_otlp(body, request.headers.get("content-type", ""), ingest.feature_set, time.time(),
                            request.headers.get("content-encoding", ""))
    except Refused as exc:
        raise refused(ingest, exc) from None
    queue(ingest, parsed.readings, what)
    content, media_type = parsed.answer()
    return Response(content, media_type=media_type)
