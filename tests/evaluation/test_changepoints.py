"""SKAB's changepoint board: the NAB rules on hand-made series, and the debounced alarms they are applied to."""

import math

import numpy as np
import pytest

from services.evaluation.changepoints import (
    PROFILES,
    alarm_state,
    board,
    nab_scores,
    predicted,
    run_outcome,
    windows,
)

T0 = np.datetime64("2020-03-09T10:00:00", "s")


def at(*seconds):
    return T0 + np.asarray(seconds, dtype="timedelta64[s]")


def test_windows_open_after_each_changepoint_and_overlaps_cut_the_later_one():
    assert windows(at(0, 100)) == [[at(0)[0], at(60)[0]], [at(100)[0], at(160)[0]]]
    first, second = windows(at(0, 30))
    assert (first[1], second[0], second[1]) == (at(60)[0], at(60)[0], at(90)[0])


def test_predicted_changepoints_are_where_the_output_changes_and_a_start_at_one():
    assert predicted([0, 0, 1, 1, 0, 1]).tolist() == [2, 4, 5]
    assert predicted([1, 1, 0]).tolist() == [0, 2]
    assert predicted([0, 0, 0]).tolist() == []


def test_a_detection_at_the_changepoint_scores_a_tp_and_at_the_window_end_a_fp():
    a_tp, a_fp, a_fn = PROFILES["standard"]
    perfect = nab_scores([run_outcome(at(0), at(0))])
    assert perfect["standard"] == pytest.approx(100.0)
    late = run_outcome(at(0), at(60))  # the last instant of the window: A_fp, the same as a false positive
    assert nab_scores([late])["standard"] == pytest.approx(100 * (a_fp - a_fn) / (a_tp - a_fn), abs=0.01)
    half = nab_scores([run_outcome(at(0), at(30))])["standard"]  # the middle of the tanh: halfway between
    assert half == pytest.approx(100 * ((a_tp + a_fp) / 2 - a_fn) / (a_tp - a_fn), abs=0.2)


def test_misses_and_false_positives_with_each_profile():
    outcome = run_outcome(at(0, 1000), at(5, 10, 500, 2000))  # first window hit at 5 s (10 s ignored), second missed
    assert (outcome["missed"], outcome["false_positives"], len(outcome["hits"])) == (1, 2, 1)
    scores = nab_scores([outcome])
    for profile, (a_tp, a_fp, a_fn) in PROFILES.items():
        x = -math.pi / 2 + int(5 / 60 * 1000) * math.pi / 999
        tp = (a_tp - a_fp) / 2 * (-math.tanh(x) / math.tanh(math.pi / 2)) + (a_tp - a_fp) / 2 + a_fp
        raw = tp + a_fn + 2 * a_fp
        assert scores[profile] == pytest.approx(round(100 * (raw - 2 * a_fn) / (2 * a_tp - 2 * a_fn), 2))
    assert scores["low_fp"] < scores["standard"]  # false positives cost twice as much


def test_the_null_detector_scores_zero_and_a_file_without_changepoints_only_costs():
    assert nab_scores([run_outcome(at(0, 500), at())])["standard"] == 0.0
    with_noise = nab_scores([run_outcome(at(0), at(0)), run_outcome(at(), at(5, 50))])
    assert with_noise["false_positives"] == 2 and with_noise["standard"] < 100


def test_alarm_state_opens_from_the_first_row_of_the_streak_and_clears_after_normal_rows():
    flags = np.array([0, 1, 1, 0, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0])
    state = alarm_state(flags, open_after=3, clear_after=3)
    assert state.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]


def test_board_scores_rows_and_alarms_of_every_file():
    times = at(*range(200))
    changepoints = np.zeros(200, int)
    changepoints[[50, 150]] = 1
    flags = np.zeros(200, bool)
    flags[52:120] = True
    flags[10] = True  # a lone flagged row: a false positive as rows, nothing as alarms
    result = board([{"times": times, "changepoints": changepoints, "flags": flags}], open_after=3, clear_after=10)
    assert result["rows"]["false_positives"] == 3 and result["alarms"]["false_positives"] == 1
    assert result["alarms"]["missed"] == result["rows"]["missed"] == 1
    assert result["alarms"]["standard"] > result["rows"]["standard"]
