"""The round state machine, plain Python so tests can drive it without HTTP.

waiting  → workers join with their scaling statistics; once ``min_workers`` have joined the scaler is frozen
training → round r (= rounds_done + 1) is open while rounds_done < the round target; the new global model is
           persisted, then published (rounds_done += 1)
idle     → federation.continual: the first campaign (federation.rounds) is done; a trigger (continual.py: schedule,
           admin, new data, drift) sets the round target to rounds_done + 1, which opens the next round
done     → not continual: all rounds done; the last global model stays published

A campaign round closes when ``min_workers`` updates arrived, or at the deadline with at least ``quorum``. A
continual round closes once every live training worker (seen within continual.LIVE_S) has sent its update and there
are at least ``quorum``, or at the deadline with ``quorum``: the workers of a running federation come and go.

Crash safety: a trigger is committed to state.json (round target and what opened it) before anyone hears of it, so
kill -9 leaves the federation idle or with the round open, and a round open before a restart is open after it.

Late joiners (joining while idle or training, after the scaler is frozen) receive the frozen scaler; their
statistics are recorded with their join but never merged into it: changing the scaler would change the meaning of
every weight already learnt (with data.baseline run or node the scaling is per run or node anyway).

Detect-only workers (``JoinRequest.role``) only pull the published models: they are listed in the status, never
counted for ``min_workers`` or ``quorum``, never merged into the scaler, and their updates are refused.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, replace

import numpy as np

from services import faults
from services.aggregator import continual, strategies
from services.aggregator.state import RunState
from services.aggregator.store import AggregatorStore
from services.aggregator.strategies import DifferentialPrivacyServerSideFixedClipping, Strategy
from services.config import Settings
from services.model.layout import Architecture
from services.protocol import errors
from services.protocol.codec import CodecError, content_hash, decode_weights
from services.protocol.errors import ProtocolError
from services.protocol.messages import JoinRequest, JoinResponse, RoundState, TrainingPlan, WorkerReport
from services.protocol.scaling import FeatureStats, Scaler
from services.security.filters import update_norm

log = logging.getLogger("fedad.aggregator")


class RoundError(ProtocolError):
    """A request the round state refuses: its stable ``code`` (services/protocol/errors.py) and HTTP ``status`` say
    why, for the worker and for metrics alike; ``detail`` says it to people."""


@dataclass(frozen=True)
class Update:
    sample_count: int
    loss: float
    sha256: str
    update_norm: float = 0.0  # L2 norm of the change to the global model, before any clipping
    clipped: bool = False


class Federation:
    """One federated run: ``store`` persists it, ``strategy`` (services/aggregator/strategies.py, with its clipping
    and DP wrappers; by default as config.yaml says) aggregates each round."""

    def __init__(self, settings: Settings, store: AggregatorStore, clock=time.time, strategy: Strategy | None = None):
        self.settings = settings
        self.fed = settings.federation
        self.store = store
        self.clock = clock
        self.architecture = Architecture.from_settings(settings)
        self.spec_hash = self.architecture.spec_hash
        self.n_params = self.architecture.n_params
        self.strategy = strategy if strategy is not None else strategies.from_settings(settings)
        self.storage_error: str | None = None
        self.pending: dict[str, Update] = {}
        self.last_seen: dict[str, float] = {}
        self.detect_only: dict[str, int] = {}  # detect-only workers (this process) → their sample count
        self.round_listeners: list = []  # called with each closed round's record once it is published (metrics)
        self.continual = settings.federation.continual
        self.reports = continual.Reports()
        self.started_at = clock()  # until LIVE_S after a restart, every joined worker counts as live
        self.fresh_since = 0.0  # reports from before the last round closed ask for no new round
        loaded = store.load(self.n_params)
        if loaded is None:
            initial = self.architecture.initial_weights(settings.model.seed)
            self.state = RunState.from_json(store.commit(RunState(run_id=uuid.uuid4().hex[:12]).to_json(), initial))
            self.global_weights = initial
        else:
            self.state, self.global_weights = RunState.from_json(loaded[0]), loaded[1]
        self.strategy.load_state_dict(self.state.privacy)
        self.round_opened_at = self.clock()
        self.strategy.begin(self.global_weights)
        for worker_id, weights, meta in store.pending_updates(self.open_round, self.n_params):
            self._accept(worker_id, weights, Update(meta["sample_count"], meta["loss"], meta["sha256"]))

    # -- read side ------------------------------------------------------------------------------------------------
    @property
    def rounds_done(self) -> int:
        return self.state.rounds_done

    @property
    def open_round(self) -> int:
        return self.rounds_done + 1

    @property
    def rounds_target(self) -> int:
        """Rounds to have done: the first campaign's, or one more than done once a trigger opened a round."""
        return max(self.state.rounds_target, self.fed.rounds)

    @property
    def phase(self) -> str:
        if self.rounds_done < self.rounds_target:
            return "training" if self.state.scaler is not None else "waiting"
        return "idle" if self.continual.enabled else "done"

    def trigger_of(self, round_no: int) -> str:
        """What opened ``round_no``: a continual trigger, or "campaign" for the first rounds."""
        opened = self.state.round_trigger or {}
        return opened.get("trigger", "campaign") if opened.get("round") == round_no else "campaign"

    def trainers(self) -> set[str]:
        return {w for w in self.state.joined if w not in self.detect_only}

    def live_trainers(self) -> set[str]:
        """Training workers seen within LIVE_S (all joined ones, for LIVE_S after a restart)."""
        now = self.clock()
        return {w for w in self.trainers() if now - self.last_seen.get(w, self.started_at) <= continual.LIVE_S}

    def next_scheduled_at(self) -> float | None:
        return continual.next_scheduled_at(self.continual, self.state.history, self.state.skipped)

    @property
    def scaler(self) -> Scaler | None:
        return Scaler(**self.state.scaler) if self.state.scaler else None

    def deadline(self) -> float:
        return self.round_opened_at + self.fed.round_deadline_s

    def plan(self) -> TrainingPlan:
        return TrainingPlan.from_settings(self.settings)

    def join_response(self) -> JoinResponse:
        return JoinResponse(run_id=self.state.run_id, phase=self.phase, round=self.open_round,
                            rounds_done=self.rounds_done, rounds_total=self.fed.rounds, plan=self.plan(),
                            scaler=self.scaler)

    def round_state(self) -> RoundState:
        training = self.phase == "training"
        return RoundState(phase=self.phase, open_round=self.open_round if training else None,
                          rounds_done=self.rounds_done, rounds_total=self.fed.rounds, continual=self.continual.enabled)

    def continual_status(self) -> dict:
        rule = self.continual
        scheduled = self.next_scheduled_at() if self.phase == "idle" else None
        return {"enabled": rule.enabled, "rule": continual.rule_text(rule, self.fed.quorum), "every_s": rule.every_s,
                "next_scheduled_in_s": round(max(0.0, scheduled - self.clock()), 1) if scheduled else None,
                "skip_without_new_data": rule.skip_without_new_data, "min_new_rows": rule.min_new_rows,
                "min_workers_with_new_data": rule.min_workers_with_new_data, "on_drift": rule.on_drift,
                "open_round_trigger": self.trigger_of(self.open_round) if self.phase == "training" else None,
                "skipped": self.state.skipped}

    def worker_report_status(self, worker_id: str) -> dict:
        """What the worker last reported: rows not yet trained on, drift, and which model it serves and why."""
        received = self.reports.get(worker_id)
        if received is None:
            return {"new_rows": None, "drift": None, "drift_events": None, "reported_at": None, "model": None}
        r = received.report
        refused = next((v for v in reversed(r.versions) if v.status == "refused"), None)
        return {"new_rows": r.new_rows, "drift": r.drift, "drift_events": r.drift_events, "reported_at": received.at,
                "model": {"served_round": r.served_round, "pinned": r.pinned,
                          "versions": [v.model_dump() for v in r.versions],
                          "last_refused": {"round": refused.round, "reason": refused.reason} if refused else None}}

    def status(self) -> dict:
        joined = self.state.joined
        workers = {}
        for worker_id in sorted(set(joined) | set(self.last_seen) | set(self.reports.latest)):
            last = next((h["workers"][worker_id] for h in reversed(self.state.history)
                         if worker_id in h["workers"]), None)
            detect_only = worker_id in self.detect_only and worker_id not in joined
            workers[worker_id] = {
                "role": "detect_only" if detect_only else "train",
                "joined": worker_id in joined or detect_only,
                "sample_count": self.detect_only[worker_id] if detect_only
                else joined.get(worker_id, {}).get("sample_count"),
                "last_seen": self.last_seen.get(worker_id),
                "last_loss": last["loss"] if last else None,
                "update_in_open_round": worker_id in self.pending,
                **self.worker_report_status(worker_id),
            }
        return {
            "run_id": self.state.run_id,
            "phase": self.phase,
            "round": self.open_round if self.phase == "training" else self.rounds_done,
            "rounds_done": self.rounds_done,
            "rounds_total": self.fed.rounds,
            "min_workers": self.fed.min_workers,
            "quorum": self.fed.quorum,
            "updates_in_open_round": sorted(self.pending),
            "deadline_in_s": round(self.deadline() - self.clock(), 1) if self.phase == "training" else None,
            "strategy": self.fed.strategy,
            "update_clip_norm": self.strategy.clip_norm,
            "privacy": self.privacy_status(),
            "storage_error": self.storage_error,
            "model": {"spec_hash": self.spec_hash, "parameters": self.n_params,
                      "sha256": self.state.global_sha256},
            "workers": workers,
            "continual": self.continual_status(),
            "history": self.state.history,
        }

    def privacy_status(self) -> dict | None:
        privacy = self.settings.privacy
        if not privacy.enabled:
            return None
        status = {"side": privacy.side, "noise_multiplier": privacy.noise_multiplier, "clip_norm": privacy.clip_norm,
                  "delta": privacy.delta}
        if isinstance(self.strategy, DifferentialPrivacyServerSideFixedClipping):
            status["epsilon"] = round(self.strategy.accountant.get_epsilon(privacy.delta), 3)
            status["rounds_accounted"] = self.strategy.accountant.steps
        return status

    # -- write side -----------------------------------------------------------------------------------------------
    def seen(self, worker_id: str) -> None:
        """The worker is alive: it joined, sent an update or reported telemetry just now."""
        self.last_seen[worker_id] = self.clock()

    def join(self, worker_id: str, request: JoinRequest) -> JoinResponse:
        if request.spec_hash != self.spec_hash:
            raise RoundError(errors.SPEC_MISMATCH,
                             f"model spec {request.spec_hash} differs from the federation's {self.spec_hash}: "
                             "the worker's config (features, window, model.kind and sizes) must match the aggregator's")
        if len(request.stats.sum) != len(self.settings.data.columns):
            raise RoundError(errors.INVALID_REQUEST, f"stats have {len(request.stats.sum)} features, "
                                                     f"the federation uses {len(self.settings.data.columns)}")
        self.seen(worker_id)
        if request.role == "detect_only":  # takes the published models, gives nothing: the run's state is unchanged
            self.detect_only[worker_id] = request.sample_count
            return self.join_response()
        self.detect_only.pop(worker_id, None)
        joined = {**self.state.joined,
                  worker_id: {"sample_count": request.sample_count, "stats": request.stats.model_dump()}}
        state = replace(self.state, joined=joined)
        if state.scaler is None and len(joined) >= self.fed.min_workers:
            merged = FeatureStats.merge([FeatureStats(**j["stats"]) for j in joined.values()])
            state = replace(state, scaler=merged.scaler(self.settings.data.scaling).model_dump())
            self.round_opened_at = self.clock()
        self.state = self._commit(state, self.global_weights)
        return self.join_response()

    def submit(self, worker_id: str, round_no: int, body: bytes, sample_count: int, loss: float,
               sha256: str | None) -> dict:
        """Accept one worker's weights for ``round_no``; closes the round once enough have arrived."""
        self.seen(worker_id)
        if worker_id in self.detect_only and worker_id not in self.state.joined:
            raise RoundError(errors.NOT_JOINED, f"worker {worker_id} joined as detect_only: it takes no part in "
                                                "training; join with role train to send updates")
        if worker_id not in self.state.joined:
            raise RoundError(errors.NOT_JOINED,
                             f"worker {worker_id} has not joined this run ({self.state.run_id}); join first")
        if self.phase != "training":
            raise RoundError(errors.NO_OPEN_ROUND, f"no round is open: the federation is {self.phase}")
        if round_no != self.open_round:
            when = "already closed" if round_no < self.open_round else "not open yet"
            raise RoundError(errors.STALE_ROUND if round_no < self.open_round else errors.FUTURE_ROUND,
                             f"round {round_no} is {when}; the open round is {self.open_round}")
        if sample_count < 1:
            raise RoundError(errors.INVALID_REQUEST, "X-Sample-Count must be a positive integer")
        declared = self.state.joined[worker_id]["sample_count"]
        if sample_count > declared:
            raise RoundError(errors.TOO_MANY_SAMPLES, f"X-Sample-Count {sample_count} exceeds the {declared} "
                                                      f"samples {worker_id} declared when it joined")
        if not np.isfinite(loss):
            raise RoundError(errors.NON_FINITE, "X-Train-Loss must be a finite number")
        digest = content_hash(body)
        previous = self.pending.get(worker_id)
        if previous is not None:
            if previous.sha256 == digest:
                return {"accepted": True, "duplicate": True, "round": round_no}
            raise RoundError(errors.CONFLICTING_UPDATE,
                             f"worker {worker_id} already sent a different update for round {round_no}")
        try:
            weights = decode_weights(body, self.n_params, sha256, body_hash=digest)
        except CodecError as exc:
            raise RoundError(exc.error, str(exc)) from None
        update = Update(sample_count=sample_count, loss=float(loss), sha256=digest)
        try:
            self.store.save_update(round_no, worker_id, body, {"sample_count": sample_count, "loss": float(loss),
                                                               "sha256": digest})
        except OSError as exc:
            self._storage_failed(exc)
            raise RoundError(errors.STORAGE_UNAVAILABLE, f"cannot persist the update ({self.storage_error}): "
                                                         "not accepted, retry later") from None
        self._accept(worker_id, weights, update)
        reason = self._close_reason(deadline=False)  # an overdue round closes on the next tick
        if reason:
            self.close_round(reason)
        return {"accepted": True, "duplicate": False, "round": round_no}

    def report(self, worker_id: str, report: WorkerReport) -> str | None:
        """Keep a worker's report; if it asks for a round (drift, new data) and the federation is idle, open one,
        committed before this returns. Returns the trigger that opened a round, or None."""
        self.seen(worker_id)
        self.reports.record(worker_id, report, self.clock())
        return self._data_trigger()

    def trigger(self, trigger: str, reason: str = "") -> int:
        """Open the next round for ``trigger`` (continual.TRIGGERS): state.json names it before this returns."""
        if self.phase == "waiting":
            raise RoundError(errors.WAITING_FOR_WORKERS, f"the federation waits for {self.fed.min_workers} workers "
                                                         f"to join ({len(self.state.joined)} joined): round "
                                                         f"{self.open_round} opens on its own once they have")
        if self.phase == "training":
            raise RoundError(errors.ROUND_OPEN, f"round {self.open_round} is open "
                                                f"({self.trigger_of(self.open_round)}): wait for it to close")
        if self.phase == "done":
            raise RoundError(errors.CONTINUAL_OFF, "every round is done and federation.continual.enabled is false")
        round_no = self.open_round
        now = self.clock()
        opened = {"round": round_no, "trigger": trigger, "reason": reason, "at": now}
        self.state = self._commit_state(replace(self.state, rounds_target=round_no, round_trigger=opened))
        self.round_opened_at = now
        log.info("round %d opened (%s%s)", round_no, trigger, f": {reason}" if reason else "",
                 extra={"round": round_no})
        return round_no

    def tick(self) -> None:
        """Called about once a second: close an overdue round that has a quorum, or a full round whose close could
        not be persisted before (full disk) or was interrupted by a restart; while idle, ask the triggers."""
        if self.phase == "idle":
            if self._data_trigger() is None:  # a data trigger opens the round the schedule would
                self._schedule()
            return
        if self.phase != "training":
            return
        reason = self._close_reason(deadline=True)
        if reason:
            self.close_round(reason)

    def _close_reason(self, deadline: bool) -> str | None:
        n = len(self.pending)
        if self.trigger_of(self.open_round) == "campaign":
            if n >= self.fed.min_workers:
                return "min_workers"
        elif n >= self.fed.quorum and self.live_trainers() <= set(self.pending):
            return "all_live"
        if deadline and self.clock() >= self.deadline() and n >= self.fed.quorum:
            return "deadline"
        return None

    def _data_trigger(self) -> str | None:
        if self.phase != "idle":
            return None
        trigger = continual.data_trigger(self.continual, self.reports.since(self.fresh_since), self.trainers())
        if trigger is None:
            return None
        try:
            self.trigger(trigger, _why(trigger, self.reports.since(self.fresh_since)))
        except RoundError:  # the disk refused: the next report or tick asks again
            return None
        return trigger

    def _schedule(self) -> None:
        due = self.next_scheduled_at()
        if due is None or self.clock() < due:
            return
        fresh = self.reports.since(self.fresh_since)
        with contextlib.suppress(RoundError):  # the disk refused: the next tick tries again
            if not self.continual.skip_without_new_data or continual.has_new_rows(fresh, self.trainers()):
                self.trigger("schedule")
                return
            skip = {"round": self.open_round, "at": self.clock(), "reason": "no worker reported new rows"}
            skipped = [*self.state.skipped, skip][-continual.SKIPPED_KEPT:]
            self.state = self._commit_state(replace(self.state, skipped=skipped))
            log.info("scheduled round %d skipped: no worker reported new rows", self.open_round)

    def _accept(self, worker_id: str, weights: np.ndarray, update: Update) -> None:
        norm = update_norm(weights, self.global_weights)  # as sent: the strategy's wrappers may clip it
        clip = self.strategy.clip_norm
        update = Update(update.sample_count, update.loss, update.sha256, round(norm, 6),
                        clip is not None and norm > clip)
        self.strategy.add(weights, update.sample_count)
        self.pending[worker_id] = update

    def _commit(self, state: RunState, weights: np.ndarray) -> RunState:
        try:
            committed = RunState.from_json(self.store.commit(state.to_json(), weights))
        except OSError as exc:
            self._storage_failed(exc)
            raise RoundError(errors.STORAGE_UNAVAILABLE,
                             f"cannot persist the aggregator state ({self.storage_error}); retry later") from None
        if self.storage_error:
            log.info("state disk writable again: %s", self.store.dir)
        self.storage_error = None
        return committed

    def _commit_state(self, state: RunState) -> RunState:
        try:
            committed = RunState.from_json(self.store.commit_state(state.to_json()))
        except OSError as exc:
            self._storage_failed(exc)
            raise RoundError(errors.STORAGE_UNAVAILABLE,
                             f"cannot persist the aggregator state ({self.storage_error}); retry later") from None
        self.storage_error = None
        return committed

    def _storage_failed(self, exc: OSError) -> None:
        message = f"{exc.strerror or exc} in {self.store.dir}"
        if message != self.storage_error:
            log.error("cannot write the state dir: %s; nothing changed, will retry", message)
        self.storage_error = message

    def close_round(self, reason: str) -> None:
        """Aggregate, persist, then publish: a crash before the commit leaves the round open with its updates."""
        kept = self.strategy.state_dict()  # the privacy budget before this release, back if the commit fails
        new_weights = self.strategy.result()
        total = sum(u.sample_count for u in self.pending.values())
        faults.point("aggregator.aggregate")
        closed_at = self.clock()
        record = {
            "round": self.open_round,
            "trigger": self.trigger_of(self.open_round),
            "closed_by": reason,
            "duration_s": round(closed_at - self.round_opened_at, 3),
            "closed_at": closed_at,
            "workers": {w: {"sample_count": u.sample_count, "loss": u.loss, "sha256": u.sha256,
                            "update_norm": u.update_norm, "clipped": u.clipped}
                        for w, u in sorted(self.pending.items())},
            "mean_loss": sum(u.loss * u.sample_count for u in self.pending.values()) / total,
        }
        state = replace(self.state, rounds_done=self.open_round, history=[*self.state.history, record])
        spent = self.strategy.state_dict()
        if spent is not None:
            state = replace(state, privacy=spent)
        try:
            self.state = self._commit(state, new_weights)
        except RoundError:
            self.strategy.load_state_dict(kept)  # nothing was released
            return
        try:
            self.store.drop_pending(self.rounds_done)
        except OSError as exc:  # leftovers of a closed round are never read again; the next close retries
            log.warning("cannot remove pending updates of round %d: %s", self.rounds_done, exc)
        self.global_weights = new_weights
        self.pending = {}
        self.round_opened_at = closed_at
        self.fresh_since = closed_at
        self.strategy.begin(self.global_weights)
        for listener in self.round_listeners:
            try:
                listener(record)
            except Exception:  # the round is published; an observer's failure must not undo or block that
                log.exception("round listener %r failed", listener)


def _why(trigger: str, fresh: dict[str, WorkerReport]) -> str:
    """Which workers asked for a data-triggered round, for the log and the round's trigger record."""
    if trigger == "drift":
        return "drift at " + ", ".join(sorted(w for w, r in fresh.items() if r.drift))
    return "new rows at " + ", ".join(f"{w} ({r.new_rows})" for w, r in sorted(fresh.items()) if r.new_rows)
