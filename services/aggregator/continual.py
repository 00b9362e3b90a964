"""When a continual round opens: the rule of federation.continual as plain functions over the workers' latest
reports and the clock, so the round state machine (rounds.py) only asks, commits and opens.

Triggers, in the order they are asked:
  drift     a worker's report says drift=true (on_drift)
  new_data  at least min_workers_with_new_data training workers report new_rows >= min_new_rows
  schedule  every_s after the last round closed (or the last skipped one); skipped, and recorded as skipped, when
            skip_without_new_data and no worker reports a new row
  admin     POST /v1/admin/rounds (any time the federation is idle; not decided here)

Only reports received since the last round closed count for drift and new data: a report from before it describes
rows that round may have trained on, and would open round after round. Reports live in memory: after a restart the
aggregator learns them again from the workers' next reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.config import ContinualSettings
from services.protocol.messages import WorkerReport

LIVE_S = 90.0  # a worker seen this recently is live: a continual round waits for its update
SKIPPED_KEPT = 20  # skipped scheduled rounds kept in state.json (the latest ones)
TRIGGERS = ("campaign", "schedule", "admin", "new_data", "drift")


@dataclass(frozen=True)
class Received:
    report: WorkerReport
    at: float


class Reports:
    """The latest WorkerReport of each worker and when it arrived."""

    def __init__(self):
        self.latest: dict[str, Received] = {}

    def record(self, worker_id: str, report: WorkerReport, now: float) -> None:
        self.latest[worker_id] = Received(report, now)

    def since(self, moment: float) -> dict[str, WorkerReport]:
        """The reports that arrived after ``moment``."""
        return {w: r.report for w, r in self.latest.items() if r.at > moment}

    def get(self, worker_id: str) -> Received | None:
        return self.latest.get(worker_id)


def data_trigger(rule: ContinualSettings, fresh: dict[str, WorkerReport], trainers: set[str]) -> str | None:
    """``"drift"`` or ``"new_data"`` if the fresh reports ask for a round, else None."""
    if rule.on_drift and any(r.drift for r in fresh.values()):
        return "drift"
    if rule.min_new_rows is not None:
        ready = [w for w, r in fresh.items() if w in trainers and r.new_rows >= rule.min_new_rows]
        if len(ready) >= rule.min_workers_with_new_data:
            return "new_data"
    return None


def has_new_rows(fresh: dict[str, WorkerReport], trainers: set[str]) -> bool:
    return any(r.new_rows > 0 for w, r in fresh.items() if w in trainers)


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
