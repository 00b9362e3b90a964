"""/detect request bodies → float32 rows, or a ``ProtocolError`` with a stable code saying exactly what is wrong.

Two bodies: JSON (``{"samples": [...], "baseline": [...], "stream": "id"}``) and ``application/octet-stream``
(rows of little-endian float32, no header). The common JSON body takes a fast path (``fast_json_rows``) that
decides no error: anything it does not accept goes through the exact path, which accepts or refuses it with a
message. Every refusal carries a code of services/protocol/errors.py, so clients branch on the code, never on the
wording.
"""

from __future__ import annotations

import math
import re

import numpy as np
import orjson

from services.protocol import errors
from services.protocol.errors import ProtocolError

try:  # parses a JSON array of numbers straight into a float64 buffer, with no Python object per value
    import simdjson
except ImportError:  # pragma: no cover - the exact orjson path below serves every body on its own
    simdjson = None

BYTES_PER_VALUE = 32  # generous upper bound of one JSON number with its separator and key share
BINARY_TYPE = "application/octet-stream"  # /detect body: rows of little-endian float32, feature order, no header
BINARY_DTYPE = np.dtype("<f4")
H_BASELINE_ROWS = "X-Baseline-Rows"  # binary body: how many leading rows are the run's baseline (default 0)
H_STREAM = "X-Stream"  # binary body: the stream the rows belong to (the JSON body's "stream")
SMALL_BATCH = 32  # up to this many rows the fast JSON path checks row shapes per row, above it on the raw bytes
FAST_JSON_MIN_BYTES = 1024  # below this (about a dozen rows) orjson and the exact per-row checks are faster
STREAM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")  # a device id; no "[" (the fast path counts them)


def stream_id(value) -> str:
    """A stream id as sent by a client, checked: 1–128 characters of letters, digits and ``_ . : -``."""
    if not isinstance(value, str) or not STREAM_ID.match(value):
        shown = repr(value)[:80]
        raise ProtocolError(errors.BAD_STREAM_ID, f"stream id {shown} must be 1-128 characters of letters, digits and "
                                              "_ . : -, starting with a letter or digit")
    return value


def parse_samples(body: bytes, features: list[str], max_rows: int) -> np.ndarray:
    """Raw JSON body → (rows, features) float32, or a ProtocolError saying exactly what is wrong."""
    return parse_detect(body, features, max_rows)[0]


def parse_detect(body: bytes, features: list[str], max_rows: int,
                 min_baseline: int = 2) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """Raw JSON body → samples, optional baseline rows (each (rows, features) float32) and the optional stream id,
    or a ProtocolError."""
    rows = fast_json_rows(body, len(features), max_rows) if len(body) >= FAST_JSON_MIN_BYTES else None
    if rows is not None:
        return rows, None, None
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if any(token in body for token in (b"NaN", b"Infinity")):
            raise ProtocolError(errors.NON_FINITE, "samples must be finite numbers: NaN and Infinity are not "
                                               "allowed") from None
        raise ProtocolError(errors.MALFORMED_JSON, f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict) or "samples" not in payload:
        raise ProtocolError(errors.MISSING_FIELD, 'missing field "samples": send {"samples": [[f1, ..., fD], ...]}')
    samples = payload["samples"]
    if not isinstance(samples, list):
        raise ProtocolError(errors.BAD_SAMPLES, '"samples" must be a list of rows')
    if not samples:
        raise ProtocolError(errors.EMPTY_BATCH, '"samples" is empty: send at least one row')
    if len(samples) > max_rows:
        raise ProtocolError(errors.TOO_LARGE, f"batch of {len(samples)} rows exceeds the limit of {max_rows} rows")
    stream = stream_id(payload["stream"]) if payload.get("stream") is not None else None
    baseline = payload.get("baseline")
    if baseline is not None:
        if not isinstance(baseline, list) or len(baseline) < min_baseline:
            raise ProtocolError(errors.BAD_BASELINE, f'"baseline" must be a list of at least {min_baseline} rows')
        if len(samples) + len(baseline) > max_rows:
            raise ProtocolError(errors.TOO_LARGE, f"samples and baseline together exceed the limit of {max_rows} rows")
        baseline = _rows(baseline, features, "baseline row")
    return _rows(samples, features, "row"), baseline, stream


def _rows(samples: list, features: list[str], what: str) -> np.ndarray:
    width = len(features)
    rows = np.empty((len(samples), width), dtype=np.float32)
    for i, row in enumerate(samples):
        if isinstance(row, dict):
            missing = [f for f in features if f not in row]
            if missing:
                raise ProtocolError(errors.MISSING_FEATURE, f"{what} {i}: missing feature(s) {missing}")
            row = [row[f] for f in features]
        elif not isinstance(row, list):
            raise ProtocolError(errors.BAD_ROW, f"{what} {i}: expected a list of {width} numbers or an object keyed by "
                                            "feature name")
        if len(row) != width:
            raise ProtocolError(errors.WRONG_WIDTH, f"{what} {i} has {len(row)} values, expected {width} "
                                                f"({', '.join(features)})")
        for j, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ProtocolError(errors.NOT_A_NUMBER, f"{what} {i}, {features[j]}: {value!r} is not a number")
            if not math.isfinite(value):
                raise ProtocolError(errors.NON_FINITE, f"{what} {i}, {features[j]}: {value} is not a finite number")
        rows[i] = row
    if not np.all(np.isfinite(rows)):
        raise ProtocolError(errors.NON_FINITE, "a value is too large for float32")
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
    """``application/octet-stream`` body → samples and optional baseline rows, or a ProtocolError. The body is
    rows × features little-endian float32 values, row after row in feature order; with ``X-Baseline-Rows: k`` the
    first k rows are the run's baseline (as the JSON field ``baseline``)."""
    width = len(features)
    row_bytes = width * BINARY_DTYPE.itemsize
    if not body:
        raise ProtocolError(errors.EMPTY_BATCH, "binary body is empty: send at least one row of "
                                            f"{width} little-endian float32 values ({row_bytes} bytes)")
    if len(body) % row_bytes:
        raise ProtocolError(errors.PARTIAL_ROW, f"binary body of {len(body)} bytes is not a whole number of rows: each "
                                            f"row is {width} little-endian float32 values ({row_bytes} bytes) in the "
                                            f"order {', '.join(features)}")
    n = len(body) // row_bytes
    if n > max_rows:
        raise ProtocolError(errors.TOO_LARGE, f"batch of {n} rows exceeds the limit of {max_rows} rows")
    k = 0
    if baseline_rows is not None:
        if not baseline_rows.strip().isdigit():
            raise ProtocolError(errors.BAD_BASELINE, f"{H_BASELINE_ROWS} must be a whole number of rows, not "
                                                 f"{baseline_rows!r}")
        k = int(baseline_rows)
        if k and k < min_baseline:
            raise ProtocolError(errors.BAD_BASELINE, f"{H_BASELINE_ROWS} must be 0 or at least {min_baseline} rows")
        if k >= n:
            raise ProtocolError(errors.EMPTY_BATCH, f"{H_BASELINE_ROWS} is {k} but the body holds only {n} rows: "
                                                "no samples are left to score")
    rows = np.frombuffer(body, dtype=BINARY_DTYPE).reshape(n, width)
    finite = np.isfinite(rows)
    if not finite.all():
        i, j = np.argwhere(~finite)[0]
        raise ProtocolError(errors.NON_FINITE, f"row {i}, {features[j]}: {rows[i, j]} is not a finite number")
    rows = rows.astype(np.float32, copy=False)
    return (rows[k:], rows[:k]) if k else (rows, None)
