"""When a continual round opens: the rule of federation.continual as plain functions over the workers' latest
reports and the clock, so the round state machine (rounds.py) only asks, commits and opens.

Triggers, in the order they are asked:
  drift     a worker's report says drift=true (on_drift)
  new_data  at least min_workers_with_new_data training workers report new_rows >= min_new_rows
  schedule  every_s after the last round closed (or the last skipped one); skipped, and recorded as skipped, when
            skip_without_new_data and no worker reports a new row
  admin     POST /v1/admin/rounds (any time the federation is idle; not decided here)

Only reports received since the last round closed count for drift and new data: a report from before it describes
rows that round may have trained on, and would open round after round. Each worker's latest report is kept in
``reports.log`` (a journal: services/aggregator/journal.py), so the status and the fleet's model directive follow
survive a restart; what counts as fresh starts empty after one, as the workers report again.

Cost per report is O(1) whatever the fleet's size: the fresh reports that ask for drift, carry new rows, or carry
enough of them are kept as sets as they arrive, not found by a scan.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from services.aggregator.journal import Journal
from services.config import ContinualSettings
from services.protocol.messages import WorkerReport

VERSIONS_KEPT = 10  # a report's newest model versions kept (the status shows the served and the last refused)

LIVE_S = 90.0  # a worker seen this recently is live: a continual round waits for its update
SKIPPED_KEPT = 20  # skipped scheduled rounds kept in state.json (the latest ones)
TRIGGERS = ("campaign", "schedule", "admin", "new_data", "drift")


@dataclass(frozen=True)
class Received:
    report: WorkerReport
    at: float


class Reports:
    """The latest WorkerReport of each worker and when it arrived (durable), and which of them are fresh: received
    since the last round closed."""

    def __init__(self, state_dir: Path, min_new_rows: int | None):
        self.journal = Journal(Path(state_dir) / "reports.log")
        self.min_new_rows = min_new_rows
        self.fresh: dict[str, WorkerReport] = {}
        self.drifting: set[str] = set()  # fresh reports with drift
        self.with_rows: set[str] = set()  # fresh reports with new rows
        self.ready: set[str] = set()  # fresh reports with at least min_new_rows

    def record(self, worker_id: str, report: WorkerReport, now: float) -> asyncio.Future | None:
        kept = report.model_copy(update={"versions": report.versions[-VERSIONS_KEPT:]})
        write = self.journal.put(worker_id, {"report": kept.model_dump(mode="json"), "at": now})
        self.fresh[worker_id] = report
        for flagged, members in ((report.drift, self.drifting), (report.new_rows > 0, self.with_rows),
                                 (self.min_new_rows is not None and report.new_rows >= self.min_new_rows,
                                  self.ready)):
            if flagged:
                members.add(worker_id)
            else:
                members.discard(worker_id)
        return write

    def round_closed(self) -> None:
        """Reports from before this moment describe rows the round may have trained on: none is fresh now."""
        self.fresh.clear()
        self.drifting.clear()
        self.with_rows.clear()
        self.ready.clear()

    def get(self, worker_id: str) -> Received | None:
        entry = self.journal.get(worker_id)
        if entry is None:
            return None
        return Received(WorkerReport.model_validate(entry["report"]), entry["at"])

    def __contains__(self, worker_id: str) -> bool:
        return worker_id in self.journal


def data_trigger(rule: ContinualSettings, reports: Reports, trainers: set[str]) -> str | None:
    """``"drift"`` or ``"new_data"`` if the fresh reports ask for a round, else None."""
    if rule.on_drift and reports.drifting:
        return "drift"
    if rule.min_new_rows is not None and len(reports.ready & trainers) >= rule.min_workers_with_new_data:
        return "new_data"
    return None


def has_new_rows(reports: Reports, trainers: set[str]) -> bool:
    return bool(reports.with_rows & trainers)


def next_scheduled_at(rule: ContinualSettings, history: list[dict], skipped: list[dict]) -> float | None:
    """every_s after the last round closed or the last scheduled round was skipped; None without a schedule."""
    if rule.every_s is None:
        return None
    moments = [h["closed_at"] for h in history[-1:]] + [s["at"] for s in skipped[-1:]]
    return max(moments) + rule.every_s if moments else None


def rule_text(rule: ContinualSettings, quorum: int) -> str:
    """The rule in one plain sentence, for the status and the dashboard."""
    if not rule.enabled:
        return "No continual rounds: the federation is done after its first rounds (federation.continual.enabled)."
    parts = ["an admin asks (POST /v1/admin/rounds)"]
    if rule.every_s is not None:
        every = f"{rule.every_s:g} s have passed since the last round"
        parts.append(every + (" (skipped while no worker reports new rows)" if rule.skip_without_new_data else ""))
    if rule.min_new_rows is not None:
        n = rule.min_workers_with_new_data
        parts.append(f"{'a worker reports' if n == 1 else f'{n} workers each report'} at least {rule.min_new_rows} "
                     "rows not yet trained on")
    if rule.on_drift:
        parts.append("a worker reports drift")
    listed = parts[0] if len(parts) == 1 else "; when ".join(parts[:-1]) + "; or when " + parts[-1]
    return (f"A new round opens when {listed}. It closes once every live training worker has sent its update (at "
            f"least {quorum}), or at the deadline with a quorum of {quorum}.")
