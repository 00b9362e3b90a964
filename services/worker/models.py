"""The models a worker keeps, and which one /detect serves.

Every global model the federation publishes is installed here: exported to ONNX, quantised to int8 on the node's
own normal inputs, its threshold calibrated on that session's scores (all three in a short-lived child process,
services/worker/calibrate.py, so serving never loads the ``onnx`` package), evaluated on the held-out rows, kept on disk
(services/worker/state.py) and — if the gate (services/worker/gate.py) finds it no worse than the served one —
hot-swapped behind /detect. A refused model is kept with its reason; the previous one keeps serving. An admin may
serve any kept version (roll back or forward) or pin one, so newer models are kept but not served. The last
``models.keep`` versions stay on disk, never fewer than the served and the pinned one.

Serving is gated, learning is not: the federation loop trains the next round from the newest global weights
(``latest_round`` / ``latest_weights``), whichever version is served.

Version ids: a global round (``"12"``), or that round's weights recalibrated on recent live rows after drift
(``"12.1"``, ``"12.2"``: same weights and ONNX files, another threshold).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from services.config import Settings, WorkerSettings
from services.data.node import NodeData
from services.protocol.scaling import Scaler
from services.data.windows import Reference
from services.model.detector import AnomalyDetector, DetectorSpec
from services.model.scoring import calibrate_threshold
from services.worker.calibrate import Calibrated, CalibrationJob, calibrate
from services.worker.gate import GateDecision, GateFigures, decide
from services.worker.serving import ModelSlot, ServedModel
from services.worker.state import ModelVersion, WorkerState, WorkerStore, version_order

log = logging.getLogger("fedad.worker")
REPORTED_FIGURES = ("f1", "far", "mar", "roc_auc", "pr_auc", "alarm_rate", "rows", "anomalies")


class UnknownVersion(LookupError):
    """No kept model has that version id."""


class PinnedElsewhere(Exception):
    """An admin pinned another version: unpin before serving a different one."""


class ModelShelf:
    def __init__(self, settings: Settings, worker: WorkerSettings, slot: ModelSlot, spec: DetectorSpec,
                 node_data: Callable[[], NodeData | None] = lambda: None,
                 calibrator: Callable[[CalibrationJob], Calibrated] = calibrate):
        self.settings = settings
        self.calibrator = calibrator  # the worker's: in a child process (services/worker/trainer.Trainer.calibrate)
        self.slot = slot
        self.spec = spec
        self.store = WorkerStore(worker.state_dir)
        self.keep = settings.models.keep
        self.rule = settings.models.gate
        self.node_data = node_data  # the node's rows as the loop loaded them last: held-out rows for the gate
        self.state: WorkerState | None = None
        self.last_error: str | None = None
        self._detectors: dict[str, AnomalyDetector] = {}  # opened sessions of kept versions, by id
        self._held_out: tuple[int, int, np.ndarray, np.ndarray | None] | None = None  # data id, scaler id, rows
        self._lock = threading.RLock()  # the loop installs while admin requests serve, pin and read

    # -- what the status page, the routes and the reports read ---------------------------------------------------
    @property
    def served_id(self) -> str | None:
        """The served version's id ("12", "12.1"); ``state.served_version`` is the version itself."""
        return self.state.served_id if self.state else None

    @property
    def served_precision(self) -> dict | None:
        """The served version's precision and why (services/model/precision.PrecisionChoice)."""
        served = self.state.served_version if self.state else None
        return served.precision if served else None

    @property
    def pinned_id(self) -> str | None:
        return self.state.pinned_id if self.state else None

    @property
    def served_round(self) -> int | None:
        return version_order(self.state.served_id)[0] if self.state and self.state.served_id else None

    @property
    def pinned_round(self) -> int | None:
        return version_order(self.state.pinned_id)[0] if self.state and self.state.pinned_id else None

    @property
    def latest_round(self) -> int | None:
        """The newest global round installed, served or not."""
        latest = self.state.latest if self.state else None
        return latest.round if latest else None

    @property
    def latest_weights(self) -> np.ndarray | None:
        latest = self.state.latest if self.state else None
        return latest.weights if latest else None

    @property
    def versions(self) -> list[dict]:
        """The kept versions, oldest first, shaped as services/protocol/messages.ModelVersionReport (plus the
        version id: round and recalibration)."""
        with self._lock:
            return [_report(v) for v in (self.state.versions if self.state else [])]

    def document(self) -> dict:
        """GET /v1/models and the ``models`` block of /v1/status."""
        with self._lock:
            state = self.state
            return {"served": self.served_id, "pinned": self.pinned_id, "served_round": self.served_round,
                    "precision": self.served_precision,
                    "pinned_round": self.pinned_round, "latest_round": self.latest_round, "keep": self.keep,
                    "gate": self.rule.model_dump(),
                    "versions": [_document(v, state) for v in state.versions] if state else []}

    # -- start and new federations ---------------------------------------------------------------------------------
    def restore(self) -> WorkerState | None:
        """Serve the persisted served version at once, before the aggregator is even reachable."""
        state = self.store.load(self.spec.n_params)
        if state is not None and state.spec_hash != self.spec.spec_hash:
            log.warning("persisted model has another architecture (%s); starting fresh", state.spec_hash)
            state = None
        if state is not None and not state.versions:
            state = None
        with self._lock:
            self.state = state
            served = state.served_version if state else None
            if state is not None and served is not None and self._open(served) is not None:
                self.slot.swap(ServedModel(self._detectors[served.id], served.round))
                log.info("resumed at model version %s (threshold %.5f, %d kept%s)", served.id, served.threshold,
                         len(state.versions), f", pinned {state.pinned_id}" if state.pinned_id else "")
        return self.state

    def forget(self) -> None:
        """The aggregator runs a new federation: this run's versions mean nothing there (another scaler, other
        weights). /detect keeps serving the old model until the new run's first one is installed."""
        with self._lock:
            self.state = None
            self._detectors.clear()

    # -- new versions ------------------------------------------------------------------------------------------------
    def install(self, run_id: str, scaler: Scaler, model_round: int, weights: np.ndarray, data: NodeData,
                local_loss: float | None = None) -> ModelVersion:
        """Export, quantise, calibrate (``calibrator``), evaluate, gate, persist, swap (if served)."""
        started = time.time()
        inputs, labels = self._held_out_rows(data, scaler)
        job = CalibrationJob(self.spec, np.asarray(weights, dtype=np.float32), data.default_reference(scaler),
                             data.windows(scaler, "train"), inputs, labels, self.settings.serving.model,
                             len(self.settings.data.features))
        calibrated = self.calibrator(job)
        detector = calibrated.detector(job)
        with self._lock:
            if self.state is None or self.state.run_id != run_id:
                self.state = WorkerState(run_id=run_id, scaler=scaler.model_dump(), spec_hash=self.spec.spec_hash)
                self._detectors.clear()
            version = ModelVersion(id=str(model_round), round=model_round, threshold=calibrated.threshold,
                                   served=calibrated.served, weights=weights, onnx_fp32=calibrated.onnx_fp32,
                                   onnx_int8=calibrated.onnx_int8, reference=job.reference.model_dump(),
                                   local_loss=local_loss, installed_at=round(time.time(), 3),
                                   precision=calibrated.precision, rows_graph=detector.rows_graph_)
            return self._admit(version, detector, inputs, labels, started)

    def recalibrate(self, recent_rows: np.ndarray | Sequence | None = None, *,
                    scores: np.ndarray | None = None) -> ModelVersion | None:
        """The served weights with a threshold from recent normal live rows (after drift), as a new version
        ``<round>.<n>`` through the same gate. ``recent_rows``: raw rows in feature order, one array or a list of
        contiguous segments (each scored on its own, its windows never spanning two), or ``(rows, reference_rows)``
        pairs for streams scaled by their own baseline; or ``scores``: the served model's scores of such rows as the
        stream table computed them (each stream with its own scaling; what drift hands over). None when nothing is
        served yet."""
        started = time.time()
        with self._lock:
            state = self.state
            base = state.served_version if state else None
            if state is None or base is None or self._open(base) is None:
                log.warning("recalibration asked for, but no model is served yet: skipped")
                return None
            served = self._detectors[base.id]
            if scores is None:
                scores = _scores(served, recent_rows)
            else:
                scores = np.asarray(scores, dtype=np.float64)
                scores = scores[np.isfinite(scores)]
            if len(scores) < 2:
                raise ValueError(f"recalibration needs recent normal rows with finite scores; got {len(scores)}")
            threshold = calibrate_threshold(scores, self.spec.threshold)
            counter = 1 + max(version_order(v.id)[1] for v in state.versions if v.round == base.round)
            spec = dataclasses.replace(self.spec, served=base.served)
            reference = served.reference_
            assert reference is not None  # _open() keeps only detectors it could give a reference scaling
            detector = AnomalyDetector.restore(spec, base.weights, base.onnx_fp32, base.onnx_int8, reference,
                                               threshold, base.rows_graph, build_graphs=False)
            version = dataclasses.replace(base, id=f"{base.round}.{counter}", threshold=threshold, status="kept",
                                          reason="", gate=None, evaluation=None, local_loss=None,
                                          installed_at=round(time.time(), 3), files=dict(base.files))
            log.info("recalibrating version %s on %d recent normal rows: threshold %.5f (was %.5f)", base.id,
                     len(scores), threshold, base.threshold)
            data = self.node_data()
            if data is None:
                inputs = labels = None
            else:
                inputs, labels = self._held_out_rows(data, Scaler(**state.scaler))
            return self._admit(version, detector, inputs, labels, started)

    def _admit(self, version: ModelVersion, detector: AnomalyDetector, inputs: np.ndarray | None,
               labels: np.ndarray | None, started: float) -> ModelVersion:
        """Evaluate, gate, keep (retiring the oldest), persist, and serve if it passed and nothing is pinned."""
        state = self._kept()
        if inputs is None:
            decision = GateDecision(False, "refused: no held-out rows loaded to compare it on")
        else:
            evaluation, scores = detector.evaluate(inputs, labels)
            version.evaluation = _json_safe(evaluation)
            assert detector.threshold_ is not None  # calibrated or restored: it has its threshold
            new = GateFigures.of(scores, detector.threshold_, labels)
            served = state.served_version
            current = None if served is None else self._open(served)  # the same id again: against itself
            old = None
            if current is not None:
                assert current.threshold_ is not None  # _open() restores a kept version with its threshold
                old = GateFigures.of(current.score_inputs(inputs), current.threshold_, labels)
            decision = decide(new, old, self.rule)
            version.gate = {**decision.as_dict(), "new": new.as_dict(), "served": old.as_dict() if old else None,
                            "against": served.id if served is not None and current else None}
        if not decision.passed:
            version.status, version.reason = "refused", decision.reason
        elif state.pinned_id is not None and state.pinned_id != version.id:
            version.status = "kept"
            version.reason = f"pinned to {state.pinned_id}: kept, not served ({decision.reason})"
        else:
            version.status, version.reason = "served", decision.reason
        state.versions = sorted([v for v in state.versions if v.id != version.id] + [version], key=lambda v: v.order)
        self._detectors[version.id] = detector
        if version.status == "served":
            self._mark_served(version, f"replaced by {version.id}")
        state.history.append({"round": version.round, "version": version.id, "local_loss": version.local_loss,
                              "threshold": version.threshold, "status": version.status,
                              **(version.evaluation or {})})
        self._retire()
        self._persist(f"version {version.id}")
        if version.status == "served":
            self.slot.swap(ServedModel(detector, version.round))
        self._close_unserved()
        what = (f"round {version.round}" if version.order[1] == 0
                else f"version {version.id} (round {version.round} recalibrated)")
        verdict = {"served": "served", "kept": "kept, not served", "refused": "REFUSED by the gate"}[version.status]
        (log.warning if version.status == "refused" else log.info)(
            "%s installed in %.1fs, %s: %s model, threshold %.5f, %s; %s", what, time.time() - started, verdict,
            version.served, version.threshold, _figures_text(version.evaluation), version.reason)
        return version

    # -- admin -------------------------------------------------------------------------------------------------------
    def serve(self, version_id: str, by: str = "admin") -> ModelVersion:
        """Roll back or forward to a kept version (even one the gate refused: the admin decides)."""
        with self._lock:
            version = self._find(version_id)
            pinned = self._kept().pinned_id
            if pinned is not None and pinned != version.id:
                raise PinnedElsewhere(f"version {pinned} is pinned: unpin it (DELETE /v1/admin/pin) "
                                      f"or pin {version.id} instead")
            self._serve(version, f"served on {by} request")
            self._persist(f"serving {version.id}")
            log.info("model version %s served on %s request", version.id, by)
            return version

    def pin(self, version_id: str, by: str = "admin") -> ModelVersion:
        """Serve ``version_id`` and keep serving it: newer models are kept, not served, until unpinned."""
        with self._lock:
            version = self._find(version_id)
            self._serve(version, f"pinned on {by} request")
            self._kept().pinned_id = version.id
            self._persist(f"pinning {version.id}")
            log.info("model version %s pinned on %s request", version.id, by)
            return version

    def unpin(self, by: str = "admin") -> str | None:
        """Newer models that pass the gate are served again; the one served now stays until then."""
        with self._lock:
            was = self.pinned_id
            if self.state is not None and was is not None:
                self.state.pinned_id = None
                self._persist("unpinning")
                log.info("model version %s unpinned on %s request", was, by)
            return was

    def _find(self, version_id: str) -> ModelVersion:
        version = self.state.version(str(version_id)) if self.state else None
        if version is None:
            kept = ", ".join(v.id for v in self.state.versions) if self.state else ""
            raise UnknownVersion(f"no kept model version {version_id} (kept: {kept or 'none'})")
        return version

    def _serve(self, version: ModelVersion, reason: str) -> None:
        detector = self._open(version)
        if detector is None:
            raise UnknownVersion(f"model version {version.id} has no reference scaling and cannot be served")
        if self._kept().served_id != version.id:
            gate = version.gate or {}
            refused = f" (the gate had refused it: {gate.get('reason')})" if version.status == "refused" else ""
            version.status, version.reason = "served", reason + refused
            self._mark_served(version, f"replaced by {version.id} ({reason})")
        self.slot.swap(ServedModel(detector, version.round))
        self._close_unserved()

    # -- helpers -----------------------------------------------------------------------------------------------------
    def _close_unserved(self) -> None:
        """Keep only the served version's session open: each onnxruntime session holds its own memory, and a small
        gateway should not carry ``models.keep`` of them. A kept version is opened again from its bytes when an
        admin serves it or a gate compares with it (a request in flight keeps its own reference)."""
        served = self.state.served_id if self.state is not None else None
        for version_id in [v for v in self._detectors if v != served]:
            del self._detectors[version_id]
    def _kept(self) -> WorkerState:
        """The state, where a version is at hand: install and recalibrate set or check it, _find raises without."""
        assert self.state is not None, "no model version kept"
        return self.state

    def _mark_served(self, version: ModelVersion, why_not_any_more: str) -> None:
        state = self._kept()
        previous = state.served_version
        if previous is not None and previous.id != version.id:
            previous.status, previous.reason = "kept", why_not_any_more
        state.served_id = version.id

    def _retire(self) -> None:
        """Beyond ``keep`` versions the oldest go, never the served or the pinned one."""
        state = self._kept()
        protected = {state.served_id, state.pinned_id}
        while len(state.versions) > self.keep:
            oldest = next((v for v in state.versions if v.id not in protected), None)
            if oldest is None:
                break
            state.versions.remove(oldest)
            self._detectors.pop(oldest.id, None)
            log.info("model version %s retired (models.keep %d)", oldest.id, self.keep)

    def _persist(self, what: str) -> None:
        state = self._kept()
        try:
            self.store.save(state)
            self.last_error = None
        except OSError as exc:  # full or read-only state disk: serve from memory, a restart falls back
            self.last_error = f"cannot persist {what} to {self.store.dir}: {exc.strerror or exc}"
            log.error("%s; serving from memory, a restart falls back to the last persisted state", self.last_error)

    def _open(self, version: ModelVersion) -> AnomalyDetector | None:
        """The kept version as it was calibrated (a session is opened once per version)."""
        if version.id in self._detectors:
            return self._detectors[version.id]
        reference = (Reference(**version.reference) if version.reference
                     else self.spec.prep.reference(None, Scaler(**self._kept().scaler))
                     if self.spec.prep.baseline == "federation" else None)
        if reference is None:  # persisted by a version without references: rebuilt once local data is loaded
            log.warning("model version %s has no reference scaling: not served until the next round is installed",
                        version.id)
            return None
        spec = dataclasses.replace(self.spec, served=version.served)
        self._detectors[version.id] = AnomalyDetector.restore(spec, version.weights, version.onnx_fp32,
                                                              version.onnx_int8, reference, version.threshold,
                                                              version.rows_graph, build_graphs=False)
        return self._detectors[version.id]

    def _held_out_rows(self, data: NodeData, scaler: Scaler) -> tuple[np.ndarray, np.ndarray | None]:
        """The node's held-out model inputs and labels, computed once per loaded data and scaler."""
        key = (id(data), hash(scaler.model_dump_json()))
        if self._held_out is None or self._held_out[:2] != key:
            self._held_out = (*key, data.windows(scaler, "held_out"), data.held_out_labels())
        return self._held_out[2], self._held_out[3]


def _scores(detector: AnomalyDetector, recent) -> np.ndarray:
    segments = [recent] if isinstance(recent, np.ndarray) else list(recent)
    parts = []
    for segment in segments:
        rows, reference_rows = segment if isinstance(segment, tuple) else (segment, None)
        rows = np.asarray(rows, dtype=np.float32)
        if len(rows):
            parts.append(detector.decision_function(rows, reference_rows))
    scores = np.concatenate(parts) if parts else np.empty(0, np.float32)
    return scores[np.isfinite(scores)]


def _report(version: ModelVersion) -> dict:
    """A version as services/protocol/messages.ModelVersionReport: flat, finite figures."""
    evaluation = version.evaluation or {}
    figures = {k: evaluation[k] for k in REPORTED_FIGURES if k in evaluation}
    gate = version.gate or {}
    new = gate.get("new") or {}
    figures.update(threshold=version.threshold, recalibration=version_order(version.id)[1],
                   normal_alarm_rate=new.get("normal_alarm_rate"), normal_mean_score=new.get("normal_mean_score"),
                   installed_at=version.installed_at)
    return {"round": version.round, "version": version.id, "status": version.status, "reason": version.reason[:500],
            "figures": {k: v for k, v in figures.items() if v is None or isinstance(v, (int, float, bool))}}


def _document(version: ModelVersion, state: WorkerState) -> dict:
    return {**_report(version), "model": version.served, "precision": version.precision,
            "threshold": version.threshold,
            "served": version.id == state.served_id, "pinned": version.id == state.pinned_id,
            "installed_at": version.installed_at, "local_loss": version.local_loss,
            "evaluation": version.evaluation, "gate": version.gate}


def _json_safe(value):
    """NaN and infinity (a blown-up model's scores) as null: JSON has neither."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _figures_text(evaluation: dict | None) -> str:
    if not evaluation:
        return "not evaluated"
    if evaluation.get("labels"):
        return (f"held-out F1 {evaluation.get('f1')} FAR {evaluation.get('far')}% MAR {evaluation.get('mar')}%")
    return f"no labels: held-out alarm rate {evaluation.get('alarm_rate')}%"
