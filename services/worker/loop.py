"""The worker's federation loop: join → pull → train → push → wait → install the new global model → repeat.

Plain Python in a background thread, so tests can drive it without HTTP routes. Installing a model means: export
ONNX, quantise to int8 on local normal rows, recalibrate the threshold on the served model's own scores, evaluate
on the held-out rows, persist atomically, hot-swap the /detect session. While the aggregator is away the loop
retries with capped exponential backoff. Local training runs in a child process per round (services/worker/trainer.py),
so this process, which serves /detect, never imports torch.
"""

from __future__ import annotations

import importlib.util
import dataclasses
import logging
import threading
import time

import httpx
import numpy as np

from services import faults
from services.config import Settings, WorkerSettings
from services.data.node import NodeData
from services.data.scaling import FeatureStats, Scaler
from services.data.source import DataError
from services.data.sources import load_node
from services.data.windows import Reference
from services.model.detector import AnomalyDetector, DetectorSpec, node_seed
from services.protocol.codec import CONTENT_TYPE, content_hash, decode_weights, encode_weights
from services.protocol.errors import (CONFLICTING_UPDATE, FATAL_CODES, FUTURE_ROUND, NO_OPEN_ROUND, NOT_JOINED,
                                      STALE_ROUND, ErrorCode, error_of)
from services.protocol.messages import H_LOSS, H_ROUND, H_SAMPLES, H_SHA256, JoinRequest, JoinResponse, TrainingPlan
from services.security.accountant import GaussianAccountant
from services.security.filters import FilterContext, apply, client_privacy_filters
from services.security.tls import client_context
from services.worker.serving import ModelSlot, ServedModel
from services.worker.state import WorkerState, WorkerStore
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
    def __init__(self, settings: Settings, worker: WorkerSettings, slot: ModelSlot):
        self.settings = settings
        self.worker = worker
        self.slot = slot
        self.store = WorkerStore(worker.state_dir)
        self.spec = DetectorSpec.from_settings(settings)
        self.spec_hash = self.spec.spec_hash
        self.n_params = self.spec.n_params
        self.stop_event = threading.Event()
        self.phase = "starting"
        self.progress: dict = {}
        self.last_training: dict | None = None  # round, loss, seconds, peak_rss_mib of the last local round
        self.trainer = Trainer(worker.state_dir)  # torch runs only in its child processes
        self.training_failures = 0  # training processes that crashed or were killed (each retried)
        self.last_training_failure: str | None = None
        self.rounds_trained = 0
        self.last_error: str | None = None
        self.rounds_total = settings.federation.rounds
        self.state: WorkerState | None = None
        self.data: NodeData | None = None
        self.plan: TrainingPlan | None = None  # the aggregator's, from the join answer: every worker trains alike
        self._backoff = 0.5
        self._seed = node_seed(settings.model.seed, worker.id)
        self.outbound = client_privacy_filters(settings.privacy)  # client-side DP: clip + noise before upload

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=f"worker-{self.worker.id}", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.stop_event.set()

    def restore(self) -> None:
        """Serve the persisted model at once, before the aggregator is even reachable."""
        self.state = self.store.load(self.n_params)
        if self.state is not None and self.state.spec_hash == self.spec_hash:
            self._serve(self.state)
            log.info("resumed at model round %d (threshold %.5f)", self.state.model_round, self.state.threshold)
        elif self.state is not None:
            log.warning("persisted model has another architecture (%s); starting fresh", self.state.spec_hash)
            self.state = None

    def run(self) -> None:
        try:
            if self.worker.mode == "train" and importlib.util.find_spec("torch") is None:
                raise Fatal(f"worker {self.worker.id} trains (mode train) but torch is not installed here (the "
                            f"detect-only image?): set workers.{self.worker.id}.mode to detect_only")
            self.restore()
            self.data = load_node(self.settings, self.worker)
            with httpx.Client(base_url=self.settings.aggregator.url, timeout=LONG_POLL_S + 15,
                              verify=client_context(self.settings.tls, self.worker.id),
                              headers={"Authorization": f"Bearer {self.worker.token}"}) as client:
                self.client = client
                self._follow() if self.worker.mode == "detect_only" else self._federate()
        except (Fatal, DataError) as exc:  # nothing to retry: say why in one line, keep serving what we have
            self.phase, self.last_error = "failed", str(exc)
            log.error("stopped: %s", exc)
        except Exception as exc:  # the service must keep serving the last model even if the loop dies
            self.phase, self.last_error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("federation loop failed")

    def _federate(self) -> None:
        joined = self._retrying(self._join)
        while joined.scaler is None:
            self.phase = "waiting for workers"
            self._sleep(1.0)
            joined = self._retrying(self._join)
        scaler = joined.scaler
        self.rounds_total = joined.rounds_total
        self.plan = joined.plan
        if self.state is not None and self.state.run_id != joined.run_id:
            log.warning("aggregator runs a new federation (%s, was %s): retraining", joined.run_id, self.state.run_id)
            self.state = None
        global_round, global_weights = (self.state.model_round, self.state.weights) if self.state else (-1, None)
        pushed_round = 0
        while not self.stop_event.is_set():
            if global_round >= self.rounds_total:
                self.phase = "done"
                log.info("federation done: serving round %d", global_round)
                return
            # long-poll only once this worker's update for the open round is in; before that nothing newer can come
            wait = LONG_POLL_S if pushed_round > global_round else 0
            model_round, weights = self._retrying(lambda: self._pull(global_round, wait))
            if weights is not None and model_round > global_round:
                global_round, global_weights = model_round, weights
                if model_round >= 1:  # round 0 is the untrained starting point: nothing worth serving
                    self._install(joined.run_id, scaler, model_round, weights)
                if global_round >= self.rounds_total:
                    continue
            open_round = global_round + 1
            if pushed_round < open_round:
                update, loss = self._train(scaler, open_round, global_weights)
                pushed_round = self._retrying(lambda: self._push(open_round, update, loss))
            self.phase = "waiting for round"

    def _follow(self) -> None:
        """A detect-only node: join as such, then install every published global model (int8 scales and threshold
        calibrated on its own normal rows, onnxruntime only) until the last round; it never trains or uploads."""
        if self.spec.kind != "dense":
            raise Fatal(f"a detect-only worker serves the dense kind only: a {self.spec.kind} model needs torch to "
                        "export its graph")
        joined = self._retrying(self._join)
        while joined.scaler is None:
            self.phase = "waiting for workers"
            self._sleep(1.0)
            joined = self._retrying(self._join)
        self.rounds_total = joined.rounds_total
        if self.state is not None and self.state.run_id != joined.run_id:
            log.warning("aggregator runs a new federation (%s, was %s)", joined.run_id, self.state.run_id)
            self.state = None
        served_round = self.state.model_round if self.state else 0
        while not self.stop_event.is_set() and served_round < self.rounds_total:
            self.phase = "waiting for round"
            model_round, weights = self._retrying(lambda: self._pull(served_round, LONG_POLL_S))
            if weights is not None and model_round > served_round:
                self._install(joined.run_id, joined.scaler, model_round, weights)
                served_round = model_round
        self.phase = "done"
        log.info("federation done: serving round %d", served_round)

    # -- one step each ----------------------------------------------------------------------------------------------
    def _join(self) -> JoinResponse:
        self.phase = "joining"
        raw = self.data.train_raw()
        request = JoinRequest(spec_hash=self.spec_hash, sample_count=len(raw), stats=FeatureStats.from_rows(raw),
                              role=self.worker.mode)
        response = self._call("POST", f"/v1/workers/{self.worker.id}/join", json=request.model_dump())
        joined = JoinResponse.model_validate(response.json())
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

    def _push(self, round_no: int, weights: np.ndarray, loss: float) -> int:
        self.phase = "uploading"
        body = encode_weights(weights)
        headers = {"Content-Type": CONTENT_TYPE, H_SAMPLES: str(len(self.data.train_raw())), H_LOSS: repr(loss),
                   H_SHA256: content_hash(body)}
        moved_on = (NOT_JOINED, NO_OPEN_ROUND, STALE_ROUND, FUTURE_ROUND, CONFLICTING_UPDATE)
        response = self._call("POST", f"/v1/rounds/{round_no}/updates", headers=headers,
                              content=faults.split_body("worker.upload", body), accept=moved_on)
        if response.is_error:  # the round moved on without this update, or the aggregator forgot this worker
            problem = error_of(response.content)
            log.info("update for round %d not taken: %s (%s)", round_no, problem.detail, problem.code)
            if problem.code == NOT_JOINED.code:
                self._join()
        return round_no

    def _install(self, run_id: str, scaler: Scaler, model_round: int, weights: np.ndarray) -> None:
        """Export, quantise, recalibrate, evaluate, persist, swap."""
        self.phase = "installing model"
        started = time.time()
        train_inputs = self.data.windows(scaler, "train")
        reference = self.data.default_reference(scaler)
        exported = None if self.spec.kind == "dense" else self._in_child(  # only torch exports the other kinds
            f"exporting round {model_round}", lambda: self.trainer.export(self.spec.architecture, weights))
        detector = AnomalyDetector(self.spec, weights).calibrate(train_inputs, reference, workdir=self.store.dir,
                                                                 onnx_fp32=exported)
        threshold = detector.threshold_
        evaluation, _ = detector.evaluate(self.data.windows(scaler, "held_out"), self.data.held_out_labels())
        loss = getattr(self, "_last_loss", None)
        history = [*(self.state.history if self.state else []),
                   {"round": model_round, "local_loss": loss, "threshold": threshold, **evaluation}]
        state = WorkerState(run_id=run_id, model_round=model_round, threshold=threshold,
                            scaler=scaler.model_dump(), spec_hash=self.spec_hash, served=self.spec.served,
                            weights=weights, onnx_fp32=detector.onnx_fp32_, onnx_int8=detector.onnx_int8_,
                            history=history, evaluation=evaluation, reference=reference.model_dump())
        try:
            self.store.save(state)
        except OSError as exc:  # full or read-only state disk: serve the new model, keep the last persisted one
            self.last_error = f"cannot persist round {model_round} to {self.store.dir}: {exc.strerror or exc}"
            log.error("%s; serving it from memory, a restart falls back to the last persisted round", self.last_error)
        self.state = state
        self.slot.swap(ServedModel(detector, model_round))
        if evaluation["labels"]:
            figures = f"held-out F1 {evaluation['f1']:.3f} FAR {evaluation['far']:.1f}% MAR {evaluation['mar']:.1f}%"
        else:
            figures = f"no labels: held-out alarm rate {evaluation['alarm_rate']:.1f}%"
        log.info("round %d installed in %.1fs: %s model, threshold %.5f, %s", model_round, time.time() - started,
                 self.spec.served, threshold, figures)

    def _serve(self, state: WorkerState) -> None:
        """Serve a persisted model as it was calibrated."""
        reference = (Reference(**state.reference) if state.reference
                     else self.spec.prep.reference(None, Scaler(**state.scaler))
                     if self.spec.prep.baseline == "federation" else None)
        if reference is None:  # persisted by a version without references: rebuilt once local data is loaded
            log.warning("persisted model has no reference scaling: not served until the next round is installed")
            return
        spec = dataclasses.replace(self.spec, served=state.served)
        detector = AnomalyDetector.restore(spec, state.weights, state.onnx_fp32, state.onnx_int8, reference,
                                           state.threshold)
        self.slot.swap(ServedModel(detector, state.model_round))

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
