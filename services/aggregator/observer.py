"""What the aggregator's routes report as they happen, to whoever watches (metrics, the dashboard).

The aggregator defines the interface and never imports its implementation (services/observability/dashboard.py's
``AggregatorObservability``): observability sits above the aggregator and is handed in by ``create_app``.
"""

from __future__ import annotations

from typing import Protocol

from services.protocol.messages import Telemetry


class AggregatorObserver(Protocol):
    def refused(self, path: str, status: int, code: str) -> None:
        """A request was refused with ``status`` and the stable error ``code``."""

    def update_received(self, n_bytes: int) -> None:
        """``n_bytes`` of an update body were read (also for a body that was then refused)."""

    def update_accepted(self, result: dict) -> None:
        """An update was taken into the open round (``result["duplicate"]``: the same bytes again)."""

    def telemetry(self, worker_id: str, report: Telemetry) -> None:
        """A worker's serving counts arrived."""
