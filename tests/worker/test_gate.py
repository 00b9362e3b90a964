"""The gate rule (services/worker/gate.py): each bound on its own, at its edge, and the first model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.config import GateSettings
from services.worker.gate import GateFigures, decide

RULE = GateSettings(max_f1_drop=0.05, max_alarm_rate_increase=2.0, max_error_ratio=1.5)
SERVED = GateFigures(alarm_rate=1.0, mean_score=0.010, normal_rows=1000, f1=0.80)


def test_the_first_model_passes_whatever_its_figures():
    awful = GateFigures(alarm_rate=90.0, mean_score=1e6, normal_rows=10, f1=0.0)
    decision = decide(awful, None, RULE)
    assert decision.passed and "first model" in decision.reason and decision.checks == ()


def test_a_model_as_good_passes_with_every_check_listed():
    decision = decide(GateFigures(alarm_rate=1.5, mean_score=0.009, normal_rows=1000, f1=0.82), SERVED, RULE)
    assert decision.passed
    assert [c.figure for c in decision.checks] == ["held-out F1", "mean score of held-out normal rows"]
    assert all(c.passed for c in decision.checks)


@pytest.mark.parametrize("f1, passed", [(0.75, True), (0.7499, False), (0.5, False), (0.95, True)])
def test_f1_may_drop_at_most_max_f1_drop(f1, passed):
    decision = decide(GateFigures(alarm_rate=1.0, mean_score=0.010, normal_rows=1000, f1=f1), SERVED, RULE)
    assert decision.passed is passed
    if not passed:
        assert decision.reason.startswith("refused: held-out F1")
        assert "0.8" in decision.reason and "max_f1_drop 0.05" in decision.reason  # the figure, both values, the bound


UNLABELLED = GateFigures(alarm_rate=1.0, mean_score=0.010, normal_rows=1000)


@pytest.mark.parametrize("rate, passed", [(3.0, True), (3.01, False), (0.0, True)])
def test_without_labels_the_alarm_rate_may_rise_at_most_the_configured_points(rate, passed):
    decision = decide(GateFigures(alarm_rate=rate, mean_score=0.010, normal_rows=1000), UNLABELLED, RULE)
    assert decision.passed is passed
    check = decision.checks[0]
    assert (check.new, check.served, check.bound) == (rate, 1.0, 3.0)


def test_with_labels_more_false_alarms_pass_when_f1_holds():
    """F1 weighs false alarms against caught faults: a model that raises both passes (seen on SKAB: F1 0.823 → 0.839
    while the alarm rate on normal rows rose from 4.3 to 6.5 %)."""
    decision = decide(GateFigures(alarm_rate=6.5, mean_score=0.010, normal_rows=1000, f1=0.84), SERVED, RULE)
    assert decision.passed


@pytest.mark.parametrize("mean, passed", [(0.015, True), (0.0151, False), (0.001, True), (50.0, False)])
def test_mean_normal_score_ratio_is_bounded(mean, passed):
    decision = decide(GateFigures(alarm_rate=1.0, mean_score=mean, normal_rows=1000, f1=0.80), SERVED, RULE)
    assert decision.passed is passed
    if not passed:
        assert "mean score of held-out normal rows" in decision.reason and "max_error_ratio 1.5" in decision.reason


def test_unlabelled_rows_are_judged_without_f1():
    served = GateFigures(alarm_rate=1.0, mean_score=0.01, normal_rows=500)
    decision = decide(GateFigures(alarm_rate=1.2, mean_score=0.011, normal_rows=500), served, RULE)
    assert decision.passed and len(decision.checks) == 2


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_blown_up_model_never_passes_and_its_figures_stay_json(bad):
    decision = decide(GateFigures(alarm_rate=0.0, mean_score=bad, normal_rows=1000, f1=0.8), SERVED, RULE)
    assert not decision.passed
    as_json = decision.as_dict()
    assert as_json["checks"][-1]["new"] is None and as_json["passed"] is False


def test_a_disabled_gate_passes_but_still_reports_what_it_saw():
    decision = decide(GateFigures(alarm_rate=50.0, mean_score=9.0, normal_rows=1000, f1=0.1), SERVED,
                      GateSettings(enabled=False))
    assert decision.passed and "disabled" in decision.reason
    assert [c.passed for c in decision.checks] == [False, False]


def test_figures_come_from_normal_rows_at_the_models_own_threshold():
    scores = np.array([0.1, 0.2, 0.3, 5.0, 6.0])
    labels = np.array([0, 0, 0, 1, 0])
    figures = GateFigures.of(scores, threshold=0.25, labels=labels)
    assert figures.normal_rows == 4
    assert figures.alarm_rate == pytest.approx(50.0)  # 0.3 and 6.0 of the four normal rows
    assert figures.mean_score == pytest.approx((0.1 + 0.2 + 0.3 + 6.0) / 4)
    assert figures.f1 == pytest.approx(0.5)  # tp 1, fp 2, fn 0: 2·1 / (2·1 + 2)
    unlabelled = GateFigures.of(scores, threshold=0.25, labels=None)
    assert unlabelled.normal_rows == 5 and unlabelled.f1 is None and unlabelled.alarm_rate == pytest.approx(60.0)
