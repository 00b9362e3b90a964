"""SKAB's figures against hand-computed cases, and the window features the detector uses."""

import numpy as np
import pytest

from services.data.windows import Preprocessing, window_stats
from services.model.metrics import detection_metrics, pooled_metrics


def test_detection_metrics_match_a_hand_computed_case():
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 0])
    predicted = np.array([0, 1, 0, 0, 0, 1, 1, 0, 1, 1])
    scores = np.array([0.1, 0.8, 0.2, 0.3, 0.1, 0.9, 0.7, 0.4, 0.95, 0.6])
    m = detection_metrics(labels, predicted, scores)
    # tp 3 (rows 5, 6, 8), fp 2 (rows 1, 9), fn 1 (row 7), tn 4
    assert m["counts"] == {"tp": 3, "fp": 2, "fn": 1, "tn": 4}
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1), abs=1e-4)  # 0.6667
    assert m["far"] == pytest.approx(100 * 2 / 6, abs=0.01)  # 33.33 % of the 6 normal rows
    assert m["mar"] == pytest.approx(100 * 1 / 4, abs=0.01)  # 25 % of the 4 anomalies
    # ROC-AUC by counting pairs: anomaly scores 0.9 0.7 0.4 0.95 vs normal 0.1 0.8 0.2 0.3 0.1 0.6
    pairs = [(a, n) for a in scores[labels == 1] for n in scores[labels == 0]]
    assert m["roc_auc"] == pytest.approx(np.mean([a > n for a, n in pairs]), abs=1e-4)  # 19/24
    # average precision: ranked 0.95 A, 0.9 A, 0.8 N, 0.7 A, 0.6 N, 0.4 A → (1 + 1 + 3/4 + 4/6) / 4
    assert m["pr_auc"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4, abs=1e-4)


def test_pooling_adds_confusion_counts_like_skab():
    a = detection_metrics(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
    b = detection_metrics(np.array([1, 0, 0]), np.array([1, 1, 0]))
    pooled = pooled_metrics([a["counts"], b["counts"]])
    assert pooled["counts"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 3}
    assert pooled["f1"] == pytest.approx(4 / 6, abs=1e-4) and pooled["far"] == 25.0 and pooled["mar"] == pytest.approx(33.33)


def test_null_detector_scores_zero_f1_and_full_mar():
    m = detection_metrics(np.array([0, 1, 1]), np.array([0, 0, 0]))
    assert m["f1"] == 0 and m["far"] == 0 and m["mar"] == 100


def test_window_stats_mean_std_slope_by_hand():
    rows = np.array([[0.0], [1.0], [2.0], [4.0]])
    out = window_stats(rows, 3, ("mean", "std", "slope"))
    # row 0's window is [0, 0, 0] (padded with the first row), row 3's is [1, 2, 4]
    np.testing.assert_allclose(out[0], [0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(out[3], [7 / 3, np.std([1, 2, 4]), (4 - 1) / 2], rtol=1e-5)
    np.testing.assert_allclose(out[2], [1, np.std([0, 1, 2]), 1], rtol=1e-5)


def test_run_baseline_scales_each_run_by_its_own_reference_rows():
    prep = Preprocessing(columns=(0, 2), window=4, stats=("mean", "std"), baseline="run")
    rng = np.random.default_rng(0)
    run = rng.normal([10, 5, -3], [1, 1, 2], size=(80, 3))
    shifted = run + [100, 0, 40]  # the same run at another operating point
    x = prep.inputs(run, prep.reference(run[:50], None))
    y = prep.inputs(shifted, prep.reference(shifted[:50], None))
    assert x.shape == (80, 4)  # 2 channels × 2 statistics; column 1 is not a model feature
    np.testing.assert_allclose(x, y, atol=1e-4)  # the operating point is gone
    np.testing.assert_allclose(x[:50].mean(0), 0, atol=1e-5)  # reference rows standardised
    np.testing.assert_allclose(x[:50].std(0), 1, atol=1e-4)
