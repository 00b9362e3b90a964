"""Turning global weights into a servable model, away from the process that serves: the fp32 ONNX graph, int8
quantised on the node's own normal inputs, the threshold of each precision, the choice between them
(``serving.model``, services/model/precision.py) and the graphs a session runs, score outputs included.

This needs the ``onnx`` package and ``onnxruntime.quantization`` (and torch to export the conv1d and lstm kinds);
serving needs neither. So the worker runs ``calibrate`` in a short-lived child per installed model
(services/worker/trainer.Trainer.calibrate, ``python -m services.worker.train_round``), whose memory goes with it,
and opens the finished bytes with onnxruntime alone (tests/worker/test_serving_floor.py reads the worker's memory
map). ``calibrate`` called in-process gives the same result, for tools and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from services.data.windows import Reference
from services.model.detector import AnomalyDetector, DetectorSpec


@dataclass(frozen=True)
class CalibrationJob:
    spec: DetectorSpec
    weights: np.ndarray
    reference: Reference  # the node's default scaling of /detect rows
    train: np.ndarray  # the node's normal training inputs: int8 scales and thresholds
    held_out: np.ndarray | None  # held-out inputs and labels: the precision check
    labels: np.ndarray | None
    setting: str  # serving.model: auto | int8 | fp32
    n_features: int  # raw row width (data.features): the graph with the preprocessing in front takes these


@dataclass(frozen=True)
class Calibrated:
    served: str  # int8 | fp32
    threshold: float
    precision: dict  # services/model/precision.PrecisionChoice.as_dict()
    onnx_fp32: bytes  # both with their score outputs (services/model/scoring.session_ready)
    onnx_int8: bytes
    rows_graph: bytes  # the served one with the preprocessing in front, for raw rows of ``n_features``

    def detector(self, job: CalibrationJob) -> AnomalyDetector:
        """The served detector, opened from these bytes with onnxruntime alone."""
        return AnomalyDetector.restore(replace(job.spec, served=self.served), job.weights, self.onnx_fp32,
                                       self.onnx_int8, job.reference, self.threshold,
                                       rows_graph=(job.n_features, self.rows_graph), build_graphs=False)


def calibrate(job: CalibrationJob) -> Calibrated:
    from services.model.preprocess_graph import served_graph
    from services.model.scoring import session_ready

    detector = AnomalyDetector(job.spec, job.weights).calibrate(job.train, job.reference)
    detector, choice = detector.choose_precision(job.setting, job.train, job.held_out, job.labels)
    assert detector.threshold_ is not None and detector.onnx_fp32_ is not None and detector.onnx_int8_ is not None
    rows = served_graph(detector.served_onnx, job.spec.prep, None, job.n_features)
    return Calibrated(choice.served, float(detector.threshold_), choice.as_dict(), session_ready(detector.onnx_fp32_),
                      session_ready(detector.onnx_int8_), session_ready(rows))
