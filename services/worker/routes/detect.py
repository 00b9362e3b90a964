"""POST /detect: score raw sensor rows with the served model, statelessly or as the next rows of a named stream."""

from __future__ import annotations

import time

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.routing import Route

from services.protocol import errors
from services.protocol.bodies import refuse_announced
from services.protocol.errors import ProtocolError, openapi_responses
from services.worker import explain
from services.worker.batching import RequestBatcher
from services.worker.deps import WorkerContext
from services.worker.parsing import BINARY_TYPE, H_BASELINE_ROWS, H_STREAM, parse_binary, parse_detect, stream_id
from services.worker.streams import StreamRequest

H_EXPLAIN = "X-Explain"  # binary body: "true" lists the top sensors of every row (the JSON body's "explain")


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
    explain: bool = Field(False, description="optional: list the top sensors of every row, not only of the "
                                             "flagged ones")


class DetectResponse(BaseModel):
    scores: list[float]
    is_anomaly: list[bool]
    threshold: float
    model_round: int
    model: str
    stream: str | None = Field(None, description="with a stream only")
    stream_rows: int | None = Field(None, description="with a stream only: rows of the stream the worker had scored "
                                                      "before this request (0: a new stream)")
    top_sensors: list[list[dict] | None] | None = Field(
        None, description=f"per row: the {explain.TOP} sensors with the largest shares of its reconstruction error, "
                          "largest first, as {\"sensor\", \"share\"} (shares of all sensors sum to 1). A stream's "
                          "answer lists them for flagged rows (null for the others); with \"explain\": true for "
                          "every row; a stateless answer only when asked")


ERRORS = openapi_responses(
    errors.NO_MODEL, errors.TOO_LARGE, errors.MALFORMED_JSON, errors.MISSING_FIELD, errors.BAD_SAMPLES,
    errors.EMPTY_BATCH, errors.BAD_ROW, errors.MISSING_FEATURE, errors.WRONG_WIDTH, errors.NOT_A_NUMBER,
    errors.NON_FINITE, errors.BAD_BASELINE, errors.PARTIAL_ROW, errors.BAD_STREAM_ID, errors.BASELINE_ALREADY_SET)


def endpoint(ctx: WorkerContext):
    """The /detect handler, with everything it needs bound once (no per-request dependency solving)."""
    slot, loop, streams, stats = ctx.slot, ctx.loop, ctx.streams, ctx.stats
    features, max_rows, min_baseline = ctx.features, ctx.max_rows, ctx.min_baseline
    max_json_body, max_binary_body = ctx.max_json_body, ctx.max_binary_body
    explainer = explain.Explainer(ctx.settings.data.model_columns)
    batcher = RequestBatcher(streams, ctx.settings.serving.batch_wait_ms / 1000)

    async def detect(request: Request):
        started = time.perf_counter()
        model = slot.current
        if model is None:
            raise ProtocolError(errors.NO_MODEL, f"no model to serve yet: the worker is {loop.phase}; retry after the "
                                             "first federated round (GET /readyz says when)")
        headers = request.headers
        binary = headers.get("content-type", "").startswith(BINARY_TYPE)
        refuse_announced(headers, max_binary_body if binary else max_json_body)
        body = await request.body()
        if binary:
            rows, baseline = parse_binary(body, features, max_rows, headers.get(H_BASELINE_ROWS), min_baseline)
            stream = headers.get(H_STREAM)
            stream = stream_id(stream) if stream is not None else None
            every = headers.get(H_EXPLAIN, "").lower() == "true"
        else:
            rows, baseline, stream = parse_detect(body, features, max_rows, min_baseline)
            every = b'"explain"' in body and _asks_to_explain(body)
        if stream is None:
            scores = model.score(rows, baseline)
            flags = model.detector.is_anomaly(scores)
            answer = {"scores": scores, "is_anomaly": flags, "threshold": model.threshold,
                      "model_round": model.model_round, "model": model.kind}
            if every:  # asked for: explaining flagged rows by default cost a batch of 1 half its req/s (BENCHMARKS.md)
                answer["top_sensors"] = explainer.rows(model.detector, rows, baseline, np.ones(len(rows), dtype=bool))
        else:  # the stream table tells the alarms, the live buffer and the drift tests, as for device data
            scored = await batcher.score(StreamRequest(stream, rows, baseline, explain_all=every))
            scores, flags, model = scored.scores, scored.flags, scored.model
            answer = {"scores": scores, "is_anomaly": flags, "threshold": model.threshold,
                      "model_round": model.model_round, "model": model.kind, "stream": stream,
                      "stream_rows": scored.stream_rows, "top_sensors": scored.top_sensors}
        body = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
        stats.scored(scores, flags, model.threshold, time.perf_counter() - started)
        return Response(body, media_type="application/json")

    return detect


def _asks_to_explain(body: bytes) -> bool:
    """``"explain": true`` in a JSON body (parsed again only when the word occurs in it)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(payload, dict) and payload.get("explain") is True


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
                f"the stream, header {H_EXPLAIN}: true lists the top sensors of every row")}}}}})
    return api


def fast_route(ctx: WorkerContext) -> Route:
    """The plain Starlette route that serves /detect: it skips FastAPI's per-request dependency solving and the
    scan of the other routes, ~40 µs of the ~90 µs a batch-1 request costs (BENCHMARKS.md). Middleware and exception
    handlers apply alike. Insert it first."""
    return Route("/detect", endpoint(ctx), methods=["POST"], include_in_schema=False)
