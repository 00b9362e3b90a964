"""The aggregation rules on small arrays: the maths (pure functions) and the strategies that apply it update by update.

The real-federation poisoning experiment is in tests/reliability/test_robust_aggregation.py.
"""

import numpy as np
import pytest

from services.aggregator.strategies import (FedAvg, Median, TrimmedMean, coordinate_median, make_strategy,
                                            trimmed_mean, weighted_mean)

HONEST = np.array([[1.0, -2.0], [1.2, -2.2], [0.8, -1.8], [1.1, -2.1]])
ATTACKED = np.vstack([HONEST, [[1000.0, 1000.0]]])


def test_coordinate_median_ignores_one_arbitrary_update():
    np.testing.assert_allclose(coordinate_median(ATTACKED), [1.1, -2.0])


def test_trimmed_mean_cuts_each_end_and_never_everything():
    np.testing.assert_allclose(trimmed_mean(ATTACKED, 0.2), [(1.0 + 1.1 + 1.2) / 3, (-2.1 - 2.0 - 1.8) / 3])
    np.testing.assert_allclose(trimmed_mean(HONEST, 0.0), HONEST.mean(axis=0))
    assert trimmed_mean(np.array([[1.0], [5.0]]), 0.4)[0] == 3.0, "too few to trim: nothing is trimmed"


def test_weighted_mean_weights_by_sample_count():
    np.testing.assert_allclose(weighted_mean(np.array([[1.0], [5.0]]), np.array([3, 1])), [2.0])


@pytest.mark.parametrize("strategy,expected", [
    (FedAvg(), HONEST.mean(axis=0)), (Median(), np.median(HONEST, axis=0)), (TrimmedMean(0.25), [1.05, -2.05])])
def test_each_strategy_adds_updates_one_at_a_time(strategy, expected):
    strategy.begin(np.zeros(2))
    for row in HONEST:
        strategy.add(row, 10)
    result = strategy.result()
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-6)


def test_fedavg_weights_by_sample_count_and_begin_starts_a_new_round():
    fedavg = FedAvg()
    fedavg.begin(np.zeros(2))
    fedavg.add(np.array([1.0, 1.0]), 30)
    fedavg.add(np.array([5.0, -3.0]), 10)
    np.testing.assert_allclose(fedavg.result(), [2.0, 0.0])
    fedavg.begin(np.zeros(2))
    with pytest.raises(ValueError, match="no updates"):
        fedavg.result()


def test_robust_strategies_ignore_sample_counts():
    """A worker could inflate its own count: the median does not follow it."""
    median = Median()
    median.begin(np.zeros(1))
    for value, count in ((1.0, 1), (2.0, 1), (100.0, 10**6)):
        median.add(np.array([value]), count)
    assert median.result()[0] == 2.0


def test_make_strategy_and_its_limits():
    assert make_strategy("trimmed_mean", 0.1).trim_fraction == 0.1
    assert isinstance(make_strategy("median"), Median) and isinstance(make_strategy("fedavg"), FedAvg)
    with pytest.raises(ValueError):
        TrimmedMean(0.5)
    empty = Median()
    empty.begin(np.zeros(1))
    with pytest.raises(ValueError, match="no updates"):
        empty.result()
