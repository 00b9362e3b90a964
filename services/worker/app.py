"""Worker HTTP routes: /detect on the served model, health, status. The federation loop runs beside them."""

from __future__ import annotations

import contextlib
import logging
import math

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from services.config import Settings, WorkerSettings
from services.worker.detector import Detector
from services.worker.loop import WorkerLoop

log = logging.getLogger("fedad.worker")
BYTES_PER_VALUE = 32  # generous upper bound of one JSON number with its separator and key share


class DetectError(Exception):
    def __init__(self, status: int, detail: str):
        self.status, self.detail = status, detail


class DetectRequest(BaseModel):
    """Consecutive raw sensor rows, oldest first: numeric lists in config's feature order, or objects keyed by
    feature name. With a window > 1, row i is scored with the rows before it in the same batch."""

    samples: list[list[float] | dict[str, float]] = Field(min_length=1)


class DetectResponse(BaseModel):
    scores: list[float]
    is_anomaly: list[bool]
    threshold: float
    model_round: int
    model: str


def parse_samples(body: bytes, features: list[str], max_rows: int) -> np.ndarray:
    """Raw JSON body → (rows, features) float32, or a DetectError saying exactly what is wrong."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if any(token in body for token in (b"NaN", b"Infinity")):
            raise DetectError(422, "samples must be finite numbers: NaN and Infinity are not allowed") from None
        raise DetectError(422, f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict) or "samples" not in payload:
        raise DetectError(422, 'missing field "samples": send {"samples": [[f1, ..., fD], ...]}')
    samples = payload["samples"]
    if not isinstance(samples, list):
        raise DetectError(422, '"samples" must be a list of rows')
    if not samples:
        raise DetectError(422, '"samples" is empty: send at least one row')
    if len(samples) > max_rows:
        raise DetectError(413, f"batch of {len(samples)} rows exceeds the limit of {max_rows} rows")
    width = len(features)
    rows = np.empty((len(samples), width), dtype=np.float32)
    for i, row in enumerate(samples):
        if isinstance(row, dict):
            missing = [f for f in features if f not in row]
            if missing:
                raise DetectError(422, f"row {i}: missing feature(s) {missing}")
            row = [row[f] for f in features]
        elif not isinstance(row, list):
            raise DetectError(422, f"row {i}: expected a list of {width} numbers or an object keyed by feature name")
        if len(row) != width:
            raise DetectError(422, f"row {i} has {len(row)} values, expected {width} ({', '.join(features)})")
        for j, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DetectError(422, f"row {i}, {features[j]}: {value!r} is not a number")
            if not math.isfinite(value):
                raise DetectError(422, f"row {i}, {features[j]}: {value} is not a finite number")
        rows[i] = row
    if not np.all(np.isfinite(rows)):
        raise DetectError(422, "a value is too large for float32")
    return rows


def create_app(settings: Settings, worker: WorkerSettings, start_loop: bool = True) -> FastAPI:
    detector = Detector()
    loop = WorkerLoop(settings, worker, detector)
    features = settings.data.features
    max_rows = settings.serving.max_batch_rows
    max_body = max_rows * len(features) * BYTES_PER_VALUE + 4096

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_loop:
            loop.start()
        yield
        loop.stop()

    app = FastAPI(title=f"fedad worker {worker.id}", version="1", lifespan=lifespan,
                  description="Scores sensor rows with this edge node's federated autoencoder.")
    app.state.loop = loop
    app.state.detector = detector

    @app.exception_handler(DetectError)
    async def _detect_error(request: Request, exc: DetectError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        model = detector.current
        if model is None:
            return JSONResponse({"status": "not ready", "detail": f"no model yet ({loop.phase})"}, status_code=503)
        return {"status": "ready", "model_round": model.model_round}

    @app.get("/v1/status")
    async def status():
        model = detector.current
        state = loop.state
        return {
            "worker_id": worker.id,
            "phase": loop.phase,
            "progress": loop.progress,
            "model_round": model.model_round if model else None,
            "rounds_total": loop.rounds_total,
            "model": model.kind if model else None,
            "threshold": model.threshold if model else None,
            "features": features,
            "window": settings.data.window,
            "evaluation": state.evaluation if state else None,
            "history": state.history if state else [],
            "last_error": loop.last_error,
        }

    @app.post("/detect", response_model=DetectResponse,
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": DetectRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}},
              responses={413: {"description": "batch too large"}, 422: {"description": "invalid rows"},
                         503: {"description": "no model yet"}})
    async def detect(request: Request):
        model = detector.current
        if model is None:
            raise DetectError(503, f"no model to serve yet: the worker is {loop.phase}; retry after the first "
                                   "federated round (GET /readyz says when)")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body:
            raise DetectError(413, f"body of {declared} bytes exceeds the limit of {max_body} bytes")
        rows = parse_samples(await request.body(), features, max_rows)
        scores = model.score(rows)
        return Response(orjson.dumps({"scores": scores, "is_anomaly": scores > model.threshold,
                                      "threshold": model.threshold, "model_round": model.model_round,
                                      "model": model.kind}, option=orjson.OPT_SERIALIZE_NUMPY),
                        media_type="application/json")

    return app
