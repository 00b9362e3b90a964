"""serving.model auto: a node serves int8 only where its own held-out rows say int8 ranks them as fp32 does."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from services.protocol.scaling import FeatureStats
from services.evaluation.runner import load_nodes
from services.evaluation.unseen import dataset_settings
from services.model.detector import AnomalyDetector, DetectorSpec
from services.model.metrics import roc_auc
from services.model.precision import AUC_TOLERANCE, choose, spearman
from services.protocol.messages import TrainingPlan

RNG = np.random.default_rng(0)
LABELS = (RNG.random(2000) < 0.2).astype(int)
GOOD = LABELS * 2.0 + RNG.normal(0, 1, 2000)  # ranks faults well


def test_with_labels_int8_is_served_only_within_the_tolerance():
    close = GOOD + RNG.normal(0, 0.01, 2000)
    chosen = choose("auto", "dense", {"int8": close, "fp32": GOOD}, {"int8": 1.0, "fp32": 1.0}, LABELS)
    assert chosen.served == "int8" and chosen.roc_auc_int8 >= chosen.roc_auc_fp32 - AUC_TOLERANCE
    assert f"int8 ROC-AUC {chosen.roc_auc_int8:.4f} vs fp32 {chosen.roc_auc_fp32:.4f}" in chosen.reason
    noisy = GOOD + RNG.normal(0, 1.0, 2000)
    chosen = choose("auto", "dense", {"int8": noisy, "fp32": GOOD}, {"int8": 1.0, "fp32": 1.0}, LABELS)
    assert chosen.served == "fp32" and "more than 0.005 below" in chosen.reason


def test_without_labels_rank_agreement_and_alarm_rates_decide():
    same = choose("auto", "dense", {"int8": GOOD * 1.001, "fp32": GOOD}, {"int8": 1.0, "fp32": 1.0}, None)
    assert same.served == "int8" and same.rank_agreement > 0.999 and same.roc_auc_int8 is None
    shuffled = choose("auto", "dense", {"int8": RNG.permutation(GOOD), "fp32": GOOD}, {"int8": 1.0, "fp32": 1.0},
                      None)
    assert shuffled.served == "fp32" and "no labels" in shuffled.reason
    more_alarms = choose("auto", "dense", {"int8": GOOD, "fp32": GOOD}, {"int8": 0.9, "fp32": 1.0}, None)
    assert more_alarms.served == "fp32"  # the same ranking, but int8's own threshold alarms on more rows


def test_forced_precisions_and_kinds_without_int8_still_report_the_figures():
    noisy = GOOD + RNG.normal(0, 1.0, 2000)
    forced = choose("int8", "dense", {"int8": noisy, "fp32": GOOD}, {"int8": 1.0, "fp32": 1.0}, LABELS)
    assert forced.served == "int8" and "forced by serving.model" in forced.reason and forced.roc_auc_fp32 > 0.8
    lstm = choose("auto", "lstm", {"int8": GOOD, "fp32": GOOD}, {"int8": 1.0, "fp32": 1.0}, LABELS)
    assert lstm.served == "fp32" and "lstm" in lstm.reason
    empty = choose("auto", "dense", {"int8": np.empty(0), "fp32": np.empty(0)}, {"int8": 1.0, "fp32": 1.0}, None)
    assert empty.served == "fp32" and "no held-out rows" in empty.reason


def test_spearman_is_rank_correlation():
    x = np.arange(100.0)
    assert spearman(x, x ** 3) == pytest.approx(1.0) and spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(np.ones(5), np.ones(5)) == 1.0


def test_auto_serves_fp32_on_a_narrow_device_where_int8_loses():
    """A narrow device (3 inputs, generated: services/evaluation/unseen.py) whose autoencoder fits its normal rows so
    closely that int8 rounding moves their scores as much as faults do: the real int8 and fp32 sessions are built,
    both score the node's held-out rows, and auto serves fp32, saying why with both ROC-AUCs."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        settings = dataset_settings("compressor", 1, Path(tmp))
        node = load_nodes(settings)["cabinet-0"]
    scaler = FeatureStats.from_rows(node.train_raw()).scaler()
    train, held, labels = node.windows(scaler, "train"), node.windows(scaler, "held_out"), node.held_out_labels()
    detector = AnomalyDetector(DetectorSpec.from_settings(settings))
    detector.partial_fit(train, TrainingPlan.from_settings(settings), seed=1, epochs=30)
    detector.calibrate(train, node.default_reference(scaler))
    served, chosen = detector.choose_precision("auto", train, held, labels)
    fp32, int8 = detector.served_as("fp32", train), detector.served_as("int8", train)
    measured = {p: roc_auc(labels, d.score_inputs(held)) for p, d in (("fp32", fp32), ("int8", int8))}
    assert measured["int8"] < measured["fp32"] - AUC_TOLERANCE, measured  # the case this test is about
    assert chosen.served == "fp32" == served.spec.served, chosen
    assert (chosen.roc_auc_int8, chosen.roc_auc_fp32) == pytest.approx((measured["int8"], measured["fp32"]))
    assert served.threshold_ == pytest.approx(fp32.threshold_)
    forced, _ = detector.choose_precision("int8", train, held, labels)
    assert forced.spec.served == "int8"


@pytest.mark.parametrize("score", ["error", "error_and_t2"])
def test_a_near_constant_device_gets_a_meaningful_threshold(score):
    """A device with three distinct states, repeated: the model reconstructs them exactly and its training scores
    are 0 or nearly. The threshold stays finite and positive (no NaN, no warning), the known states stay quiet and a
    state never seen alarms."""
    import warnings

    states = np.array([[20.0, 0.0, 1.0], [21.0, 1.0, 0.0], [20.5, 0.0, 0.0]], dtype=np.float32)
    rows = states[np.random.default_rng(0).integers(0, 3, 3000)]
    with tempfile.TemporaryDirectory() as tmp:
        cabinet = dataset_settings("compressor", 0, Path(tmp), {"model.score": score})
    spec = DetectorSpec.from_settings(cabinet)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        detector = AnomalyDetector(spec).fit(rows, TrainingPlan.from_settings(cabinet), epochs=20)
        assert np.isfinite(detector.threshold_) and detector.threshold_ > 0
        assert not detector.predict(states).any()
        assert detector.predict(np.array([[25.0, 1.0, 1.0]], dtype=np.float32)).all()
