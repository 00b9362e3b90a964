"""Observability of both services: Prometheus metrics (metrics.py), worker → aggregator telemetry (telemetry.py),
per-request log context (context.py; the log format itself is services/logs.py) and the live pages with their JSON
(dashboard.py, static/). docs/observability.md lists the metrics."""
