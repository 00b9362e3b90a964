"""The detector object on real SKAB runs: fit / decision_function / predict, the federated surface, a restored
detector scoring like the calibrated one, and unlabelled data reported as such (never as F1 0)."""

import dataclasses

import numpy as np
import pytest

from services.config import load_settings
from services.data.node import NodeData
from services.protocol.scaling import FeatureStats
from services.data.sources import load_node
from services.model.detector import AnomalyDetector, DetectorSpec, NotFittedError, node_seed
from services.protocol.messages import TrainingPlan

SETTINGS = load_settings(environ={})
SPEC = DetectorSpec.from_settings(SETTINGS)
PLAN = TrainingPlan.from_settings(SETTINGS)


@pytest.fixture(scope="module")
def node() -> NodeData:
    return load_node(SETTINGS, SETTINGS.worker("valve2"))


@pytest.fixture(scope="module")
def calibrated(node):
    scaler = FeatureStats.from_rows(node.train_raw()).scaler()
    detector = AnomalyDetector(SPEC)
    detector.partial_fit(node.windows(scaler, "train"), PLAN, seed=1, epochs=20)
    return detector.calibrate(node.windows(scaler, "train"), node.default_reference(scaler)), scaler


def test_fit_on_one_run_flags_its_fault_and_not_its_normal_start(node):
    run = node.runs[0]
    train, rest = run.values[:400], run.values[400:]
    detector = AnomalyDetector(SPEC).fit(train, PLAN, epochs=30)
    assert detector.threshold_ > 0 and detector.decision_scores_.shape == (400,)
    flags = detector.predict(rest, reference_rows=train)
    labels = run.labels[400:].astype(bool)
    assert flags[labels].mean() > 2 * flags[~labels].mean(), "anomalous rows are flagged far more than normal ones"


def test_an_unfitted_detector_says_so_before_it_scores(node):
    """PyOD and scikit-learn raise NotFittedError; ours does too (a ValueError and an AttributeError, as theirs),
    naming what is missing and the method asked, instead of a TypeError from deep inside."""
    fresh = AnomalyDetector(SPEC)
    rows = node.runs[0].values[:5]
    for call, missing in ((lambda: fresh.decision_function(rows), "served session"),
                          (lambda: fresh.decision_function(rows[:1]), "served session"),
                          (lambda: fresh.predict(rows), "served session"),
                          (lambda: fresh.score_inputs(np.zeros((2, SPEC.width), np.float32)), "served session"),
                          (lambda: fresh.is_anomaly(np.zeros(2)), "threshold"),
                          (lambda: fresh.inputs(rows), "reference scaling")):
        with pytest.raises(NotFittedError, match=f"no {missing} yet: fit it") as raised:
            call()
        assert isinstance(raised.value, ValueError) and isinstance(raised.value, AttributeError)


def test_weights_are_the_only_federated_surface(node):
    a = AnomalyDetector(SPEC)
    assert a.get_weights().shape == (SPEC.n_params,)
    before = a.get_weights().copy()
    scaler = FeatureStats.from_rows(node.train_raw()).scaler()
    a.partial_fit(node.windows(scaler, "train"), PLAN, seed=node_seed(0, "valve2"))
    assert not np.array_equal(before, a.get_weights()), "training moves the weights"
    b = AnomalyDetector(SPEC).set_weights(a.get_weights())
    np.testing.assert_array_equal(a.get_weights(), b.get_weights())
    with pytest.raises(ValueError, match="the model has"):
        b.set_weights(np.zeros(SPEC.n_params + 1, np.float32))


def test_a_restored_detector_scores_and_flags_like_the_calibrated_one(calibrated, node):
    detector, scaler = calibrated
    restored = AnomalyDetector.restore(SPEC, detector.get_weights(), detector.onnx_fp32_, detector.onnx_int8_,
                                       detector.reference_, detector.threshold_)
    rows = node.runs[1].values[400:]
    np.testing.assert_array_equal(restored.decision_function(rows), detector.decision_function(rows))
    np.testing.assert_array_equal(restored.predict(rows), detector.predict(rows))


def test_int8_and_fp32_served_from_the_same_export_decide_alike(calibrated, node):
    detector, scaler = calibrated
    train = node.windows(scaler, "train")
    fp32 = detector.served_as("fp32", train)
    assert detector.spec.served == "int8" and fp32.spec.served == "fp32"
    held = node.windows(scaler, "held_out")
    agree = np.mean(detector.is_anomaly(detector.score_inputs(held)) == fp32.is_anomaly(fp32.score_inputs(held)))
    assert agree > 0.97


def test_evaluation_without_labels_reports_alarm_rates_not_f1(calibrated, node):
    detector, scaler = calibrated
    held = node.windows(scaler, "held_out")
    unlabelled = NodeData([dataclasses.replace(r, labels=None) for r in node.runs], node.prep, node.selection)
    assert not unlabelled.labelled and unlabelled.held_out_labels() is None
    figures, scores = detector.evaluate(held, unlabelled.held_out_labels())
    assert figures["labels"] is False and "f1" not in figures
    assert figures["alarm_rate"] == pytest.approx(100 * np.mean(scores > detector.threshold_), abs=0.01)
    labelled, _ = detector.evaluate(held, node.held_out_labels())
    assert labelled["labels"] is True and labelled["f1"] > 0.5
