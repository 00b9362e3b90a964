"""The detector object: what a trained edge node *is* — preprocessing, autoencoder, threshold, served session.

Shaped like scikit-learn / PyOD estimators: parameters in the constructor (a ``DetectorSpec`` built from config),
learned state in trailing-underscore attributes (``weights_``, ``reference_``, ``threshold_``, ``decision_scores_``),
``fit`` / ``decision_function`` / ``predict``. Federation sees only ``get_weights`` / ``set_weights``. The worker,
the evaluation and the benchmarks all go through this class, so what is evaluated is what is served.

The steps, each usable alone (the worker runs them one federated round at a time):
- ``partial_fit(inputs, plan, seed)``: local training from the current weights (torch, imported only here);
- ``calibrate(train_inputs)``: the fp32 ONNX graph (dense: built from the weights with onnx alone,
  services/model/graph.py; other kinds: torch's exporter), static int8 quantisation on an even sample of the node's
  own normal inputs (services/model/quantize.py, no torch), a session of the served kind, and ``threshold_`` from
  that very session's scores of those inputs;
- ``decision_function(rows)`` / ``score_inputs(inputs)`` / ``predict(rows)``: scores and flags.

Serving never needs torch: a dense detector is calibrated, restored and scored with numpy + onnx + onnxruntime.
Raw rows take one of two paths, chosen in ``decision_function`` by ``GRAPH_MIN_ROWS`` alone: a single row goes
through the numpy ``InputPipeline`` (an affine shortcut) and the autoencoder session; two rows or more go through one
session with the preprocessing inside the graph (services/model/preprocess_graph.py, the reference fed per call).
Both give the same scores within float32 rounding (tests/model/test_detector_paths.py).
"""

from __future__ import annotations

import tempfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from services.config import INT8_REFUSED, Settings, ThresholdSettings
from services.data.windows import InputPipeline, Preprocessing, Reference
from services.model.layout import Architecture
from services.model.metrics import detection_metrics
from services.model.graph_feeds import RAW_INPUT_NAME, reference_feeds
from services.model.scoring import (
    ERROR_NAME,
    INPUT_NAME,
    SCORE_NAME,
    calibrate_threshold,
    make_session,
    t2_parameters,
    with_t2,
)
from services.protocol.messages import TrainingPlan

SCORE_OUTPUT = [SCORE_NAME]
CALIBRATION_ROWS = 2000  # int8 activation ranges: an even sample of the node's own training inputs
# Rows per call from which raw rows are scored by the in-graph session. Measured on SKAB, default config, int8, one
# thread (CPU µs per call, numpy pipeline + model session vs in-graph session): 1 row 19 vs 47 (numpy's one-row
# shortcut), 2 rows 71 vs 45, 64 rows 88 vs 51, 1024 rows 469 vs 221.
GRAPH_MIN_ROWS = 2


class NotFittedError(ValueError, AttributeError):
    """Scores asked of a detector that is not fitted: no served session, reference scaling or threshold yet
    (scikit-learn's and PyOD's name and bases, so callers catching either keep working)."""


def _unfitted(needs: str, method: str) -> NotFittedError:
    return NotFittedError(f"this AnomalyDetector has no {needs} yet: fit it, or calibrate or restore it, before "
                          f"calling {method}")


def node_seed(base_seed: int, node_id: str) -> int:
    """Each node's training seed: the federation's seed + crc32(node id); round r trains with node_seed + r."""
    return base_seed + zlib.crc32(node_id.encode())


@dataclass(frozen=True)
class DetectorSpec:
    """The detector's parameters: how rows become inputs, the autoencoder (its kind and that kind's sizes), the
    threshold rule and which model is served (int8 or fp32)."""

    prep: Preprocessing
    hidden: tuple[int, ...]  # dense: hidden layer sizes
    threshold: ThresholdSettings
    served: str = "int8"  # int8 | fp32: the session opened (serving.model auto: services/model/precision.py)
    seed: int = 0
    kind: str = "dense"  # dense | conv1d | lstm (services/model/layout.py)
    conv_channels: tuple[int, ...] = ()  # conv1d: channels per stride-2 encoder layer
    kernel: int = 0  # conv1d: kernel length
    lstm_hidden: int = 0  # lstm: state size
    score: str = "error"  # error | error_and_t2 (services/model/scoring.py)

    @classmethod
    def from_settings(cls, settings: Settings) -> "DetectorSpec":
        model = settings.model
        served = settings.serving.model
        if served == "auto":  # calibrated as int8 first; the node's measurement decides (precision.py)
            served = "fp32" if model.kind in INT8_REFUSED else "int8"
        return cls(Preprocessing.from_settings(settings.data), tuple(model.hidden_sizes), settings.threshold,
                   served, model.seed, model.kind, tuple(model.conv1d.channels), model.conv1d.kernel,
                   model.lstm.hidden, model.score)

    @property
    def architecture(self) -> Architecture:
        if self.kind == "dense":
            return Architecture.dense(self.width, self.hidden)
        if self.prep.stats:
            raise ValueError(f"a {self.kind} model reads raw windows, not window statistics {list(self.prep.stats)}")
        return Architecture(self.kind, self.width, channels=self.prep.channels,
                            conv_channels=self.conv_channels if self.kind == "conv1d" else (),
                            kernel=self.kernel if self.kind == "conv1d" else 0,
                            lstm_hidden=self.lstm_hidden if self.kind == "lstm" else 0)

    @property
    def width(self) -> int:
        return self.prep.width

    @property
    def spec_hash(self) -> str:
        return self.architecture.spec_hash

    @property
    def n_params(self) -> int:
        return self.architecture.n_params


class AnomalyDetector:
    """One node's detector. Build a fresh one per installed model: a served detector is not changed afterwards, so
    a request always sees one consistent session, reference and threshold."""

    def __init__(self, spec: DetectorSpec, weights: np.ndarray | None = None):
        self.spec = spec
        self.weights_ = spec.architecture.initial_weights(spec.seed) if weights is None else weights
        self.reference_: Reference | None = None
        self.threshold_: float | None = None
        self.decision_scores_: np.ndarray | None = None  # scores of the calibration (training) inputs
        self.onnx_fp32_: bytes | None = None
        self.onnx_int8_: bytes | None = None
        self.session_ = None
        self.pipeline_: InputPipeline | None = None
        self._raw_sessions: dict[int, object] = {}  # in-graph sessions by raw row width (built on first use)
        self.rows_graph_: tuple[int, bytes] | None = None  # (raw row width, in-graph model) made elsewhere
        self.builds_graphs = True  # False: only ``rows_graph_`` is served, no graph is built here (no onnx package)
        self._feeds: dict[str, np.ndarray] = {}  # ``reference_`` as that session's reference inputs

    # -- the federated surface -----------------------------------------------------------------------------------
    def get_weights(self) -> np.ndarray:
        return self.weights_

    def set_weights(self, weights: np.ndarray) -> "AnomalyDetector":
        weights = np.asarray(weights, dtype=np.float32)
        if weights.size != self.spec.n_params:
            raise ValueError(f"weight vector has {weights.size} values, the model has {self.spec.n_params}")
        self.weights_ = weights
        return self

    # -- training --------------------------------------------------------------------------------------------------
    def partial_fit(self, inputs: np.ndarray, plan: TrainingPlan, seed: int, epochs: int | None = None,
                    on_epoch=None):
        """``plan.local_epochs`` (or ``epochs``) of local training from the current weights; returns TrainResult.
        The worker's training process trains through the same function (services/model/training.train_weights)."""
        from services.model.training import train_weights

        self.weights_, result = train_weights(self.spec.architecture, self.weights_, inputs, plan.model_dump(), seed,
                                              epochs, on_epoch)
        return result

    def fit(self, rows: np.ndarray, plan: TrainingPlan, epochs: int | None = None) -> "AnomalyDetector":
        """Standalone use, one run of normal rows: its own reference, training from the current weights,
        calibration on the same rows."""
        self.reference_ = self.spec.prep.reference(rows if self.spec.prep.baseline == "run" else None,
                                                   None if self.spec.prep.baseline == "run" else _own_scaler(rows))
        inputs = self.spec.prep.inputs(rows, self.reference_)
        self.partial_fit(inputs, plan, self.spec.seed, epochs)
        return self.calibrate(inputs, self.reference_)

    def calibrate(self, train_inputs: np.ndarray, reference: Reference | None = None,
                  workdir: Path | None = None, onnx_fp32: bytes | None = None) -> "AnomalyDetector":
        """The fp32 graph (``onnx_fp32`` when given, e.g. exported by a training process, else ``fp32_graph``),
        int8 of it quantised on the node's own normal inputs, the served session, and ``threshold_`` from that
        session's scores of those inputs (quantisation moves the scores of normal rows)."""
        from services.model.quantize import quantize_int8

        self.onnx_fp32_ = onnx_fp32 if onnx_fp32 is not None else self.fp32_graph()
        take = np.linspace(0, len(train_inputs) - 1, min(CALIBRATION_ROWS, len(train_inputs)), dtype=int)
        with tempfile.TemporaryDirectory(dir=workdir) as work:
            self.onnx_int8_ = quantize_int8(self.onnx_fp32_, train_inputs[take], Path(work))
        if self.spec.score == "error_and_t2":  # the same centre and scales in both files
            errors = make_session(self.onnx_fp32_).run([SCORE_NAME], {INPUT_NAME: np.ascontiguousarray(
                train_inputs, dtype=np.float32)})[0]
            parameters = t2_parameters(train_inputs, errors)
            self.onnx_fp32_, self.onnx_int8_ = with_t2(self.onnx_fp32_, parameters), with_t2(self.onnx_int8_,
                                                                                              parameters)
        self._open(self.served_onnx, reference if reference is not None else self.reference_)
        self._set_threshold(train_inputs)
        return self

    def fp32_graph(self) -> bytes:
        """The fp32 autoencoder as ONNX: built from the weights without torch for the dense kind; the other kinds
        have no such builder and go through torch's exporter (imported only then)."""
        if self.spec.kind == "dense":
            from services.model.graph import autoencoder_graph

            return autoencoder_graph(self.weights_, self.spec.width, list(self.spec.hidden))
        from services.model.autoencoder import build_autoencoder, set_flat_weights
        from services.model.onnx_export import export_onnx

        model = build_autoencoder(self.spec)
        set_flat_weights(model, self.weights_)
        return export_onnx(model, self.spec.width)

    @classmethod
    def restore(cls, spec: DetectorSpec, weights: np.ndarray, onnx_fp32: bytes, onnx_int8: bytes,
                reference: Reference, threshold: float, rows_graph: tuple[int, bytes] | None = None,
                build_graphs: bool = True) -> "AnomalyDetector":
        """A detector calibrated before (persisted state), served again without recalibration. ``rows_graph``:
        (raw row width, the served model with the preprocessing in front) made by the process that calibrated it;
        ``build_graphs`` False: build no graph here (a serving process without the ``onnx`` package), rows of any
        other width are scored through the numpy pipeline."""
        detector = cls(spec, weights)
        detector.onnx_fp32_, detector.onnx_int8_, detector.threshold_ = onnx_fp32, onnx_int8, threshold
        detector._open(detector.served_onnx, reference)
        detector.rows_graph_, detector.builds_graphs = rows_graph, build_graphs
        return detector

    def served_as(self, served: str, train_inputs: np.ndarray) -> "AnomalyDetector":
        """The same exported models served as ``served`` (int8 or fp32), its threshold calibrated on the same
        inputs: the evaluation compares both."""
        other = AnomalyDetector(replace(self.spec, served=served), self.weights_)
        other.onnx_fp32_, other.onnx_int8_ = self.onnx_fp32_, self.onnx_int8_
        other._open(other.served_onnx, self.reference_)
        other._set_threshold(train_inputs)
        return other

    def choose_precision(self, setting: str, train_inputs: np.ndarray, held_inputs: np.ndarray | None,
                         labels: np.ndarray | None):
        """This calibrated model served as int8 or fp32 (``serving.model``: auto measures both on the node's held-out
        rows, services/model/precision.py): the detector to serve and the PrecisionChoice that says why."""
        from services.model.precision import choose

        both = {p: self if self.spec.served == p else self.served_as(p, train_inputs) for p in ("int8", "fp32")}
        held = np.empty((0, self.spec.width), np.float32) if held_inputs is None else held_inputs
        scores = {p: d.score_inputs(held) if len(held) else np.empty(0, np.float32) for p, d in both.items()}
        choice = choose(setting, self.spec.kind, scores, {p: d.threshold_ for p, d in both.items()},
                        labels if held_inputs is not None else None)
        return both[choice.served], choice

    def _set_threshold(self, train_inputs: np.ndarray) -> None:
        self.decision_scores_ = self.score_inputs(train_inputs)
        self.threshold_ = calibrate_threshold(self.decision_scores_, self.spec.threshold)

    def _open(self, onnx_bytes: bytes, reference: Reference | None) -> None:
        self.session_ = make_session(onnx_bytes)
        self.reference_ = reference
        self.pipeline_ = InputPipeline(self.spec.prep, reference) if reference is not None else None
        self._raw_sessions = {}
        self._feeds = reference_feeds(self.spec.prep, reference) if reference is not None else {}

    def raw_session(self, n_features: int):
        """The served model with the preprocessing in front (services/model/preprocess_graph.served_graph): raw rows
        of ``n_features`` values and the reference as inputs, scores out. Opened once per width from ``rows_graph_``
        or built here (~10 ms); None when neither is possible (``builds_graphs`` False)."""
        session = self._raw_sessions.get(n_features)
        if session is None:
            if self.rows_graph_ is not None and self.rows_graph_[0] == n_features:
                graph = self.rows_graph_[1]
            elif self.builds_graphs:
                from services.model.preprocess_graph import served_graph

                graph = served_graph(self.served_onnx, self.spec.prep, None, n_features)
            else:
                return None
            session = make_session(graph)
            self._raw_sessions[n_features] = session
        return session

    @property
    def served_onnx(self) -> bytes:
        return self.onnx_int8_ if self.spec.served == "int8" else self.onnx_fp32_

    # -- scoring ---------------------------------------------------------------------------------------------------
    def inputs(self, rows: np.ndarray, reference_rows: np.ndarray | None = None) -> np.ndarray:
        """Raw sensor rows (consecutive, in feature order) → model inputs, one per row. With ``reference_rows``
        (``run`` baseline) the rows are scaled by them and windows reach back into them."""
        if reference_rows is None or self.spec.prep.baseline != "run":
            if self.pipeline_ is None:
                raise _unfitted("reference scaling", "inputs")
            return self.pipeline_(rows)
        pipeline = InputPipeline(self.spec.prep, self.spec.prep.reference(reference_rows, None))
        return pipeline(np.concatenate([reference_rows, rows]))[len(reference_rows):]

    def score_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Scores of ready model inputs: per-row mean squared reconstruction error (float32), computed inside the
        session (services/model/scoring.with_score_output)."""
        if self.session_ is None:
            raise _unfitted("served session", "score_inputs")
        return self.session_.run(SCORE_OUTPUT, {INPUT_NAME: np.ascontiguousarray(inputs, dtype=np.float32)})[0]

    def decision_function(self, rows: np.ndarray, reference_rows: np.ndarray | None = None) -> np.ndarray:
        """Scores of raw rows; fewer than ``GRAPH_MIN_ROWS`` through the numpy pipeline and the model session, more
        through the in-graph session (the one place that rule lives)."""
        if self.session_ is None:
            raise _unfitted("served session", "decision_function")
        run_baseline = reference_rows is not None and self.spec.prep.baseline == "run"
        if self.reference_ is None and not run_baseline:
            raise _unfitted("reference scaling (and no reference rows came with the rows)", "decision_function")
        session = self.raw_session(np.shape(rows)[1]) if len(rows) >= GRAPH_MIN_ROWS or run_baseline else None
        if session is None:
            return self.score_inputs(self.inputs(rows, reference_rows))
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if not run_baseline:
            return session.run(SCORE_OUTPUT, {RAW_INPUT_NAME: rows, **self._feeds})[0]
        feeds = reference_feeds(self.spec.prep, self.spec.prep.reference(reference_rows, None))
        both = np.concatenate([np.asarray(reference_rows, dtype=np.float32), rows])
        return session.run(SCORE_OUTPUT, {RAW_INPUT_NAME: both, **feeds})[0][len(reference_rows):]

    def contributions(self, inputs: np.ndarray) -> np.ndarray:
        """Each model channel's share of each row's reconstruction error: (rows, channels) in the order of
        ``spec.prep.columns`` (config's ``data.model_columns``), each row summing to 1. An input belongs to channel
        ``j % channels`` — window statistics come in blocks of one statistic per channel, flattened windows in rows
        of one value per channel — so a channel's share is the sum of its inputs' squared errors (the session's
        ``error`` output, the terms the score averages) over the row's total. Asked for separately, so scoring
        alone stays as fast as before."""
        if self.session_ is None:
            raise _unfitted("served session", "contributions")
        errors = self.session_.run([ERROR_NAME], {INPUT_NAME: np.ascontiguousarray(inputs, dtype=np.float32)})[0]
        channels = self.spec.prep.channels
        per_channel = errors.astype(np.float64).reshape(len(errors), -1, channels).sum(axis=1)
        total = per_channel.sum(axis=1, keepdims=True)
        even = np.full_like(per_channel, 1.0 / channels)  # a row reconstructed exactly: no channel stands out
        return np.divide(per_channel, total, out=even, where=total > 0)

    def is_anomaly(self, scores: np.ndarray) -> np.ndarray:
        """The one place a score becomes a verdict."""
        if self.threshold_ is None:
            raise _unfitted("threshold", "is_anomaly")
        return np.asarray(scores) > self.threshold_

    def predict(self, rows: np.ndarray, reference_rows: np.ndarray | None = None) -> np.ndarray:
        return self.is_anomaly(self.decision_function(rows, reference_rows))

    def evaluate(self, inputs: np.ndarray, labels: np.ndarray | None) -> tuple[dict, np.ndarray]:
        """Held-out figures and scores. Without labels there is no F1: the alarm rate and score spread instead."""
        scores = self.score_inputs(inputs)
        flags = self.is_anomaly(scores)
        if labels is None:
            return {"labels": False, "rows": int(len(scores)), "alarm_rate": round(100 * float(flags.mean()), 2)
                    if len(scores) else 0.0,
                    "score_p50": float(np.median(scores)) if len(scores) else None,
                    "score_p99": float(np.quantile(scores, 0.99)) if len(scores) else None}, scores
        return {"labels": True, **detection_metrics(labels, flags, scores)}, scores


def _own_scaler(rows: np.ndarray):
    from services.protocol.scaling import FeatureStats

    return FeatureStats.from_rows(rows).scaler()
