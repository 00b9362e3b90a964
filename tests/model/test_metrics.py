"""Detection figures (F1, FAR, MAR, ROC-AUC, PR-AUC) against hand-computed cases."""

import numpy as np
import pytest

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


@pytest.mark.parametrize("seed", range(4))
def test_numpy_auc_figures_equal_scikit_learns_with_and_without_ties(seed):
    from sklearn.metrics import average_precision_score, roc_auc_score

    from services.model.metrics import average_precision, roc_auc

    rng = np.random.default_rng(seed)
    n = 5000
    labels = rng.random(n) < 0.1 * (seed + 1)
    scores = rng.standard_normal(n) + labels * (seed + 0.5)
    if seed % 2:  # many tied scores, as int8 scores are
        scores = np.round(scores, 1)
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_a_zero_threshold_gives_finite_ratios_that_flag_as_the_detector_does():
    """A model that reconstructs its near-constant training rows exactly calibrates its limit at 0: rows scoring 0
    stay below it and every positive score is past it, with no NaN (0 / 0) and no RuntimeWarning."""
    import warnings

    from services.evaluation.reference import unlabelled_metrics
    from services.model.metrics import threshold_ratio

    scores = np.array([0.0, 0.0, 3e-9, 2.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ratio = threshold_ratio(scores, 0.0)
        m = detection_metrics(np.array([0, 0, 1, 1]), ratio > 1, ratio)
        spread = unlabelled_metrics(scores, 0.0)
    assert np.isfinite(ratio).all() and list(ratio > 1) == list(scores > 0)
    assert (m["f1"], m["roc_auc"]) == (1.0, 1.0)
    assert spread["alarm_rate"] == 50.0 and spread["ratio_p50"] > 0
    np.testing.assert_array_equal(threshold_ratio(scores, 2.0), scores / 2.0)
