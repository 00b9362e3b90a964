"""The steps between weights and a served detector, shared by the worker service and the evaluation so that both run
the same code: one local training round, ONNX export + static int8 quantisation, threshold calibration on the
served model's own scores, and held-out evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.config import Settings
from services.model.autoencoder import build_autoencoder, get_flat_weights, set_flat_weights
from services.model.metrics import detection_metrics
from services.model.onnx_export import export_onnx, quantize_int8
from services.model.scoring import calibrate_threshold, make_session, session_scores
from services.model.training import TrainResult, train_local

CALIBRATION_ROWS = 2000  # int8 activation ranges: an even sample of the node's own training inputs


def train_round(settings: Settings, inputs: np.ndarray, start_weights: np.ndarray, seed: int,
                epochs: int | None = None, on_epoch=None) -> tuple[np.ndarray, TrainResult]:
    """One node's local training from ``start_weights``: ``model.local_epochs`` epochs (or ``epochs``)."""
    plan = settings.model
    model = build_autoencoder(settings.input_width, plan.hidden)
    set_flat_weights(model, start_weights)
    result = train_local(model, inputs, epochs or plan.local_epochs, plan.batch_size, plan.learning_rate, seed=seed,
                         fedprox_mu=settings.federation.fedprox_mu, on_epoch=on_epoch)
    return get_flat_weights(model), result


def export_models(settings: Settings, weights: np.ndarray, train_inputs: np.ndarray,
                  workdir: Path) -> tuple[bytes, bytes]:
    """fp32 ONNX and its static int8 version calibrated on an even sample of the node's training inputs."""
    model = build_autoencoder(settings.input_width, settings.model.hidden)
    set_flat_weights(model, weights)
    fp32 = export_onnx(model, settings.input_width)
    take = np.linspace(0, len(train_inputs) - 1, min(CALIBRATION_ROWS, len(train_inputs)), dtype=int)
    return fp32, quantize_int8(fp32, train_inputs[take], workdir)


@dataclass
class Calibrated:
    session: ort.InferenceSession
    threshold: float


def calibrate(onnx_bytes: bytes, train_inputs: np.ndarray, settings: Settings) -> Calibrated:
    """The alarm limit from the scores of the very model that will be served, on the node's normal rows."""
    session = make_session(onnx_bytes)
    return Calibrated(session, calibrate_threshold(session_scores(session, train_inputs), settings.threshold))


def evaluate(detector: Calibrated, held_out: np.ndarray, labels: np.ndarray) -> tuple[dict, np.ndarray]:
    """SKAB figures on the held-out rows, and their scores."""
    scores = session_scores(detector.session, held_out)
    return detection_metrics(labels, scores > detector.threshold, scores), scores
