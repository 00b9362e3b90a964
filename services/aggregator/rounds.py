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

A fleet (README: Fleets):
- ``federation.clients_per_round``: round r is trained by a seeded sample of the live training nodes (membership.py),
  drawn when the round opens and committed with it; the round closes once every sampled node still live has sent.
  Other nodes' updates are refused (409 ``not_sampled``); they keep serving and install each new model.
- ``federation.mode: async``: a round is a model version being built from a buffer (buffered.py): updates based on
  any of the last ``max_staleness`` versions are folded in as they arrive, weighted by their staleness, and a version
  is published every ``buffer_size`` updates, or at the deadline with a quorum. Nobody waits for a straggler.
- ``aggregator.role: site`` (site.py drives it): the rounds are the upstream's. A site opens round r for its nodes
  when its upstream has, closes it as a continual round, and puts the aggregate in its outbox for the upstream
  instead of publishing it; the model its nodes get is the upstream's, adopted once published there.

Crash safety: a trigger is committed to state.json (round target and what opened it) before anyone hears of it, so
kill -9 leaves the federation idle or with the round open, and a round open before a restart is open after it. An
update, a join and a report are acknowledged only once durable (group commit, journal.py); nothing that grows with
the fleet is rewritten per request.

Late joiners (joining while idle or training, after the scaler is frozen) receive the frozen scaler; their
statistics are checked but never merged into it: changing the scaler would change the meaning of every weight
already learnt (with data.baseline run or node the scaling is per run or node anyway).

Detect-only workers (``JoinRequest.role``) only pull the published models: they are listed in the status, never
counted for ``min_workers`` or ``quorum``, never merged into the scaler, and their updates are refused.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, replace

import numpy as np

from services import faults
from services.aggregator import continual, strategies
from services.aggregator.buffered import RecentModels, rebase, staleness_weight
from services.aggregator.journal import durable
from services.aggregator.membership import Members, draw_sample, fairness
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
HISTORY_KEPT = 500  # closed rounds state.json keeps; older records go to history.jsonl
HISTORY_WORKERS_MAX = 100  # contributors listed in a round's history record; beyond, in rounds/<round>.json
STATUS_WORKERS_MAX = 200  # workers listed in /v1/status (config.yaml's first); all of them: GET /v1/nodes
FLEET_ACTIONS = ("serve", "pin", "unpin")


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
    staleness: int = 0  # async: versions between the model it trained on and the one it was folded into
    weight: float = 1.0  # async: the staleness weight its change counted with


class Federation:
    """One federated run: ``store`` persists it, ``strategy`` (services/aggregator/strategies.py, with its clipping
    and DP wrappers; by default as config.yaml says) aggregates each round."""

    def __init__(self, settings: Settings, store: AggregatorStore, clock=time.time, strategy: Strategy | None = None):
        self.settings = settings
        self.fed = settings.federation
        self.store = store
        self.clock = clock
        self.role = settings.aggregator.role
        self.mode = self.fed.mode
        self.architecture = Architecture.from_settings(settings)
        self.spec_hash = self.architecture.spec_hash
        self.n_params = self.architecture.n_params
        self.strategy = strategy if strategy is not None else strategies.from_settings(settings)
        self.storage_error: str | None = None
        self.pending: dict[str, Update] = {}
        self.last_seen: dict[str, float] = {}
        self.round_listeners: list = []  # called with each closed round's record once it is published (metrics)
        self.outbox_listeners: list = []  # a site: called when a round's aggregate is ready for the upstream
        self.continual = settings.federation.continual
        self.members = Members(store.dir)
        self.reports = continual.Reports(store.dir, self.continual.min_new_rows)
        self.counts: collections.Counter[str] = collections.Counter()  # events since start, for /metrics
        self.publish_times: collections.deque[float] = collections.deque(maxlen=200)  # s from full round to published
        self.recent = RecentModels(self.fed.max_staleness)  # async: the models updates may be based on
        self.outbox: dict | None = None  # a site: its aggregate of the open round, until the upstream took it
        self.started_at = clock()  # until LIVE_S after a restart, every joined worker counts as live
        self._waiting_for: set[str] = set()  # who the open round still waits for (all_live, all_sampled)
        self._inflight: dict[str, tuple[str, asyncio.Future | None]] = {}  # updates being made durable
        self._unsynced: list[asyncio.Future] = []  # writes the current request waits for (synced())
        loaded = store.load(self.n_params)
        if loaded is None:
            initial = self.architecture.initial_weights(settings.model.seed)
            self.state = RunState.from_json(store.commit(RunState(run_id=uuid.uuid4().hex[:12]).to_json(), initial))
            self.global_weights = initial
        else:
            self.state, self.global_weights = RunState.from_json(loaded[0]), loaded[1]
        self._move_joined_to_members()
        self.strategy.load_state_dict(self.state.privacy)
        self.round_opened_at = self.clock()
        self.strategy.begin(self.global_weights)
        if self.mode == "async":
            for round_no, weights in sorted(store.bases(self.n_params).items()):
                self.recent.add(round_no, weights)
            self.recent.add(self.rounds_done, self.global_weights)
        for worker_id, weights, meta in store.pending_updates(self.open_round, self.n_params):
            sent_for = int(meta.get("round", self.open_round))
            self._accept(worker_id, weights, Update(meta["sample_count"], meta["loss"], meta["sha256"],
                                                    staleness=self.open_round - sent_for), sent_for)
        if self.role == "site":
            kept = store.outbox(self.n_params)
            if kept is not None and kept[0]["round"] == self.open_round:
                self.outbox = kept[0]
            elif kept is not None:
                store.drop_outbox()
        self._waiting_for = self._expected() - set(self.pending)

    # -- read side ------------------------------------------------------------------------------------------------
    @property
    def rounds_done(self) -> int:
        return self.state.rounds_done

    @property
    def open_round(self) -> int:
        return self.rounds_done + 1

    @property
    def rounds_target(self) -> int:
        """Rounds to have done: the first campaign's, or one more than done once a trigger opened a round (a site:
        the round its upstream has open)."""
        if self.role == "site":
            return self.state.rounds_target
        return max(self.state.rounds_target, self.fed.rounds)

    @property
    def rounds_total(self) -> int:
        """The first campaign's rounds, as workers are told (a site: its upstream's)."""
        if self.role == "site":
            return int((self.state.upstream or {}).get("rounds_total", self.fed.rounds))
        return self.fed.rounds

    @property
    def phase(self) -> str:
        if self.rounds_done < self.rounds_target:
            return "training" if self.state.scaler is not None else "waiting"
        if self.role == "site":
            return "idle" if self.state.scaler is not None else "waiting"
        return "idle" if self.continual.enabled else "done"

    @property
    def sampling(self) -> bool:
        return self.fed.clients_per_round is not None

    @property
    def sample(self) -> frozenset[str] | None:
        """The open round's sample, or None when every live node trains."""
        drawn = self.state.sample
        if drawn is None or drawn.get("round") != self.open_round:
            return None
        cached = getattr(self, "_sample_cache", None)
        if cached is None or cached[0] is not drawn:
            cached = (drawn, frozenset(drawn["nodes"]))
            self._sample_cache = cached
        return cached[1]

    def sampled(self, worker_id: str) -> bool | None:
        """Whether the worker trains the open round: None without sampling."""
        if not self.sampling:
            return None
        sample = self.sample
        return sample is not None and worker_id in sample

    def trigger_of(self, round_no: int) -> str:
        """What opened ``round_no``: a continual trigger, or "campaign" for the first rounds."""
        if self.role == "site":
            return "upstream"
        opened = self.state.round_trigger or {}
        return opened.get("trigger", "campaign") if opened.get("round") == round_no else "campaign"

    def trainers(self) -> set[str]:
        return self.members.trainers

    def is_live(self, worker_id: str, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        return now - self.last_seen.get(worker_id, self.started_at) <= continual.LIVE_S

    def live_trainers(self) -> set[str]:
        """Training workers seen within LIVE_S (all joined ones, for LIVE_S after a restart)."""
        now = self.clock()
        return {w for w in self.trainers() if self.is_live(w, now)}

    def detect_only(self, worker_id: str) -> bool:
        member = self.members.get(worker_id)
        return member is not None and member.get("role") == "detect_only"

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
                            rounds_done=self.rounds_done, rounds_total=self.rounds_total, plan=self.plan(),
                            scaler=self.scaler, mode=self.mode, sampling=self.sampling)

    def round_state(self, worker_id: str | None = None) -> RoundState:
        training = self.phase == "training"
        continual_on = self.continual.enabled if self.role == "root" else bool(
            (self.state.upstream or {}).get("continual", True))
        return RoundState(phase=self.phase, open_round=self.open_round if training else None,
                          rounds_done=self.rounds_done, rounds_total=self.rounds_total, continual=continual_on,
                          sampled=self.sampled(worker_id) if worker_id is not None and training else None,
                          mode=self.mode, directive=self.state.directive)

    def something_to_do(self, worker_id: str, after: int, directive_seen: int | None = None) -> bool:
        """A model newer than ``after`` is published, a round is open that this training worker is asked to train
        and has not sent its update for, or a fleet directive newer than ``directive_seen``: what a long-polling
        worker waits for."""
        if self.rounds_done > after:
            return True
        if directive_seen is not None and int((self.state.directive or {}).get("seq", 0)) > directive_seen:
            return True
        if self.phase != "training" or self.detect_only(worker_id) or worker_id in self.pending:
            return False
        if self.outbox is not None:  # a site whose round went upstream: its nodes wait for the model
            return False
        return self.sampled(worker_id) is not False

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
            return {"new_rows": None, "drift": None, "drift_events": None, "reported_at": None, "model": None,
                    "directive": None}
        r = received.report
        refused = next((v for v in reversed(r.versions) if v.status == "refused"), None)
        return {"new_rows": r.new_rows, "drift": r.drift, "drift_events": r.drift_events, "reported_at": received.at,
                "model": {"served_round": r.served_round, "pinned": r.pinned,
                          "versions": [v.model_dump() for v in r.versions],
                          "last_refused": {"round": refused.round, "reason": refused.reason} if refused else None},
                "directive": r.directive.model_dump() if r.directive else None}

    def worker_status(self, worker_id: str) -> dict:
        member = self.members.get(worker_id) or {}
        detect_only = member.get("role") == "detect_only"
        last_round = member.get("last_round")
        return {
            "role": "detect_only" if detect_only else "train",
            "joined": bool(member),
            "sample_count": member.get("sample_count"),
            "last_seen": self.last_seen.get(worker_id),
            "last_loss": member.get("last_loss"),
            "last_round_trained": last_round,
            "rounds_since_trained": self.rounds_done - last_round if last_round is not None else None,
            "sampled": self.sampled(worker_id) if self.phase == "training" else None,
            "update_in_open_round": worker_id in self.pending,
            **self.worker_report_status(worker_id),
        }

    def status(self) -> dict:
        configured = [w.id for w in self.settings.workers]
        listed = list(dict.fromkeys([*configured, *sorted(self.members.journal.entries)]))[:STATUS_WORKERS_MAX]
        workers = {w: self.worker_status(w) for w in listed
                   if w in self.members or w in self.last_seen or w in self.reports}
        sample = self.sample
        return {
            "run_id": self.state.run_id,
            "role": self.role,
            "mode": self.mode,
            "phase": self.phase,
            "round": self.open_round if self.phase == "training" else self.rounds_done,
            "rounds_done": self.rounds_done,
            "rounds_total": self.rounds_total,
            "min_workers": self.fed.min_workers,
            "quorum": self.fed.quorum,
            "updates_in_open_round": sorted(self.pending)[:STATUS_WORKERS_MAX],
            "updates_in_open_round_count": len(self.pending),
            "deadline_in_s": round(self.deadline() - self.clock(), 1) if self.phase == "training" else None,
            "strategy": self.fed.strategy,
            "update_clip_norm": self.strategy.clip_norm,
            "privacy": self.privacy_status(),
            "storage_error": self.storage_error,
            "model": {"spec_hash": self.spec_hash, "parameters": self.n_params,
                      "sha256": self.state.global_sha256},
            "workers": workers,
            "workers_total": len(self.members),
            "fleet": {"joined": len(self.members), "trainers": len(self.trainers()),
                      "clients_per_round": self.fed.clients_per_round,
                      "sampled_in_open_round": len(sample) if sample is not None else None,
                      "buffer_size": self.fed.buffer_size if self.mode == "async" else None,
                      "max_staleness": self.fed.max_staleness if self.mode == "async" else None,
                      "directive": self.directive_status()},
            "continual": self.continual_status(),
            "history": self.state.history,
        }

    def fleet_status(self) -> dict:
        """The fleet at a glance: membership, liveness, sampling fairness, the model directive and its followers."""
        now = self.clock()
        return {"role": self.role, "mode": self.mode, "rounds_done": self.rounds_done, "phase": self.phase,
                "joined": len(self.members), "trainers": len(self.trainers()),
                "live_trainers": sum(1 for w in self.trainers() if self.is_live(w, now)),
                "clients_per_round": self.fed.clients_per_round,
                "sample": {"round": self.open_round, "size": len(self.sample)} if self.sample is not None else None,
                "fairness": fairness(self.members, self.rounds_done, self.sampling),
                "directive": self.directive_status(), "counts": dict(self.counts),
                "publish_s": _summary(self.publish_times),
                "upstream": self.state.upstream if self.role == "site" else None,
                "outbox": {k: v for k, v in self.outbox.items() if k != "record"} if self.outbox else None}

    def directive_status(self) -> dict | None:
        """The newest fleet directive and how many workers reported it applied or refused."""
        directive = self.state.directive
        if directive is None:
            return None
        followed: collections.Counter[str] = collections.Counter()
        for _, entry in self.reports.journal.items():
            result = entry["report"].get("directive")
            if result and result.get("seq") == directive["seq"]:
                followed[result["status"]] += 1
        return {**directive, "applied": followed["applied"], "refused": followed["refused"],
                "workers": len(self.members)}

    def round_record(self, round_no: int) -> dict | None:
        """A closed round's record with all its contributors."""
        found = next((h for h in self.state.history if h["round"] == round_no), None)
        if found is not None and not found.get("detail"):
            return found
        return self.store.round_record(round_no)

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

    async def synced(self, *others: asyncio.Future | None) -> None:
        """Wait until the writes of the request being handled are durable (the route calls this right after the
        write-side method, with no await in between, so the writes are its own), and ``others`` (writes of the
        enrolled-node registry, say); 503 if the disk refused."""
        writes, self._unsynced = [*self._unsynced, *(w for w in others if w is not None)], []
        try:
            await durable(*writes)
        except OSError as exc:
            self._storage_failed(exc)
            raise RoundError(errors.STORAGE_UNAVAILABLE, f"cannot persist ({self.storage_error}): nothing was "
                                                         "taken, retry later") from None
        if writes and self.storage_error:
            log.info("state disk writable again: %s", self.store.dir)
            self.storage_error = None

    def _written(self, *writes: asyncio.Future | None) -> None:
        self._unsynced.extend(w for w in writes if w is not None)

    def join(self, worker_id: str, request: JoinRequest) -> JoinResponse:
        if request.spec_hash != self.spec_hash:
            raise RoundError(errors.SPEC_MISMATCH,
                             f"model spec {request.spec_hash} differs from the federation's {self.spec_hash}: "
                             "the worker's config (features, window, model.kind and sizes) must match the aggregator's")
        if len(request.stats.sum) != len(self.settings.data.columns):
            raise RoundError(errors.INVALID_REQUEST, f"stats have {len(request.stats.sum)} features, "
                                                     f"the federation uses {len(self.settings.data.columns)}")
        self.seen(worker_id)
        previous = self.members.get(worker_id) or {}
        entry = {"role": request.role, "sample_count": request.sample_count, "joined_at": self.clock(),
                 **{k: previous[k] for k in ("last_round", "last_loss") if k in previous}}
        if request.role == "train" and self.state.scaler is None:
            entry["stats"] = request.stats.model_dump()  # merged once min_workers have joined
        self._written(self._member_put(worker_id, entry))
        if self.role == "root" and self.state.scaler is None and len(self.trainers()) >= self.fed.min_workers:
            self._freeze_scaler()
        return self.join_response()

    def _member_put(self, worker_id: str, entry: dict) -> asyncio.Future | None:
        try:
            return self.members.put(worker_id, entry)
        except OSError as exc:
            self._storage_failed(exc)
            raise RoundError(errors.STORAGE_UNAVAILABLE, f"cannot persist the join ({self.storage_error}); "
                                                         "retry later") from None

    def _freeze_scaler(self) -> None:
        """min_workers have joined: merge their statistics into the federated scaler and open round 1 (state.json
        names both before anyone hears of it)."""
        stats = [FeatureStats(**entry["stats"]) for _, entry in self.members.items() if "stats" in entry]
        merged = FeatureStats.merge(stats).scaler(self.settings.data.scaling).model_dump()
        self.state = self._commit_state(self._with_sample(replace(self.state, scaler=merged), self.open_round))
        self.members.drop_statistics()
        self._round_opened()

    def forget(self, worker_id: str) -> None:
        """A revoked node leaves the run: it is no member, trains no round, and holds none up."""
        self._written(self.members.remove(worker_id))
        self._waiting_for.discard(worker_id)
        self.last_seen.pop(worker_id, None)

    def submit(self, worker_id: str, round_no: int, body: bytes, sample_count: int, loss: float,
               sha256: str | None) -> dict:
        """Accept one worker's weights for ``round_no``, durable before this returns; closes the round once enough
        have arrived. (Routes call ``submit_async``: the same, with the write group-committed.)"""
        checked = self._check_update(worker_id, round_no, body, sample_count, loss, sha256)
        if isinstance(checked, dict):
            return checked
        weights, update = checked
        try:
            self.store.save_update(self.open_round, worker_id, body, self._update_meta(update, round_no))
        except OSError as exc:
            raise self._update_not_saved(exc) from None
        return self._take(worker_id, round_no, weights, update)

    async def submit_async(self, worker_id: str, round_no: int, body: bytes, sample_count: int, loss: float,
                           sha256: str | None) -> dict:
        """``submit`` for the routes: the update's append to the round's log shares one fdatasync with the updates
        that arrive meanwhile; the answer waits for it."""
        while True:
            checked = self._check_update(worker_id, round_no, body, sample_count, loss, sha256)
            if isinstance(checked, dict):
                await self.synced()
                return checked
            weights, update = checked
            writing_round = self.open_round
            try:
                write = self.store.save_update(writing_round, worker_id, body, self._update_meta(update, round_no))
            except OSError as exc:
                raise self._update_not_saved(exc) from None
            self._inflight[worker_id] = (update.sha256, write)
            try:
                await durable(write)
            except OSError as exc:
                raise self._update_not_saved(exc) from None
            finally:
                self._inflight.pop(worker_id, None)
            if self.open_round == writing_round and self.phase == "training" and self.outbox is None:
                return self._take(worker_id, round_no, weights, update)
            if self.mode != "async":  # the round closed while the update was being written: it came too late
                raise RoundError(errors.STALE_ROUND, f"round {round_no} closed while this update was being "
                                                     "stored: pull the newer model")
            # async: a version was published meanwhile; the update may still count for the next one

    def _update_meta(self, update: Update, round_no: int) -> dict:
        meta = {"sample_count": update.sample_count, "loss": update.loss, "sha256": update.sha256}
        if round_no != self.open_round:
            meta["round"] = round_no
        return meta

    def _update_not_saved(self, exc: OSError) -> RoundError:
        self._storage_failed(exc)
        return RoundError(errors.STORAGE_UNAVAILABLE, f"cannot persist the update ({self.storage_error}): not "
                                                      "accepted, retry later")

    def _check_update(self, worker_id: str, round_no: int, body: bytes, sample_count: int, loss: float,
                      sha256: str | None) -> tuple[np.ndarray, Update] | dict:
        """The decoded update, or the answer to a duplicate; raises RoundError for every refusal."""
        self.seen(worker_id)
        member = self.members.get(worker_id)
        if member is not None and member.get("role") == "detect_only":
            raise RoundError(errors.NOT_JOINED, f"worker {worker_id} joined as detect_only: it takes no part in "
                                                "training; join with role train to send updates")
        if member is None:
            raise RoundError(errors.NOT_JOINED,
                             f"worker {worker_id} has not joined this run ({self.state.run_id}); join first")
        if self.phase != "training":
            raise RoundError(errors.NO_OPEN_ROUND, f"no round is open: the federation is {self.phase}")
        staleness = self.open_round - round_no
        if staleness < 0:
            raise RoundError(errors.FUTURE_ROUND, f"round {round_no} is not open yet; the open round is "
                                                  f"{self.open_round}")
        if staleness > 0 and self.mode != "async":
            raise RoundError(errors.STALE_ROUND, f"round {round_no} is already closed; the open round is "
                                                 f"{self.open_round}")
        if staleness > 0 and (staleness > self.fed.max_staleness or self.recent.get(round_no - 1) is None):
            self.counts["stale_refused"] += 1
            raise RoundError(errors.TOO_STALE, f"this update was trained on model {round_no - 1}, {staleness} "
                                               f"versions behind the current {self.rounds_done} (at most "
                                               f"{self.fed.max_staleness}): pull the current model and train again")
        if self.outbox is not None:
            raise RoundError(errors.STALE_ROUND, f"round {round_no} has been sent upstream: wait for its model")
        if self.mode == "sync" and self.sampled(worker_id) is False:
            raise RoundError(errors.NOT_SAMPLED, f"worker {worker_id} is not in round {round_no}'s sample of "
                                                 f"{len(self.sample or ())} nodes: keep serving, train when sampled")
        if sample_count < 1:
            raise RoundError(errors.INVALID_REQUEST, "X-Sample-Count must be a positive integer")
        declared = member["sample_count"]
        if sample_count > declared:
            raise RoundError(errors.TOO_MANY_SAMPLES, f"X-Sample-Count {sample_count} exceeds the {declared} "
                                                      f"samples {worker_id} declared when it joined")
        if not np.isfinite(loss):
            raise RoundError(errors.NON_FINITE, "X-Train-Loss must be a finite number")
        digest = content_hash(body)
        previous = self.pending.get(worker_id)
        inflight = self._inflight.get(worker_id)
        earlier = previous.sha256 if previous is not None else inflight[0] if inflight is not None else None
        if earlier is not None:
            if earlier == digest:
                if previous is None and inflight is not None:
                    self._written(inflight[1])  # answered once the first copy is durable
                return {"accepted": True, "duplicate": True, "round": round_no}
            raise RoundError(errors.CONFLICTING_UPDATE,
                             f"worker {worker_id} already sent a different update for round {self.open_round}")
        try:
            weights = decode_weights(body, self.n_params, sha256, body_hash=digest)
        except CodecError as exc:
            raise RoundError(exc.error, str(exc)) from None
        return weights, Update(sample_count=sample_count, loss=float(loss), sha256=digest, staleness=staleness)

    def _take(self, worker_id: str, round_no: int, weights: np.ndarray, update: Update) -> dict:
        """The durable update joins the round (or the buffer); the round closes if that completes it."""
        self._accept(worker_id, weights, update, round_no)
        self._waiting_for.discard(worker_id)
        reason = self._close_reason(deadline=False)  # an overdue round closes on the next tick
        if reason:
            self.close_round(reason)
        answer = {"accepted": True, "duplicate": False, "round": round_no}
        if self.mode == "async":
            answer["staleness"] = update.staleness
        return answer

    def report(self, worker_id: str, report: WorkerReport) -> str | None:
        """Keep a worker's report (durable once ``synced``); if it asks for a round (drift, new data) and the
        federation is idle, open one, committed before this returns. Returns the trigger that opened a round."""
        self.seen(worker_id)
        try:
            self._written(self.reports.record(worker_id, report, self.clock()))
        except OSError as exc:
            self._storage_failed(exc)
            raise RoundError(errors.STORAGE_UNAVAILABLE, f"cannot persist the report ({self.storage_error}); "
                                                         "retry later") from None
        return self._data_trigger()

    def trigger(self, trigger: str, reason: str = "") -> int:
        """Open the next round for ``trigger`` (continual.TRIGGERS): state.json names it before this returns."""
        if self.role == "site":
            raise RoundError(errors.ROUND_OPEN, "a site aggregator follows its upstream's rounds: start the round "
                                                "at the root aggregator")
        if self.phase == "waiting":
            raise RoundError(errors.WAITING_FOR_WORKERS, f"the federation waits for {self.fed.min_workers} workers "
                                                         f"to join ({len(self.trainers())} joined): round "
                                                         f"{self.open_round} opens on its own once they have")
        if self.phase == "training":
            raise RoundError(errors.ROUND_OPEN, f"round {self.open_round} is open "
                                                f"({self.trigger_of(self.open_round)}): wait for it to close")
        if self.phase == "done":
            raise RoundError(errors.CONTINUAL_OFF, "every round is done and federation.continual.enabled is false")
        round_no = self.open_round
        opened = {"round": round_no, "trigger": trigger, "reason": reason, "at": self.clock()}
        state = replace(self.state, rounds_target=round_no, round_trigger=opened)
        self.state = self._commit_state(self._with_sample(state, round_no))
        self._round_opened()
        self.counts[f"triggered:{trigger}"] += 1
        log.info("round %d opened (%s%s)", round_no, trigger, f": {reason}" if reason else "",
                 extra={"round": round_no})
        return round_no

    def direct(self, action: str, version: str | None, reason: str = "") -> dict:
        """A fleet-wide model directive (serve a version, pin one, unpin): in state.json before it is answered;
        every worker follows it once and reports the outcome."""
        if self.role == "site":
            raise RoundError(errors.ROUND_OPEN, "a site aggregator relays its upstream's directives: give it at the "
                                                "root aggregator")
        seq = int((self.state.directive or {}).get("seq", 0)) + 1
        directive = {"seq": seq, "action": action, "version": version, "reason": reason, "at": self.clock()}
        self.state = self._commit_state(replace(self.state, directive=directive))
        log.info("fleet directive %d: %s %s%s", seq, action, version or "", f" ({reason})" if reason else "")
        return directive

    def tick(self) -> None:
        """Called about once a second: close an overdue round that has a quorum, or a full round whose close could
        not be persisted before (full disk) or was interrupted by a restart; while idle, ask the triggers."""
        if self.phase == "idle":
            if self.role == "root" and self._data_trigger() is None:  # a data trigger opens the round the
                self._schedule()  # schedule would
            return
        if self.phase != "training":
            return
        self._waiting_for = self._expected() - set(self.pending)
        reason = self._close_reason(deadline=True)
        if reason:
            self.close_round(reason)

    def _expected(self) -> set[str]:
        """Who the open round waits for: its sample's live nodes, or (a continual or site round) the live
        trainers; empty when a count decides (a campaign round's min_workers, an async buffer)."""
        if self.phase != "training" or self.mode == "async":
            return set()
        sample = self.sample
        now = self.clock()
        if sample is not None:
            return {w for w in sample if self.is_live(w, now)}
        if self.role == "site" or self.trigger_of(self.open_round) != "campaign":
            return self.live_trainers()
        return set()

    def _close_reason(self, deadline: bool) -> str | None:
        n = len(self.pending)
        if n == 0 or self.outbox is not None:
            return None
        quorum = self.fed.quorum
        sample = self.sample
        if self.mode == "async":
            if n >= self.fed.buffer_size:
                return "buffer_full"
        elif sample is not None:
            quorum = min(quorum, len(sample))
            if not self._waiting_for and n >= quorum:
                return "all_sampled"
        elif self.role == "site" or self.trigger_of(self.open_round) != "campaign":
            if not self._waiting_for and n >= quorum:
                return "all_live"
        elif n >= self.fed.min_workers:
            return "min_workers"
        if deadline and self.clock() >= self.deadline() and n >= quorum:
            return "deadline"
        return None

    def _data_trigger(self) -> str | None:
        if self.phase != "idle" or self.role != "root":
            return None
        trigger = continual.data_trigger(self.continual, self.reports, self.trainers())
        if trigger is None:
            return None
        try:
            self.trigger(trigger, _why(trigger, self.reports))
        except RoundError:  # the disk refused: the next report or tick asks again
            return None
        return trigger

    def _schedule(self) -> None:
        due = self.next_scheduled_at()
        if due is None or self.clock() < due:
            return
        with contextlib.suppress(RoundError):  # the disk refused: the next tick tries again
            if not self.continual.skip_without_new_data or continual.has_new_rows(self.reports, self.trainers()):
                self.trigger("schedule")
                return
            skip = {"round": self.open_round, "at": self.clock(), "reason": "no worker reported new rows"}
            skipped = [*self.state.skipped, skip][-continual.SKIPPED_KEPT:]
            self.state = self._commit_state(replace(self.state, skipped=skipped))
            self.counts["skipped"] += 1
            log.info("scheduled round %d skipped: no worker reported new rows", self.open_round)

    def _with_sample(self, state: RunState, round_no: int) -> RunState:
        """``state`` with round ``round_no``'s sample drawn from the live trainers (unchanged without sampling)."""
        size = self.fed.sample_size(len(self.trainers()))
        if size is None:
            return state
        live = self.live_trainers()
        nodes = draw_sample(live, min(size, len(live)), self.fed.sample_seed, round_no)
        return replace(state, sample={"round": round_no, "nodes": nodes, "live": len(live)})

    def _round_opened(self) -> None:
        """A round is open (committed): its deadline runs from now; count its sample."""
        self.round_opened_at = self.clock()
        self._waiting_for = self._expected() - set(self.pending)
        if self.sample is not None:
            self.counts["rounds_sampled"] += 1
            self.counts["nodes_sampled"] += len(self.sample)
            log.info("round %d opened for a sample of %d of %d live nodes", self.open_round, len(self.sample),
                     (self.state.sample or {}).get("live", len(self.sample)), extra={"round": self.open_round})

    def _accept(self, worker_id: str, weights: np.ndarray, update: Update, sent_for: int) -> None:
        """Fold a durable update into the round: rebased onto the current model with its staleness weight when it
        was trained on an older one (async; buffered.py), then into the strategy."""
        factor, base = 1.0, self.global_weights
        if update.staleness > 0:
            older = self.recent.get(sent_for - 1)
            if older is None:  # checked on the way in; a restart without the base file refuses it there
                raise RoundError(errors.TOO_STALE, f"model {sent_for - 1} is no longer kept")
            base = older
            factor = staleness_weight(update.staleness, self.fed.staleness_exponent)
        rebased = rebase(weights, base, self.global_weights, factor)
        norm = update_norm(rebased, self.global_weights)  # as weighted: the strategy's wrappers may clip it
        clip = self.strategy.clip_norm
        self.strategy.add(rebased, update.sample_count)
        self.pending[worker_id] = replace(update, update_norm=round(norm, 6), clipped=clip is not None and norm > clip,
                                          weight=round(factor, 6))

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

    def _move_joined_to_members(self) -> None:
        """A state.json of an earlier version listed the joined workers itself: move them to members.log once."""
        if not self.state.joined:
            return
        for worker_id, joined in self.state.joined.items():
            if worker_id not in self.members:
                entry = {"role": "train", "sample_count": joined["sample_count"]}
                if self.state.scaler is None:
                    entry["stats"] = joined["stats"]
                self.members.put(worker_id, entry)
        for h in self.state.history:
            for worker_id, update in h["workers"].items():
                member = self.members.get(worker_id)
                if member is not None:
                    self.members.put(worker_id, {**member, "last_round": h["round"], "last_loss": update["loss"]})
        self.state = self._commit_state(replace(self.state, joined={}))

    # -- closing a round ------------------------------------------------------------------------------------------
    def close_round(self, reason: str) -> None:
        """Aggregate, persist, then publish: a crash before the commit leaves the round open with its updates."""
        started = time.perf_counter()
        try:
            self.store.flush_updates()  # every update about to be aggregated is on disk first
        except OSError as exc:
            self._storage_failed(exc)
            return
        kept = self.strategy.state_dict()  # the privacy budget before this release, back if the commit fails
        new_weights = self.strategy.result()
        total = sum(u.sample_count for u in self.pending.values())
        faults.point("aggregator.aggregate")
        closed_at = self.clock()
        contributors = {w: {"sample_count": u.sample_count, "loss": u.loss, "sha256": u.sha256,
                            "update_norm": u.update_norm, "clipped": u.clipped,
                            **({"staleness": u.staleness, "weight": u.weight} if self.mode == "async" else {})}
                        for w, u in sorted(self.pending.items())}
        record = {
            "round": self.open_round,
            "trigger": self.trigger_of(self.open_round),
            "closed_by": reason,
            "duration_s": round(closed_at - self.round_opened_at, 3),
            "closed_at": closed_at,
            "workers": contributors,
            "contributors": len(contributors),
            "sample_count": total,
            "mean_loss": sum(u.loss * u.sample_count for u in self.pending.values()) / total,
        }
        if self.sample is not None:
            record["sampled"] = len(self.sample)
        if self.mode == "async":
            stale = [u.staleness for u in self.pending.values()]
            record["staleness"] = {"mean": round(sum(stale) / len(stale), 3), "max": max(stale)}
        if self.role == "site":
            self._send_upstream(record, new_weights, kept)
            return
        record, detail = self._history_record(record)
        history, archived = self._kept_history(record)
        state = replace(self.state, rounds_done=self.open_round, history=history)
        if self.rounds_done + 1 < self.rounds_target:  # the next round opens at once: its sample goes with it
            state = self._with_sample(state, self.open_round + 1)
        spent = self.strategy.state_dict()
        if spent is not None:
            state = replace(state, privacy=spent)
        try:
            if detail is not None:
                self.store.save_round(record["round"], detail)
            if archived:
                self.store.archive_history(archived)
            if self.mode == "async":  # the model being replaced: later updates may be based on it
                self.store.keep_base(self.rounds_done, self.global_weights, self.open_round - self.fed.max_staleness,
                                     self.state.files.get("global.f32"))
        except OSError as exc:
            self._storage_failed(exc)
            self.strategy.load_state_dict(kept)
            return
        try:
            self.state = self._commit(state, new_weights)
        except RoundError:
            self.strategy.load_state_dict(kept)  # nothing was released
            return
        self._published(record, new_weights, contributors)
        self.publish_times.append(time.perf_counter() - started)

    def _published(self, record: dict, weights: np.ndarray, contributors: dict) -> None:
        """The new global model is committed: clear the round, start the next, tell the listeners."""
        try:
            self.store.drop_pending(self.rounds_done)
        except OSError as exc:  # leftovers of a closed round are never read again; the next close retries
            log.warning("cannot remove pending updates of round %d: %s", self.rounds_done, exc)
        self.global_weights = weights
        if self.mode == "async":
            self.recent.add(self.rounds_done, weights)
        self.pending = {}
        self.outbox = None
        self.reports.round_closed()
        self.counts["versions_published"] += 1
        self.strategy.begin(self.global_weights)
        self.members.trained({w: c["loss"] for w, c in contributors.items()}, record["round"])  # for fairness
        if self.phase == "training":
            self._round_opened()
        else:
            self.round_opened_at = self.clock()
            self._waiting_for = set()
        for listener in self.round_listeners:
            try:
                listener(record)
            except Exception:  # the round is published; an observer's failure must not undo or block that
                log.exception("round listener %r failed", listener)

    def _history_record(self, record: dict) -> tuple[dict, dict | None]:
        """The record state.json keeps, and the full one for rounds/<round>.json when it lists too many workers."""
        if len(record["workers"]) <= HISTORY_WORKERS_MAX:
            return record, None
        return {**record, "workers": {}, "detail": "rounds.log"}, record

    def _kept_history(self, record: dict) -> tuple[list[dict], list[dict]]:
        history = [*self.state.history, record]
        if len(history) <= HISTORY_KEPT:
            return history, []
        return history[-HISTORY_KEPT:], history[:-HISTORY_KEPT]

    # -- a site aggregator (site.py calls these) ------------------------------------------------------------------
    def _send_upstream(self, record: dict, weights: np.ndarray, kept: dict | None) -> None:
        """A site's round is complete: its aggregate waits in the outbox (durable) for the upstream."""
        meta = {"round": record["round"], "sample_count": record["sample_count"], "loss": record["mean_loss"],
                "record": record}  # every contributor: adopt() keeps them as a closed round's record does
        try:
            self.store.save_outbox(meta, weights)
        except OSError as exc:
            self._storage_failed(exc)
            self.strategy.load_state_dict(kept)
            return
        self.outbox = meta
        for listener in self.outbox_listeners:
            listener()
        log.info("round %d closed here (%s): %d updates, %d samples; sending it upstream", record["round"],
                 record["closed_by"], len(record["workers"]), record["sample_count"], extra={"round": record["round"]})

    def outbox_weights(self) -> np.ndarray | None:
        kept = self.store.outbox(self.n_params)
        return kept[1] if kept is not None else None

    def outbox_refused(self) -> None:
        """The upstream moved on without this site's aggregate: it is dropped (its updates trained a model the
        federation no longer builds on); the site waits for the upstream's model."""
        self.outbox = None
        with contextlib.suppress(OSError):
            self.store.drop_outbox()

    def upstream_joined(self, scaler: dict | None, rounds_total: int, continual_on: bool, stats: dict) -> None:
        """What the upstream answered this site's join: its scaler (once frozen there) and its campaign; ``stats``:
        the nodes' merged statistics the site joined with (kept: the nodes' own are dropped once a scaler is)."""
        upstream = {**(self.state.upstream or {}), "rounds_total": rounds_total, "continual": continual_on,
                    "stats": stats}
        state = replace(self.state, upstream=upstream)
        if scaler is not None and self.state.scaler is None:
            state = replace(state, scaler=scaler)
        if state != self.state:
            self.state = self._commit_state(state)
            if scaler is not None:
                self.members.drop_statistics()

    def open_upstream_round(self, round_no: int) -> None:
        """The upstream has round ``round_no`` open and wants this site in it: open it for the site's nodes."""
        if round_no != self.open_round or self.state.rounds_target >= round_no or self.state.scaler is None:
            return
        self.state = self._commit_state(self._with_sample(replace(self.state, rounds_target=round_no), round_no))
        self._round_opened()
        log.info("round %d opened by the upstream", round_no, extra={"round": round_no})

    def adopt(self, round_no: int, weights: np.ndarray, directive: dict | None = None) -> None:
        """The upstream published model ``round_no``: the site's nodes get it. The site's own round (if it sent
        one) is closed with it; a round it missed is recorded as the upstream's."""
        if round_no <= self.rounds_done:
            return
        detail = None
        if self.outbox is not None and self.outbox["round"] == round_no:
            record, detail = self._history_record({**self.outbox["record"], "upstream": True})
        else:
            record = {"round": round_no, "trigger": "upstream", "closed_by": "upstream", "duration_s": 0.0,
                      "closed_at": self.clock(), "workers": {}, "contributors": 0, "sample_count": 0,
                      "mean_loss": None, "upstream": True}
        history, archived = self._kept_history(record)
        state = replace(self.state, rounds_done=round_no, rounds_target=max(self.state.rounds_target, round_no),
                        history=history, directive=directive if directive is not None else self.state.directive)
        try:
            if detail is not None:
                self.store.save_round(round_no, detail)
            if archived:
                self.store.archive_history(archived)
        except OSError as exc:
            self._storage_failed(exc)
            return
        self.state = self._commit(state, weights)
        contributors = (detail or record)["workers"]
        with contextlib.suppress(OSError):
            self.store.drop_outbox()
        self._published(record, weights, contributors)
        log.info("model %d adopted from the upstream", round_no, extra={"round": round_no})

    def adopt_directive(self, directive: dict | None) -> None:
        if directive is not None and directive != self.state.directive:
            self.state = self._commit_state(replace(self.state, directive=directive))


def _summary(times) -> dict | None:
    """The latest closes' times from a complete round to its published model (aggregate, persist, publish)."""
    if not times:
        return None
    ordered = sorted(times)
    return {"count": len(ordered), "last": round(times[-1], 4), "median": round(ordered[len(ordered) // 2], 4),
            "p90": round(ordered[(len(ordered) * 9) // 10], 4), "max": round(ordered[-1], 4)}


def _why(trigger: str, reports: continual.Reports) -> str:
    """Which workers asked for a data-triggered round, for the log and the round's trigger record."""
    if trigger == "drift":
        return "drift at " + ", ".join(sorted(reports.drifting)[:20])
    return "new rows at " + ", ".join(f"{w} ({reports.fresh[w].new_rows})" for w in sorted(reports.ready)[:20])
