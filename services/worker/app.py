"""Worker HTTP routes: /detect on the served model, health, status. The federation loop runs beside them."""

from __future__ import annotations

import contextlib
import logging
import math
import time

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.routing import Route

from services.config import Settings, WorkerSettings
from services.observability.dashboard import WorkerObservability
from services.worker.serving import ModelSlot
from services.worker.loop import WorkerLoop

try:  # parses a JSON array of numbers straight into a float64 buffer, with no Python object per value
    import simdjson
except ImportError:  # pragma: no cover - the exact orjson path below serves every body on its own
    simdjson = None

log = logging.getLogger("fedad.worker")
BYTES_PER_VALUE = 32  # generous upper bound of one JSON number with its separator and key share
BINARY_TYPE = "application/octet-stream"  # /detect body: rows of little-endian float32, feature order, no header
BINARY_DTYPE = np.dtype("<f4")
H_BASELINE_ROWS = "X-Baseline-Rows"  # binary body: how many leading rows are the run's baseline (default 0)
SMALL_BATCH = 32  # up to this many rows the fast JSON path checks row shapes per row, above it on the raw bytes
FAST_JSON_MIN_BYTES = 1024  # below this (about a dozen rows) orjson and the exact per-row checks are faster


class DetectError(Exception):
    def __init__(self, status: int, detail: str):
        self.status, self.detail = status, detail


class DetectRequest(BaseModel):
    """Consecutive raw sensor rows, oldest first: numeric lists in config's feature order, or objects keyed by
    feature name. With a window > 1, row i is scored with the rows before it in the same batch."""

    samples: list[list[float] | dict[str, float]] = Field(min_length=1)
    baseline: list[list[float] | dict[str, float]] | None = Field(
        None, description="optional: normal rows from the start of the current run (400 recommended), oldest "
                          "first, just before the samples; with data.baseline 'run' the samples are scaled by them, "
                          "otherwise by the worker's own training rows")


class DetectResponse(BaseModel):
    scores: list[float]
    is_anomaly: list[bool]
    threshold: float
    model_round: int
    model: str


def parse_samples(body: bytes, features: list[str], max_rows: int) -> np.ndarray:
    """Raw JSON body → (rows, features) float32, or a DetectError saying exactly what is wrong."""
    return parse_detect(body, features, max_rows)[0]


def parse_detect(body: bytes, features: list[str], max_rows: int,
                 min_baseline: int = 2) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw JSON body → samples and optional baseline rows, each (rows, features) float32, or a DetectError."""
    rows = fast_json_rows(body, len(features), max_rows) if len(body) >= FAST_JSON_MIN_BYTES else None
    if rows is not None:
        return rows, None
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
    baseline = payload.get("baseline")
    if baseline is not None:
        if not isinstance(baseline, list) or len(baseline) < min_baseline:
            raise DetectError(422, f'"baseline" must be a list of at least {min_baseline} rows')
        if len(samples) + len(baseline) > max_rows:
            raise DetectError(413, f"samples and baseline together exceed the limit of {max_rows} rows")
        baseline = _rows(baseline, features, "baseline row")
    return _rows(samples, features, "row"), baseline


def _rows(samples: list, features: list[str], what: str) -> np.ndarray:
    width = len(features)
    rows = np.empty((len(samples), width), dtype=np.float32)
    for i, row in enumerate(samples):
        if isinstance(row, dict):
            missing = [f for f in features if f not in row]
            if missing:
                raise DetectError(422, f"{what} {i}: missing feature(s) {missing}")
            row = [row[f] for f in features]
        elif not isinstance(row, list):
            raise DetectError(422, f"{what} {i}: expected a list of {width} numbers or an object keyed by feature name")
        if len(row) != width:
            raise DetectError(422, f"{what} {i} has {len(row)} values, expected {width} ({', '.join(features)})")
        for j, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DetectError(422, f"{what} {i}, {features[j]}: {value!r} is not a number")
            if not math.isfinite(value):
                raise DetectError(422, f"{what} {i}, {features[j]}: {value} is not a finite number")
        rows[i] = row
    if not np.all(np.isfinite(rows)):
        raise DetectError(422, "a value is too large for float32")
    return rows


_parser = simdjson.Parser() if simdjson else None


def fast_json_rows(body: bytes, width: int, max_rows: int) -> np.ndarray | None:
    """The common body, ``{"samples": [[n, …], …]}`` with rows of ``width`` finite numbers and no other key, as
    (rows, width) float32 without a Python object per value; None for anything else, which ``parse_detect``'s
    exact path then accepts or refuses with its message. So this path decides no error, and what it accepts it
    reads exactly as that path would (both round each number correctly to float64, then to float32).

    simdjson checks the JSON and that every leaf is a number (not a string, bool or null) and flattens the
    numbers; the shape is checked apart from that: the body holds exactly rows + 1 arrays, and every row is one
    array of ``width`` values."""
    global _parser
    if _parser is None or not body:
        return None
    doc = samples = None
    try:
        try:
            doc = _parser.parse(body)
        except RuntimeError:  # a proxy of an earlier document is still alive: parse with a fresh parser
            _parser = simdjson.Parser()
            doc = _parser.parse(body)
        if not isinstance(doc, simdjson.Object) or list(doc.keys()) != ["samples"]:
            return None
        samples = doc["samples"]
        if not isinstance(samples, simdjson.Array):
            return None
        n = len(samples)
        if n == 0 or n > max_rows or body.count(b"[") != n + 1:  # other keys may not hide a "[": there are none
            return None
        if n <= SMALL_BATCH:
            if not all(isinstance(row, simdjson.Array) and len(row) == width for row in samples):
                return None
        elif not _rows_have_width(body, n, width):
            return None
        flat = np.frombuffer(samples.as_buffer(of_type="d"), dtype=np.float64)
    except (ValueError, TypeError, RuntimeError):  # not JSON, a non-number leaf, a number out of range (simdjson
        # raises RuntimeError for integers beyond 64 bits): the exact path says so
        return None
    finally:
        del doc, samples  # the parser is reused only once no proxy of its document is left
    if flat.size != n * width:
        return None
    with np.errstate(over="ignore"):
        rows = flat.astype(np.float32).reshape(n, width)
    if not np.isfinite(rows).all():  # beyond float32: the exact path names the value
        return None
    return rows


def _rows_have_width(body: bytes, n: int, width: int) -> bool:
    """On the raw bytes of a body whose only arrays are the samples list and its rows, and whose leaves are all
    numbers: every row is a flat array of ``width`` values (arrays in sequence, not nested; width - 1 commas each)."""
    raw = np.frombuffer(body, dtype=np.uint8)
    opens, closes = np.flatnonzero(raw == ord("[")), np.flatnonzero(raw == ord("]"))
    if len(opens) != n + 1 or len(closes) != n + 1:
        return False
    row_open, row_close = opens[1:], closes[:-1]  # opens[0] / closes[-1] belong to the samples list
    if not (np.all(row_open < row_close) and np.all(row_close[:-1] < row_open[1:])):
        return False
    commas = np.flatnonzero(raw == ord(","))
    per_row = np.searchsorted(commas, row_close) - np.searchsorted(commas, row_open)
    return bool(np.all(per_row == width - 1))


def parse_binary(body: bytes, features: list[str], max_rows: int, baseline_rows: str | None,
                 min_baseline: int = 2) -> tuple[np.ndarray, np.ndarray | None]:
    """``application/octet-stream`` body → samples and optional baseline rows, or a DetectError. The body is
    rows × features little-endian float32 values, row after row in feature order; with ``X-Baseline-Rows: k`` the
    first k rows are the run's baseline (as the JSON field ``baseline``)."""
    width = len(features)
    row_bytes = width * BINARY_DTYPE.itemsize
    if not body:
        raise DetectError(422, "binary body is empty: send at least one row of "
                               f"{width} little-endian float32 values ({row_bytes} bytes)")
    if len(body) % row_bytes:
        raise DetectError(422, f"binary body of {len(body)} bytes is not a whole number of rows: each row is "
                               f"{width} little-endian float32 values ({row_bytes} bytes) in the order "
                               f"{', '.join(features)}")
    n = len(body) // row_bytes
    if n > max_rows:
        raise DetectError(413, f"batch of {n} rows exceeds the limit of {max_rows} rows")
    k = 0
    if baseline_rows is not None:
        if not baseline_rows.strip().isdigit():
            raise DetectError(422, f"{H_BASELINE_ROWS} must be a whole number of rows, not {baseline_rows!r}")
        k = int(baseline_rows)
        if k and k < min_baseline:
            raise DetectError(422, f"{H_BASELINE_ROWS} must be 0 or at least {min_baseline} rows")
        if k >= n:
            raise DetectError(422, f"{H_BASELINE_ROWS} is {k} but the body holds only {n} rows: "
                                   "no samples are left to score")
    rows = np.frombuffer(body, dtype=BINARY_DTYPE).reshape(n, width)
    finite = np.isfinite(rows)
    if not finite.all():
        i, j = np.argwhere(~finite)[0]
        raise DetectError(422, f"row {i}, {features[j]}: {rows[i, j]} is not a finite number")
    rows = rows.astype(np.float32, copy=False)
    return (rows[k:], rows[:k]) if k else (rows, None)


def create_app(settings: Settings, worker: WorkerSettings, start_loop: bool = True) -> FastAPI:
    detector = ModelSlot()
    loop = WorkerLoop(settings, worker, detector)
    features = settings.data.features
    max_rows = settings.serving.max_batch_rows
    max_body = max_rows * len(features) * BYTES_PER_VALUE + 4096
    max_binary_body = max_rows * len(features) * BINARY_DTYPE.itemsize

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_loop:
            loop.start()
            observability.start()  # telemetry to the aggregator's dashboard
        yield
        loop.stop()
        observability.stop()

    app = FastAPI(title=f"fedad worker {worker.id}", version="1", lifespan=lifespan,
                  description="Scores sensor rows with this edge node's federated autoencoder.")
    app.state.loop = loop
    app.state.detector = detector
    observability = WorkerObservability(app, settings, worker, loop, detector)  # metrics, log round, page
    stats = observability.stats

    @app.exception_handler(DetectError)
    async def _detect_error(request: Request, exc: DetectError):
        stats.refused(exc.status)
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

    def status_document() -> dict:
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

    @app.get("/v1/status")
    async def status():
        return status_document()

    @app.post("/detect", response_model=DetectResponse,
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": DetectRequest.model_json_schema(ref_template="#/components/schemas/{model}")},
                  BINARY_TYPE: {"schema": {"type": "string", "format": "binary", "description": (
                      "rows of little-endian float32 values in config's feature order, no header; header "
                      f"{H_BASELINE_ROWS}: k makes the first k rows the run's baseline")}}}}},
              responses={413: {"description": "batch too large"}, 422: {"description": "invalid rows"},
                         503: {"description": "no model yet"}})
    async def detect(request: Request):
        started = time.perf_counter()
        model = detector.current
        if model is None:
            raise DetectError(503, f"no model to serve yet: the worker is {loop.phase}; retry after the first "
                                   "federated round (GET /readyz says when)")
        headers = request.headers
        declared = headers.get("content-length")
        binary = headers.get("content-type", "").startswith(BINARY_TYPE)
        limit = max_binary_body if binary else max_body
        if declared and declared.isdigit() and int(declared) > limit:
            raise DetectError(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
        min_baseline = max(2, settings.data.window)
        if binary:
            rows, baseline = parse_binary(await request.body(), features, max_rows, headers.get(H_BASELINE_ROWS),
                                          min_baseline)
        else:
            rows, baseline = parse_detect(await request.body(), features, max_rows, min_baseline)
        scores = model.score(rows, baseline)
        flags = model.detector.is_anomaly(scores)
        body = orjson.dumps({"scores": scores, "is_anomaly": flags, "threshold": model.threshold,
                             "model_round": model.model_round, "model": model.kind}, option=orjson.OPT_SERIALIZE_NUMPY)
        stats.scored(scores, flags, model.threshold, time.perf_counter() - started)
        return Response(body, media_type="application/json")

    # The route above documents /detect (OpenAPI); requests are served by this plain Starlette route with the same
    # function, placed first: it skips FastAPI's per-request dependency solving and the scan of the other routes,
    # ~40 µs of the ~90 µs a batch-1 request costs (BENCHMARKS.md). Middleware and exception handlers apply alike.
    app.router.routes.insert(0, Route("/detect", detect, methods=["POST"], include_in_schema=False))
    app.include_router(observability.router(status_document))
    return app
