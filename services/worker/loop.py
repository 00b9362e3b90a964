"""The worker's federation loop: join → pull → train → push → wait → install the new global model → repeat.

After the first campaign (federation.rounds) a continual federation keeps going: the worker waits for the next round
(GET /v1/round, long-polled), and when one opens it reads its partition again (new files), adds the live rows its
buffer kept, trains from the global weights and pushes. Between rounds a reporter thread tells the aggregator how
many rows this worker has not trained on yet (services/worker/reporter.py): that is what opens rounds on new data.

Plain Python in a background thread, so tests can drive it without HTTP routes. Installing a model means: export
ONNX, quantise to int8 on local normal rows, recalibrate the threshold on the served model's own scores, evaluate
on the held-out rows, persist atomically, hot-swap the /detect session. While the aggregator is away the loop
retries with capped exponential backoff. Local training runs in a child process per round (services/worker/trainer.py),
and so do the export, quantisation and calibration of each installed model (services/worker/calibrate.py), so this
process, which serves /detect, never imports torch, the ``onnx`` package or onnxruntime's quantisation.

The loop is handed what it works with (services/worker/assembly.py builds them all): the model shelf it installs
into, the node's data feed, the trainer, and the live buffer and drift watch whose rows and requests it trains on
and reports. It builds the report the reporter thread sends (``report`` / ``send_report``), and holds nobody else.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import threading

import httpx
import numpy as np

from services import faults
from services.config import Settings, WorkerSettings
from services.data.node import NodeData
from services.protocol.scaling import FeatureStats, Scaler
from services.data.source import DataError
from services.data.sources import NodeFeed
from services.model.detector import node_seed
from services.protocol.codec import CONTENT_TYPE, content_hash, decode_weights, encode_weights
from services.protocol.errors import (CONFLICTING_UPDATE, FATAL_CODES, FUTURE_ROUND, NO_OPEN_ROUND, NOT_FOUND,
                                      NOT_JOINED, NOT_SAMPLED, STALE_ROUND, TOO_STALE, ErrorCode, error_of)
from services.protocol.messages import (H_LOSS, H_ROUND, H_SAMPLES, H_SHA256, FleetDirective, JoinRequest,
                                        JoinResponse, RoundState, TrainingPlan, WorkerReport)
from services.security.accountant import GaussianAccountant
from services.security.filters import FilterContext, apply, client_privacy_filters
from services.security.tls import client_context
from services.worker.buffer import LiveBuffer
from services.worker.directive import DirectiveFollower
from services.worker.drift import DriftWatch
from services.worker.marks import TrainedMarks
from services.worker.models import ModelShelf
from services.worker.state import WorkerState
from services.worker.trainer import Trainer, TrainingFailed

log = logging.getLogger("fedad.worker")
LONG_POLL_S = 30.0
MAX_BACKOFF_S = 15.0


class Retry(Exception):
    """The aggregator is unreachable, answered 5xx, or refused with a code a later attempt may pass: back off and
    try again."""


class Fatal(Exception):
    """The aggregator refused this worker with a code no retry can cure (services/protocol/errors.py FATAL_CODES:
    wrong token or id, model spec mismatch): stop and say why."""


class WorkerLoop:
    def __init__(self, settings: Settings, worker: WorkerSettings, models: ModelShelf, feed: NodeFeed,
                 trainer: Trainer, directive: DirectiveFollower, buffer: LiveBuffer | None = None,
                 drift: DriftWatch | None = None):
        self.settings = settings
        self.worker = worker
        self.models = models  # versions, gate, serving
        self.feed = feed  # the partition as it grows
        self.trainer = trainer  # torch runs only in its child processes
        self.directive = directive  # the fleet's model directives, followed once each and reported
        self.buffer = buffer  # live rows scored normal, trained on in the next rounds (buffer.enabled)
        self.drift = drift  # the streams' drift tests: their retrain requests go into the report (drift.enabled)
        self.spec = models.spec
        self.spec_hash = self.spec.spec_hash
        self.n_params = self.spec.n_params
        self.stop_event = threading.Event()
        self.phase = "starting"
        self.progress: dict = {}
        self.last_training: dict | None = None  # round, loss, seconds, peak_rss_mib of the last local round
        self.training_failures = 0  # training processes that crashed or were killed (each retried)
        self.last_training_failure: str | None = None
        self.rounds_trained = 0
        self.last_error: str | None = None
        self.rounds_total = settings.federation.rounds
        self.data: NodeData | None = None
        self.plan: TrainingPlan | None = None  # the aggregator's, from the join answer: every worker trains alike
        self._backoff = 0.5
        self._seed = node_seed(settings.model.seed, worker.id)
        self.outbound = client_privacy_filters(settings.privacy)  # client-side DP: clip + noise before upload
        self.marks = TrainedMarks()  # rows already trained on (services/worker/marks.py)
        self.continual: bool | None = None  # the aggregator's RoundState.continual; None: not asked yet
        self.new_rows = 0  # rows not yet trained on, as last counted
        self._declared_samples = 0  # sample_count of the last join: an update may not claim more
        self._drift_asks = 0  # drift retrain requests taken from the drift watch ...
        self._drift_asks_trained = 0  # ... of which a round this worker trained in has answered this many
        self._report_refused: str | None = None  # the code of the last refused report, logged once
        self.report_client: httpx.Client | None = None  # open from the first join with a scaler until stop()

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=f"worker-{self.worker.id}", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.stop_event.set()
        if self.report_client is not None:
            self.report_client.close()

    def restore(self) -> None:
        """Serve the persisted model at once, before the aggregator is even reachable."""
        self.models.restore()

    @property
    def state(self) -> WorkerState | None:
        """The kept versions, the served and the pinned one (services/worker/models.py)."""
        return self.models.state

    @state.setter
    def state(self, value: None) -> None:  # None: the aggregator runs a new federation
        if value is not None:
            raise ValueError("the loop only forgets the persisted state; ModelShelf installs versions")
        self.models.forget()

    def run(self) -> None:
        try:
            if self.worker.mode == "train" and importlib.util.find_spec("torch") is None:
                raise Fatal(f"worker {self.worker.id} trains (mode train) but torch is not installed here (the "
                            f"detect-only image?): set workers.{self.worker.id}.mode to detect_only")
            self.restore()
            self.data = self.feed.current()
            self._load_marks()
            with self._client(LONG_POLL_S + 15) as client:
                self.client = client
                self._follow() if self.worker.mode == "detect_only" else self._federate()
        except (Fatal, DataError) as exc:  # nothing to retry: say why in one line, keep serving what we have
            self.phase, self.last_error = "failed", str(exc)
            log.error("stopped: %s", exc)
        except Exception as exc:  # the service must keep serving the last model even if the loop dies
            self.phase, self.last_error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("federation loop failed")

    def _federate(self) -> None:
        joined = self._joined()
        scaler = joined.scaler
        if self.state is not None and self.state.run_id != joined.run_id:
            log.warning("aggregator runs a new federation (%s, was %s): retraining", joined.run_id, self.state.run_id)
            self.state = None
        self._check_marks(joined.run_id)
        global_round, global_weights = self._resume_point()
        pushed_round = 0
        passed_round = 0  # the last round this node was not sampled for: it waits for the next model instead
        while not self.stop_event.is_set():
            may_train = True
            if global_round >= self.rounds_total and pushed_round <= global_round:
                # the first campaign is over and no update of ours waits for its round: is there a next round?
                if self.continual:
                    self.phase = "idle"
                state = self._retrying(lambda: self._round_state(global_round))
                if state is None or (not state.continual and state.rounds_done <= global_round):
                    self.phase = "done"
                    log.info("federation done at round %d: serving version %s", global_round,
                             self.models.served_id)
                    return
                self.phase = "idle"
                if state.rounds_done <= global_round and state.phase != "training":
                    continue  # the long-poll elapsed without news
                may_train = state.phase == "training" and state.open_round == global_round + 1 and \
                    state.sampled is not False
                wait = 0
            else:  # long-poll only once this worker's update for the open round is in (or it is not sampled for
                # it): nothing newer can come before
                wait = LONG_POLL_S if max(pushed_round, passed_round) > global_round else 0
            model_round, weights = self._retrying(lambda: self._pull(global_round, wait))
            if weights is not None and model_round > global_round:
                global_round, global_weights = model_round, weights
                if model_round >= 1:  # round 0 is the untrained starting point: nothing worth serving
                    self._install(joined.run_id, scaler, model_round, weights)
                continue  # look again: the campaign may be over, the next round open or not yet
            open_round = global_round + 1
            if may_train and pushed_round < open_round and joined.sampling and passed_round < open_round:
                state = self._retrying(lambda: self._round_state(global_round, wait=0))
                if state is not None and state.sampled is False:
                    passed_round = open_round
                    self.phase = "not sampled"
                    log.info("round %d: not in its sample; serving and waiting for its model", open_round)
                    continue
            if may_train and pushed_round < open_round:
                buffer_mark, drift_asks = self._refresh_data()
                update, loss = self._train(scaler, open_round, global_weights)
                pushed_round, taken = self._retrying(lambda: self._push(open_round, update, loss))
                if taken:
                    self._trained(open_round, buffer_mark, drift_asks, joined.run_id)
            self.phase = "waiting for round"

    def _follow(self) -> None:
        """A detect-only node: join as such, then install every published global model (int8 scales and threshold
        calibrated on its own normal rows, onnxruntime only), until the last round or, when the federation is
        continual, for good; it never trains or uploads."""
        if self.spec.kind != "dense":
            raise Fatal(f"a detect-only worker serves the dense kind only: a {self.spec.kind} model needs torch to "
                        "export its graph")
        joined = self._joined()
        if self.state is not None and self.state.run_id != joined.run_id:
            log.warning("aggregator runs a new federation (%s, was %s)", joined.run_id, self.state.run_id)
            self.state = None
        served_round = max(self._resume_point()[0], 0)
        while not self.stop_event.is_set():
            if served_round >= self.rounds_total and not self.continual:
                state = self._retrying(lambda: self._round_state(served_round, wait=0))
                if state is None or (not state.continual and state.rounds_done <= served_round):
                    break
            self.phase = "waiting for round" if served_round < self.rounds_total else "idle"
            model_round, weights = self._retrying(lambda: self._pull(served_round, LONG_POLL_S))
            if weights is not None and model_round > served_round:
                self._install(joined.run_id, joined.scaler, model_round, weights)
                served_round = model_round
        self.phase = "done"
        log.info("federation done: serving round %d", served_round)

    def _joined(self) -> JoinResponse:
        """Joined, with the federation's scaler (it exists once min_workers have joined)."""
        joined = self._retrying(self._join)
        while joined.scaler is None:
            self.phase = "waiting for workers"
            self._sleep(1.0)
            joined = self._retrying(self._join)
        self.rounds_total = joined.rounds_total
        if self.report_client is None:  # the aggregator knows this worker now: reports may go (``report``)
            self.report_client = self._client(10)  # the reports' own, open until stop(): reports outlive the loop
        return joined

    def _resume_point(self) -> tuple[int, np.ndarray | None]:
        """The newest global model installed, served or not (the federation trains on from the global weights), or
        (-1, None) before the first."""
        if self.state is None or self.models.latest_round is None:
            return -1, None
        return self.models.latest_round, self.models.latest_weights

    # -- one step each ----------------------------------------------------------------------------------------------
    def _join(self) -> JoinResponse:
        self.phase = "joining"
        raw = self.data.train_raw()
        request = JoinRequest(spec_hash=self.spec_hash, sample_count=len(raw), stats=FeatureStats.from_rows(raw),
                              role=self.worker.mode)
        response = self._call("POST", f"/v1/workers/{self.worker.id}/join", json=request.model_dump())
        joined = JoinResponse.model_validate(response.json())
        self._declared_samples = len(raw)
        own = TrainingPlan.from_settings(self.settings)
        if joined.plan != own and joined.plan != self.plan:  # once per change, not at every rejoin
            differs = ", ".join(f"{k} {v} (own config: {getattr(own, k)})" for k, v in joined.plan
                                if getattr(own, k) != v)
            log.info("training as the aggregator's plan says: %s", differs)
        self.plan = joined.plan  # one plan for the whole federation: the aggregator's
        return joined

    def _pull(self, after_round: int, wait: float) -> tuple[int, np.ndarray | None]:
        response = self._call("GET", "/v1/model", params={"after_round": after_round, "wait": wait})
        model_round = int(response.headers[H_ROUND])
        if response.status_code == 304:
            return model_round, None
        return model_round, decode_weights(response.content, self.n_params, response.headers.get(H_SHA256))

    def _train(self, scaler: Scaler, round_no: int, start_weights: np.ndarray) -> tuple[np.ndarray, float]:
        """One local round in a training process (services/worker/trainer.py), retried until it delivers."""
        self.phase = "training"
        plan = self.plan
        inputs = self.data.windows(scaler, "train")

        def on_epoch(epoch: int, loss: float) -> None:
            self.progress = {"round": round_no, "epoch": epoch, "epochs": plan.local_epochs, "loss": loss}

        trained = self._in_child(f"training round {round_no}", lambda: self.trainer.train(
            self.spec.architecture, start_weights, inputs, plan, self._seed + round_no, on_epoch))
        weights = trained.weights
        log.info("round %d: trained %d epochs on %d windows in %.1fs (training process peak %.0f MiB), loss %.5f",
                 round_no, plan.local_epochs, len(inputs), trained.seconds, trained.peak_rss_bytes / 2**20,
                 trained.loss)
        self._last_loss = trained.loss
        self.last_training = {"round": round_no, "loss": trained.loss, "seconds": round(trained.seconds, 3),
                              "peak_rss_mib": round(trained.peak_rss_bytes / 2**20, 1),
                              "cpu_seconds": round(trained.cpu_seconds, 3),
                              "peak_rss_bytes": trained.peak_rss_bytes}
        self.rounds_trained += 1
        if self.outbound:
            weights = apply(self.outbound, weights, FilterContext(reference=start_weights))
            privacy = self.settings.privacy
            spent = GaussianAccountant()
            for _ in range(round_no):  # at most one noised update per round so far
                spent.step(privacy.noise_multiplier)
            self.privacy_spent = {"epsilon": round(spent.get_epsilon(privacy.delta), 3), "delta": privacy.delta}
            log.info("round %d: update clipped to %.3g and noised (z=%.3g): ε ≤ %.3f at δ=%g so far", round_no,
                     privacy.clip_norm, privacy.noise_multiplier, self.privacy_spent["epsilon"], privacy.delta)
        return weights, trained.loss

    def _in_child(self, what: str, step):
        """A training-process job, retried with capped backoff until it delivers: a crash or kill (the OOM killer)
        is logged, counted and kept in ``last_training_failure``; /detect keeps serving meanwhile."""
        backoff = 1.0
        while True:
            try:
                return step()
            except TrainingFailed as exc:
                self.training_failures += 1
                self.last_error = self.last_training_failure = f"{what}: {exc}"
                log.error("%s; retrying in %.0fs", self.last_error, backoff)
                self._sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _push(self, round_no: int, weights: np.ndarray, loss: float) -> tuple[int, bool]:
        """The round sent for, and whether the aggregator took the update (else the round moved on without it)."""
        self.phase = "uploading"
        body = encode_weights(weights)
        headers = {"Content-Type": CONTENT_TYPE, H_SAMPLES: str(len(self.data.train_raw())), H_LOSS: repr(loss),
                   H_SHA256: content_hash(body)}
        moved_on = (NOT_JOINED, NO_OPEN_ROUND, STALE_ROUND, FUTURE_ROUND, CONFLICTING_UPDATE, NOT_SAMPLED, TOO_STALE)
        response = self._call("POST", f"/v1/rounds/{round_no}/updates", headers=headers,
                              content=faults.split_body("worker.upload", body), accept=moved_on)
        if response.is_error:  # the round moved on without this update, or the aggregator forgot this worker
            problem = error_of(response.content)
            log.info("update for round %d not taken: %s (%s)", round_no, problem.detail, problem.code)
            if problem.code == NOT_JOINED.code:
                self._join()
            return round_no, False
        return round_no, True

    def _install(self, run_id: str, scaler: Scaler, model_round: int, weights: np.ndarray) -> None:
        """Install a global model as a new version (services/worker/models.py): served if it passes the gate."""
        self.phase = "installing model"
        self._in_child(f"installing round {model_round}", lambda: self.models.install(  # calibrated in a child
            run_id, scaler, model_round, weights, self.data, getattr(self, "_last_loss", None)))
        if self.models.last_error:
            self.last_error = self.models.last_error

    # -- between rounds: new rows, reports ------------------------------------------------------------------------
    def _round_state(self, after: int, wait: float = LONG_POLL_S) -> RoundState | None:
        """Where the federation stands; with ``wait`` the aggregator answers once a round opens, a newer model than
        ``after`` is published, or the wait elapsed. None: an aggregator without continual rounds (no route)."""
        wait = wait if self.continual else 0  # the first question: is there anything to wait for at all?
        seen = self.directive.result.seq if self.directive.result else 0
        response = self._call("GET", "/v1/round", params={"after": after, "wait": wait, "directive": seen},
                              accept=(NOT_FOUND,))
        if response.status_code == 404:
            self.continual = False
            return None
        state = RoundState.model_validate(response.json())
        self.continual = state.continual
        self.follow_directive(state.directive)
        return state

    def _refresh_data(self) -> tuple[int | None, int]:
        """Before a round: the partition as it is now (new files) plus the live rows the buffer kept; re-join when
        the training rows grew, so the update's sample count stays within what the aggregator was told. Returns the
        buffer's mark and the drift requests this round answers."""
        drift_asks = self._drift_asks
        try:
            node = self.feed.current()
        except (DataError, OSError) as exc:  # a file half copied or a bad row: train on what was read before
            log.warning("partition not re-read (%s): training on the rows read before", exc)
            node = self.data.with_extra([]) if self.data.extra else self.data
        buffer_mark, extra = None, []
        if self.buffer is not None:
            buffer_mark = self.buffer.mark()  # before the rows: a row committed in between is counted new again
            extra = self.buffer.runs(min_rows=self.settings.data.window)
        data = node.with_extra(extra) if extra else node
        grown = len(data.train_raw()) - len(self.data.train_raw())
        if grown or data.extra:
            log.info("round data: %d training rows (%+d since the last round; %d live rows in %d runs)",
                     len(data.train_raw()), grown, sum(len(r.values) for r in data.extra), len(data.extra))
        self.data = data
        if len(data.train_raw()) > self._declared_samples:
            self._retrying(self._join)
        return buffer_mark, drift_asks

    def _trained(self, round_no: int, buffer_mark: int | None, drift_asks: int, run_id: str) -> None:
        """The update for ``round_no`` was taken: the rows it trained on are not new any more."""
        self.marks.run_id = run_id
        self.marks.trained(round_no, self.data, buffer_mark)
        self._drift_asks_trained = drift_asks
        self._save_marks()

    def _load_marks(self) -> None:
        """The marks of the last run; a worker that served a model before marks were kept trained on its rows."""
        marks = TrainedMarks.load(self.worker.state_dir)
        if marks is None and self.state is not None:
            marks = TrainedMarks(source_rows=self.data.train_counts(),
                                 buffer_mark=self.buffer.mark() if self.buffer is not None else None)
        self.marks = marks or TrainedMarks()

    def _check_marks(self, run_id: str) -> None:
        if self.marks.run_id not in (None, run_id):  # another federation: none of its rounds trained on our rows
            self.marks = TrainedMarks(run_id=run_id)
            self._save_marks()

    def _save_marks(self) -> None:
        try:
            self.marks.save(self.worker.state_dir)
        except OSError as exc:  # a full disk: the counts stay right in memory, a restart may count rows again
            log.error("cannot persist the trained-rows marks: %s", exc.strerror or exc)

    def count_new_rows(self) -> int:
        """Rows not yet trained on: new partition rows and live rows since the last round this worker trained.
        A detect-only worker trains on nothing, so it counts none (they must not open rounds)."""
        if self.worker.mode != "train" or self.data is None:
            return 0
        try:
            node = self.feed.current()
        except (DataError, OSError):  # said once, when a round reads the partition
            node = self.data
        self.new_rows = self.marks.new_rows(node, self.buffer)
        return self.new_rows

    def report(self) -> tuple[WorkerReport, int] | None:
        """What the aggregator hears about this worker (counts and model versions, never rows), and the rounds
        trained so far: after each, the report goes out even if it looks the same (services/worker/reporter.py).
        None until the worker has joined a federation with its scaler: nothing to report to yet."""
        if self.report_client is None:
            return None
        drift = self.drift
        if drift is not None and drift.take_retrain_request():
            self._drift_asks += 1
        models = self.models
        served = models.served_round
        if served is None and models.slot.current is not None:
            served = models.slot.current.model_round
        report = WorkerReport(new_rows=self.count_new_rows(), drift=self._drift_asks > self._drift_asks_trained,
                              drift_events=drift.events if drift is not None else 0, served_round=served,
                              pinned=models.pinned_round, versions=[_finite(v) for v in models.versions[-100:]],
                              directive=self.directive.result)
        return report, self.marks.rounds

    def send_report(self, report: WorkerReport) -> bool:
        """Post ``report``; True once the aggregator took it (or takes no reports at all)."""
        if self.report_client is None:
            return False
        try:
            response = self.report_client.post(f"/v1/workers/{self.worker.id}/report",
                                               json=report.model_dump(mode="json"))
        except (httpx.HTTPError, RuntimeError) as exc:  # RuntimeError: the client closed as the worker stops
            log.debug("report not sent: %s", exc)
            return False
        if response.status_code == 404 and error_of(response.content).code == NOT_FOUND.code:
            if self._report_refused != NOT_FOUND.code:  # an aggregator without reports: no round on new data
                log.warning("the aggregator takes no worker reports (404): new rows are not announced")
                self._report_refused = NOT_FOUND.code
            return True
        if response.is_error:  # sent again at the next look (at most every REPORT_INTERVAL_S)
            problem = error_of(response.content)
            if problem.code != self._report_refused:
                log.warning("report refused (%s %s): %s", response.status_code, problem.code, problem.detail)
            self._report_refused = problem.code
            return False
        self._report_refused = None
        self.follow_directive(response.json().get("directive"))
        return True

    def follow_directive(self, directive: FleetDirective | dict | None) -> None:
        """The fleet's model directive, from any answer that carries it: followed once; its outcome changes the
        report, which the reporter sends at its next look."""
        try:
            self.directive.follow(directive)
        except ValueError as exc:  # a directive this worker cannot read: say so once, keep working
            log.warning("fleet directive not understood: %s", exc)

    def continual_document(self) -> dict:
        """The ``continual`` block of /v1/status (the reporter adds how many reports it sent)."""
        return {"enabled": self.continual, "new_rows": self.new_rows, "last_round_trained": self.marks.last_round,
                "rounds_trained": self.marks.rounds, "source_reloads": self.feed.reloads}

    def _client(self, timeout: float) -> httpx.Client:
        return httpx.Client(base_url=self.settings.aggregator.url, timeout=timeout,
                            verify=client_context(self.settings.tls, self.worker.id),
                            headers={"Authorization": f"Bearer {self.worker.token}"})

    # -- HTTP with retries ------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, accept: tuple[ErrorCode, ...] = (), **kwargs) -> httpx.Response:
        """The answer, or a refusal whose code is in ``accept``; other refusals raise Fatal or Retry by their code."""
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Retry(f"aggregator unreachable at {self.settings.aggregator.url}: {exc}") from None
        if not response.is_error:
            return response
        problem = error_of(response.content)
        refusal = f"aggregator refused {method} {path} ({response.status_code} {problem.code}): {problem.detail}"
        if problem.code in FATAL_CODES:
            raise Fatal(refusal)
        if problem.code in {a.code for a in accept}:
            return response
        raise Retry(refusal)

    def _retrying(self, step):
        while not self.stop_event.is_set():
            try:
                result = step()
                self._backoff, self.last_error = 0.5, None
                return result
            except Retry as exc:
                self.last_error = str(exc)
                log.warning("%s; retrying in %.1fs", exc, self._backoff)
                self._sleep(self._backoff)
                self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
        raise SystemExit(0)

    def _sleep(self, seconds: float) -> None:
        if self.stop_event.wait(seconds):
            raise SystemExit(0)


def _finite(version: dict) -> dict:
    """A version for the report: a NaN or infinite figure (an undefined F1, say) is sent as null, as JSON has no
    other way to say it."""
    figures = {k: None if isinstance(v, float) and not math.isfinite(v) else v
               for k, v in version.get("figures", {}).items()}
    return {**version, "figures": figures}
