"""The worker's federation loop: join → pull → train → push → wait → install the new global model → repeat.

Plain Python in a background thread, so tests can drive it without HTTP routes. Installing a model means: export
ONNX, quantise to int8 on local normal rows, recalibrate the threshold on the served model's own scores, evaluate
on the held-out rows, persist atomically, hot-swap the /detect session. While the aggregator is away the loop
retries with capped exponential backoff.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch

from services.config import Settings, WorkerSettings
from services.data.scaling import FeatureStats, Scaler
from services.data.skab import Experiment, find_data_dir, load_partition
from services.data.windows import make_windows
from services.model.autoencoder import build_autoencoder, count_parameters, set_flat_weights, get_flat_weights, spec_hash
from services.model.metrics import detection_metrics
from services.model.onnx_export import export_onnx, quantize_int8
from services.model.scoring import calibrate_threshold, make_session, session_scores
from services.model.training import train_local
from services.protocol.codec import CONTENT_TYPE, content_hash, decode_weights, encode_weights
from services.protocol.messages import H_LOSS, H_ROUND, H_SAMPLES, H_SHA256, JoinRequest, JoinResponse
from services.worker.detector import Detector, ServedModel
from services.worker.state import WorkerState, WorkerStore

log = logging.getLogger("fedad.worker")
LONG_POLL_S = 30.0
MAX_BACKOFF_S = 15.0
CALIBRATION_ROWS = 2000


class Retry(Exception):
    """The aggregator is unreachable or answered 5xx: back off and try again."""


class Fatal(Exception):
    """The aggregator refused this worker for good (wrong token, model spec mismatch): stop and say why."""


@dataclass
class LocalData:
    """The node's own experiments; rows never leave this object except as aggregates."""

    experiments: list[Experiment]
    train_rows: int
    window: int

    def train_raw(self) -> np.ndarray:
        return np.concatenate([e.train_part(self.train_rows) for e in self.experiments])

    def windows(self, scaler: Scaler, part: str) -> np.ndarray:
        chunks = []
        for e in self.experiments:
            w = make_windows(scaler.transform(e.values), self.window)
            chunks.append(w[: self.train_rows] if part == "train" else w[self.train_rows:])
        return np.concatenate(chunks)

    def held_out_labels(self) -> np.ndarray:
        return np.concatenate([e.labels[self.train_rows:] for e in self.experiments])


class WorkerLoop:
    def __init__(self, settings: Settings, worker: WorkerSettings, detector: Detector):
        self.settings = settings
        self.worker = worker
        self.detector = detector
        self.store = WorkerStore(worker.state_dir)
        self.spec_hash = spec_hash(settings.input_width, settings.model.hidden)
        self.n_params = count_parameters(settings.input_width, settings.model.hidden)
        self.stop_event = threading.Event()
        self.phase = "starting"
        self.progress: dict = {}
        self.last_error: str | None = None
        self.rounds_total = settings.federation.rounds
        self.state: WorkerState | None = None
        self.data: LocalData | None = None
        self._backoff = 0.5
        self._seed = settings.model.seed + zlib.crc32(worker.id.encode())

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
        torch.set_num_threads(1)
        try:
            self.restore()
            data_dir = find_data_dir(self.settings.data.dir)
            self.data = LocalData(load_partition(data_dir, self.worker.partition, self.settings.data.features),
                                  self.settings.data.train_rows, self.settings.data.window)
            with httpx.Client(base_url=self.settings.aggregator.url, timeout=LONG_POLL_S + 15,
                              headers={"Authorization": f"Bearer {self.worker.token}"}) as client:
                self.client = client
                self._federate()
        except Fatal as exc:
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
            wait = 0 if global_round < 0 else LONG_POLL_S
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

    # -- one step each ----------------------------------------------------------------------------------------------
    def _join(self) -> JoinResponse:
        self.phase = "joining"
        raw = self.data.train_raw()
        request = JoinRequest(spec_hash=self.spec_hash, sample_count=len(raw), stats=FeatureStats.from_rows(raw))
        response = self._call("POST", f"/v1/workers/{self.worker.id}/join", json=request.model_dump())
        return JoinResponse.model_validate(response.json())

    def _pull(self, after_round: int, wait: float) -> tuple[int, np.ndarray | None]:
        response = self._call("GET", "/v1/model", params={"after_round": after_round, "wait": wait})
        model_round = int(response.headers[H_ROUND])
        if response.status_code == 304:
            return model_round, None
        return model_round, decode_weights(response.content, self.n_params, response.headers.get(H_SHA256))

    def _train(self, scaler: Scaler, round_no: int, start_weights: np.ndarray) -> tuple[np.ndarray, float]:
        self.phase = "training"
        plan = self.settings.model
        model = build_autoencoder(self.settings.input_width, plan.hidden)
        set_flat_weights(model, start_weights)
        inputs = self.data.windows(scaler, "train")
        started = time.time()

        def on_epoch(epoch: int, loss: float) -> None:
            self.progress = {"round": round_no, "epoch": epoch, "epochs": plan.local_epochs, "loss": loss}

        result = train_local(model, inputs, plan.local_epochs, plan.batch_size, plan.learning_rate,
                             seed=self._seed + round_no, fedprox_mu=self.settings.federation.fedprox_mu,
                             on_epoch=on_epoch)
        log.info("round %d: trained %d epochs on %d windows in %.1fs, loss %.5f", round_no, plan.local_epochs,
                 len(inputs), time.time() - started, result.loss)
        self._last_loss = result.loss
        return get_flat_weights(model), result.loss

    def _push(self, round_no: int, weights: np.ndarray, loss: float) -> int:
        self.phase = "uploading"
        body = encode_weights(weights)
        headers = {"Content-Type": CONTENT_TYPE, H_SAMPLES: str(len(self.data.train_raw())), H_LOSS: repr(loss),
                   H_SHA256: content_hash(body)}
        response = self._call("POST", f"/v1/rounds/{round_no}/updates", content=body, headers=headers,
                              accept=(409,))
        if response.status_code == 409:
            log.info("update for round %d not taken: %s", round_no, response.json().get("detail"))
            if "has not joined" in response.text:
                self._join()
        return round_no

    def _install(self, run_id: str, scaler: Scaler, model_round: int, weights: np.ndarray) -> None:
        """Export, quantise, recalibrate, evaluate, persist, swap."""
        self.phase = "installing model"
        started = time.time()
        model = build_autoencoder(self.settings.input_width, self.settings.model.hidden)
        set_flat_weights(model, weights)
        train_inputs = self.data.windows(scaler, "train")
        fp32 = export_onnx(model, self.settings.input_width)
        calibration = train_inputs[np.linspace(0, len(train_inputs) - 1, min(CALIBRATION_ROWS, len(train_inputs)),
                                               dtype=int)]
        with tempfile.TemporaryDirectory(dir=self.store.dir) as work:
            int8 = quantize_int8(fp32, calibration, Path(work))
        served = self.settings.serving.model
        session = make_session(int8 if served == "int8" else fp32)
        threshold = calibrate_threshold(session_scores(session, train_inputs), self.settings.threshold)
        held_out = self.data.windows(scaler, "held_out")
        scores = session_scores(session, held_out)
        evaluation = detection_metrics(self.data.held_out_labels(), scores > threshold, scores)
        loss = getattr(self, "_last_loss", None)
        history = [*(self.state.history if self.state else []),
                   {"round": model_round, "local_loss": loss, "threshold": threshold, **evaluation}]
        state = WorkerState(run_id=run_id, model_round=model_round, threshold=threshold,
                            scaler=scaler.model_dump(), spec_hash=self.spec_hash, served=served, weights=weights,
                            onnx_fp32=fp32, onnx_int8=int8, history=history, evaluation=evaluation)
        self.store.save(state)
        self.state = state
        self._serve(state, session)
        log.info("round %d installed in %.1fs: %s model, threshold %.5f, held-out F1 %.3f FAR %.1f%% MAR %.1f%%",
                 model_round, time.time() - started, served, threshold, evaluation["f1"], evaluation["far"],
                 evaluation["mar"])

    def _serve(self, state: WorkerState, session=None) -> None:
        scaler = Scaler(**state.scaler)
        if session is None:
            model = ServedModel.build(state.served_onnx, scaler, self.settings.data.window, state.threshold,
                                      state.model_round, state.served)
        else:
            model = ServedModel(session, scaler, self.settings.data.window, state.threshold, state.model_round,
                                state.served)
        self.detector.swap(model)

    # -- HTTP with retries ------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, accept: tuple[int, ...] = (), **kwargs) -> httpx.Response:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Retry(f"aggregator unreachable at {self.settings.aggregator.url}: {exc}") from None
        if response.status_code in (401, 403) or (response.status_code == 409 and "model spec" in response.text):
            raise Fatal(f"aggregator refused {method} {path} ({response.status_code}): {response.text}")
        if response.status_code >= 500:
            raise Retry(f"aggregator answered {response.status_code} to {method} {path}")
        if response.status_code >= 400 and response.status_code not in accept:
            raise Retry(f"aggregator refused {method} {path} ({response.status_code}): {response.text}")
        return response

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
