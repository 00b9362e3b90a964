"""One log format for both services: time, level, service, worker id, round, message — as text or JSON lines.

Every line carries the worker id and the federation round, so the lines of several edge nodes can be merged and
filtered without parsing messages. A worker's id is fixed per process; on the aggregator it is the worker a request
comes from (``worker_context``, set per request by services/observability/context.py), ``-`` for lines of no
request. The round comes from a callable the service binds once it knows its state (``bind_round``); a log call
can name another with ``extra={"round": n}``.

``logging.format: json`` (config.yaml) writes one JSON object per line: time (UTC, ISO 8601), level, service,
worker, round, logger, message, and exc for a traceback.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
from collections.abc import Callable

worker_context: contextvars.ContextVar[str | None] = contextvars.ContextVar("fedad_log_worker", default=None)
_process = {"service": "fedad", "worker": None}
_round_source: Callable[[], int | None] | None = None


def bind_round(source: Callable[[], int | None] | None) -> None:
    """Where the ``round`` of each line comes from: a cheap callable, read once per line."""
    global _round_source
    _round_source = source


def _current_round() -> int | None:
    if _round_source is None:
        return None
    try:
        return _round_source()
    except Exception:  # a log line must never fail because the state it reads is half built
        return None


class ContextFilter(logging.Filter):
    """Adds ``service``, ``worker`` and ``round`` to every record (keeping those a call passed in ``extra``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = _process["service"]
        if getattr(record, "worker", None) is None:
            record.worker = _process["worker"] or worker_context.get()
        if getattr(record, "round", None) is None:
            record.round = _current_round()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self, worker_in_service: bool):
        super().__init__("%(asctime)s %(levelname)s %(tag)s round=%(round_text)s %(message)s")
        self.worker_in_service = worker_in_service

    def format(self, record: logging.LogRecord) -> str:
        worker = getattr(record, "worker", None)
        service = getattr(record, "service", None)
        if self.worker_in_service:  # a worker process: "worker[valve1]", as before
            record.tag = f"{service}[{worker}]"
        else:
            record.tag = f"{service} worker={worker or '-'}"
        round_ = getattr(record, "round", None)
        record.round_text = "-" if round_ is None else round_
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the message is formatted, never split."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": getattr(record, "service", _process["service"]),
            "worker": getattr(record, "worker", None),
            "round": getattr(record, "round", None),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def setup_logging(service: str, level: str = "INFO", fmt: str = "text", worker: str | None = None) -> None:
    """Configure the root logger for a service process. ``service`` is "aggregator" or "worker"; a worker process
    passes its id, which then stands on every line. ``fmt`` is "text" or "json"."""
    _process.update(service=service, worker=worker)
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(worker_in_service=worker is not None))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)  # library warnings become lines of the same format (one JSON object each)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the round progress
    logging.getLogger("onnxruntime").setLevel(logging.WARNING)  # "Performing symbolic shape inference..." per round
