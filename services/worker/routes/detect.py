"""POST /detect: score raw sensor rows with the served model, statelessly or as the next rows of a named stream."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.routing import Route

from services.protocol import errors
from services.protocol.errors import ProtocolError, openapi_responses
from services.worker.deps import WorkerContext
from services.worker.parsing import BINARY_TYPE, H_BASELINE_ROWS, H_STREAM, parse_binary, parse_detect, stream_id


class DetectRequest(BaseModel):
    """Consecutive raw sensor rows, oldest first: numeric lists in config's feature order, or objects keyed by
    feature name. With a window > 1, row i is scored with the rows before it in the same batch (and, with
    ``stream``, with the stream's earlier rows)."""

    samples: list[list[float] | dict[str, float]] = Field(min_length=1)
    baseline: list[list[float] | dict[str, float]] | None = Field(
        None, description="optional: normal rows from the start of the current run (400 recommended), oldest "
                          "first, just before the samples; with data.baseline 'run' the samples are scaled by them, "
                          "otherwise by the worker's own training rows. With a stream: its first request only")
    stream: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$",
                               description="optional: the device the rows come from; the worker keeps the rows its "
                                           "window needs and the baseline's scaling between requests")


class DetectResponse(BaseModel):
    scores: list[float]
    is_anomaly: list[bool]
    threshold: float
    model_round: int
    model: str
    stream: str | None = Field(None, description="with a stream only")
    stream_rows: int | None = Field(None, description="with a stream only: rows of the stream the worker had scored "
                                                      "before this request (0: a new stream)")


ERRORS = openapi_responses(
    errors.NO_MODEL, errors.TOO_LARGE, errors.MALFORMED_JSON, errors.MISSING_FIELD, errors.BAD_SAMPLES,
    errors.EMPTY_BATCH, errors.BAD_ROW, errors.MISSING_FEATURE, errors.WRONG_WIDTH, errors.NOT_A_NUMBER,
    errors.NON_FINITE, errors.BAD_BASELINE, errors.PARTIAL_ROW, errors.BAD_STREAM_ID, errors.BASELINE_ALREADY_SET)


def endpoint(ctx: WorkerContext):
    """The /detect handler, with everything it needs bound once (no per-request dependency solving)."""
    slot, loop, streams, stats = ctx.slot, ctx.loop, ctx.streams, ctx.stats
    features, max_rows, min_baseline = ctx.features, ctx.max_rows, ctx.min_baseline
    max_json_body, max_binary_body = ctx.max_json_body, ctx.max_binary_body

    async def detect(request: Request):
        started = time.perf_counter()
        model = slot.current
        if model is None:
            raise ProtocolError(errors.NO_MODEL, f"no model to serve yet: the worker is {loop.phase}; retry after the "
                                             "first federated round (GET /readyz says when)")
        headers = request.headers
        declared = headers.get("content-length")
        binary = headers.get("content-type", "").startswith(BINARY_TYPE)
        limit = max_binary_body if binary else max_json_body
        if declared and declared.isdigit() and int(declared) > limit:
            raise ProtocolError(errors.TOO_LARGE, f"body of {declared} bytes exceeds the limit of {limit} bytes")
        if binary:
            rows, baseline = parse_binary(await request.body(), features, max_rows, headers.get(H_BASELINE_ROWS),
                                          min_baseline)
            stream = headers.get(H_STREAM)
            stream = stream_id(stream) if stream is not None else None
        else:
            rows, baseline, stream = parse_detect(await request.body(), features, max_rows, min_baseline)
        if stream is None:
            scores = model.score(rows, baseline)
            flags = model.detector.is_anomaly(scores)
            answer = {"scores": scores, "is_anomaly": flags, "threshold": model.threshold,
                      "model_round": model.model_round, "model": model.kind}
        else:
            scores, flags, model, before = streams.score(stream, rows, baseline)
            answer = {"scores": scores, "is_anomaly": flags, "threshold": model.threshold,
                      "model_round": model.model_round, "model": model.kind, "stream": stream, "stream_rows": before}
        body = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
        stats.scored(scores, flags, model.threshold, time.perf_counter() - started)
        return Response(body, media_type="application/json")

    return detect


def router(ctx: WorkerContext) -> APIRouter:
    """/detect for the OpenAPI document; requests are served by ``fast_route`` (same handler), placed first."""
    api = APIRouter()
    api.add_api_route(
        "/detect", endpoint(ctx), methods=["POST"], response_model=DetectResponse, responses=ERRORS,
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": DetectRequest.model_json_schema(
                ref_template="#/components/schemas/{model}")},
            BINARY_TYPE: {"schema": {"type": "string", "format": "binary", "description": (
                "rows of little-endian float32 values in config's feature order, no header; header "
                f"{H_BASELINE_ROWS}: k makes the first k rows the run's baseline, header {H_STREAM}: id names "
                "the stream")}}}}})
    return api


def fast_route(ctx: WorkerContext) -> Route:
    """The plain Starlette route that serves /detect: it skips FastAPI's per-request dependency solving and the
    scan of the other routes, ~40 µs of the ~90 µs a batch-1 request costs (BENCHMARKS.md). Middleware and exception
    handlers apply alike. Insert it first."""
    return Route("/detect", endpoint(ctx), methods=["POST"], include_in_schema=False)
