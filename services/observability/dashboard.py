"""The pages and their JSON: the aggregator's dashboard at ``/``, each worker's page at ``/``, ``/metrics`` on both.

The pages are static files of this package (HTML, CSS, JS and the vendored uPlot build): no CDN and no build step,
because edge sites are often offline. Each page polls its service's ``GET /v1/dashboard`` every two seconds.
``AggregatorObservability`` and ``WorkerObservability`` wire metrics, log context and routes into the apps, so the
route modules only call them at the spots where something happens.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import orjson
from fastapi import APIRouter, FastAPI, HTTPException
from starlette.responses import Response

from services import logs
from services.config import Settings, WorkerSettings
from services.observability.context import WorkerLogContext
from services.observability.metrics import (AggregatorMetrics, DetectStats, IngestCollector, LiveDataCollector,
                                            WorkerMetrics, metrics_response)
from services.observability.telemetry import Telemetry, TelemetryBoard, TelemetryReporter, finite_or_none
from services.security.tls import client_context

STATIC_DIR = Path(__file__).resolve().parent / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}
# The pages load only their own files and fetch only their own service.
_CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"
HISTORY_ROWS = 12  # closed rounds listed in the dashboard's table (the loss chart shows all)


def _json(payload) -> Response:
    """orjson: NaN becomes null instead of an error, numpy values serialise."""
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS),
                    media_type="application/json", headers={"Cache-Control": "no-store"})


def page_router(page: str, registry, document: Callable[[], dict], summary: str) -> APIRouter:
    """``/`` serves ``page``; ``/static/<name>`` the package's static files, read once, from a fixed list;
    ``/v1/dashboard`` the page's data (``document()``); ``/metrics`` the service's ``registry``."""
    files = {p.name: (p.read_bytes(), _TYPES[p.suffix]) for p in STATIC_DIR.iterdir() if p.suffix in _TYPES}
    html = files[page][0]
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def index():
        return Response(html, media_type=_TYPES[".html"],
                        headers={"Cache-Control": "no-cache", "Content-Security-Policy": _CSP})

    @router.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in files:
            raise HTTPException(404, f"no static file {name!r}")
        body, media_type = files[name]
        return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})

    @router.get("/v1/dashboard", summary=summary)
    async def dashboard():
        return _json(document())

    @router.get("/metrics", include_in_schema=False)
    async def metrics():
        return metrics_response(registry)

    return router


# -- aggregator -------------------------------------------------------------------------------------------------------
class AggregatorObservability:
    """Watches the aggregator: its routes report refusals, updates and telemetry here (the aggregator's
    ``AggregatorObserver`` interface); metrics and the dashboard read the federation's state, never write it."""

    def __init__(self, settings: Settings, federation, identify: Callable[[str], str | None], nodes=None):
        self.settings = settings
        self.status = federation.status
        self.identify = identify
        self.worker_ids = [w.id for w in settings.workers]
        self.metrics = AggregatorMetrics(federation, self.worker_ids, nodes)
        self.board = TelemetryBoard(self.worker_ids, settings.dashboard.telemetry_interval_s or 5.0)

    def install(self, app: FastAPI) -> None:
        app.add_middleware(WorkerLogContext, identify=self.identify)

    # what the aggregator reports
    def refused(self, path: str, status: int, code: str) -> None:
        self.metrics.refused(path, status, code)

    def update_received(self, n_bytes: int) -> None:
        self.metrics.update_bytes.inc(n_bytes)

    def update_accepted(self, result: dict) -> None:
        self.metrics.accepted(result)

    def telemetry(self, worker_id: str, report: Telemetry) -> None:
        self.board.report(worker_id, report)
        self.metrics.telemetry_reports.inc()

    def round_closed(self, record: dict) -> None:
        self.metrics.round_closed(record)

    # what the pages read
    def dashboard(self) -> dict:
        status = self.status()
        history = status.pop("history")
        status["history"] = history[-HISTORY_ROWS:]
        telemetry = self.board.snapshot()
        latest = telemetry.pop("latest")
        workers = []
        for worker_id in self.worker_ids:
            known = status["workers"].get(worker_id, {})
            t = latest.get(worker_id, {})
            rows, anomalies = t.get("rows_scored"), t.get("anomalies_flagged")
            workers.append({
                "id": worker_id,
                "joined": known.get("joined", False),
                "sample_count": known.get("sample_count"),
                "last_seen": known.get("last_seen"),
                "last_loss": known.get("last_loss"),
                "update_in_open_round": known.get("update_in_open_round", False),
                "new_rows": known.get("new_rows"),  # from the worker's latest report (continual rounds)
                "drift_events": known.get("drift_events"),
                "model": known.get("model"),  # served round, pin, versions and the last refused one with its reason
                "phase": t.get("phase"),
                "model_round": t.get("model_round"),
                "threshold": t.get("threshold"),
                "precision": t.get("precision"),  # int8 | fp32, and why
                "precision_reason": t.get("precision_reason"),
                "detect_requests": t.get("detect_requests"),
                "rows_scored": rows,
                "anomalies_flagged": anomalies,
                "open_alarms": t.get("open_alarms"),
                "anomaly_rate": anomalies / rows if rows else None,
                "telemetry_at": t.get("received_at"),
            })
        losses = {"round": [h["round"] for h in history], "mean": [h["mean_loss"] for h in history],
                  "workers": {w: [h["workers"].get(w, {}).get("loss") for h in history] for w in self.worker_ids}}
        return {"now": time.time(), "telemetry_interval_s": self.settings.dashboard.telemetry_interval_s,
                "status": status, "workers": workers, "losses": losses, "anomalies": telemetry}

    def router(self) -> APIRouter:
        return page_router("aggregator.html", self.metrics.registry, self.dashboard,
                           "Everything the dashboard page shows, in one document")


# -- worker -----------------------------------------------------------------------------------------------------------
def worker_round(loop, detector) -> int:
    """The round a worker's log line belongs to: the one it trains (or last trained), or the one it serves; 0 before
    either (round 0 is the untrained starting model)."""
    trained = (loop.progress or {}).get("round") or 0
    served = detector.current.model_round if detector.current else 0
    return max(trained, served)


class WorkerObservability:
    """Watches a worker: /metrics, the telemetry the aggregator's dashboard shows, the worker's page and the round in
    its log lines. Handed the worker's parts (services/worker/assembly.py), it only reads them: the federation loop,
    the served model's slot, the streams, the live buffer, the drift watch, the alarms and device ingestion (the
    last four None when switched off)."""

    def __init__(self, settings: Settings, worker: WorkerSettings, loop, detector, streams=None, buffer=None,
                 drift=None, alarms=None, ingest=None):
        self.settings, self.worker, self.loop, self.detector = settings, worker, loop, detector
        self.buffer, self.drift, self.alarms = buffer, drift, alarms
        self.stats = DetectStats(settings.dashboard.recent_scores)
        self.metrics = WorkerMetrics(worker.id, loop, detector, self.stats, streams)
        self.metrics.registry.register(LiveDataCollector(buffer, drift))
        if ingest is not None:
            self.metrics.registry.register(IngestCollector(ingest.metrics))
        interval = settings.dashboard.telemetry_interval_s  # telemetry to the aggregator's dashboard (0: none)
        self.reporter = TelemetryReporter(
            settings.aggregator.url, worker.id, worker.token, interval, self.telemetry,
            verify=client_context(settings.tls, worker.id)) if interval > 0 and worker.token else None
        logs.bind_round(lambda: worker_round(loop, detector))

    def telemetry(self) -> dict:
        model, stats = self.detector.current, self.stats
        trained = getattr(self.loop, "last_training", None) or {}
        drift, buffer = self.drift, self.buffer
        return {"boot_id": stats.boot_id, "phase": str(self.loop.phase)[:64],
                "model_round": model.model_round if model else None,
                "threshold": finite_or_none(model.threshold) if model else None,
                "detect_requests": stats.requests, "rows_scored": stats.rows, "anomalies_flagged": stats.anomalies,
                "open_alarms": len(self.alarms.open_streams()) if self.alarms is not None else 0,
                "training_loss": finite_or_none(trained.get("loss")),
                "drift_events": drift.events if drift is not None else 0,
                "buffer_rows": len(buffer) if buffer is not None else 0,
                "precision": model.kind if model else None,
                "precision_reason": ((getattr(self.loop.models, "served_precision", None) or {}).get("reason")
                                     or "")[:300] or None}

    def start(self) -> None:
        """Report to the aggregator every dashboard.telemetry_interval_s (0: never)."""
        if self.reporter:
            self.reporter.start()

    def stop(self) -> None:
        if self.reporter:
            self.reporter.stop()

    def dashboard(self, status: dict) -> dict:
        """The worker's /v1/status document plus its /detect counts and recent scores."""
        stats = self.stats
        return {**status, "now": time.time(),
                "detect": {"requests": stats.requests, "rows_scored": stats.rows, "anomalies_flagged": stats.anomalies,
                           "by_status": {str(k): v for k, v in stats.by_status.items()}},
                "recent": stats.recent()}

    def router(self, status: Callable[[], dict]) -> APIRouter:
        return page_router("worker.html", self.metrics.registry, lambda: self.dashboard(status()),
                           "Everything this worker's page shows, in one document")
