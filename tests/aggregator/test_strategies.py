"""The aggregation rules on small arrays: the maths (pure functions) and the strategies that apply it update by update.

The real-federation poisoning experiment is in tests/reliability/test_robust_aggregation.py.
"""

import numpy as np
import pytest

from services.aggregator.strategies import (DifferentialPrivacyServerSideFixedClipping, FedAvg, FixedClipping, Median,
                                            TrimmedMean, coordinate_median, from_settings, make_strategy, trimmed_mean,
                                            weighted_mean)
from services.config import load_settings

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


def test_clipping_wraps_any_rule_and_clips_each_update_before_it():
    clipped = FixedClipping(Median(), 1.0)
    assert clipped.name == "median" and clipped.robust and clipped.clip_norm == 1.0
    clipped.begin(np.array([1.0, 1.0]))
    for change in ([30.0, 40.0], [0.3, 0.4], [0.0, -0.5]):  # norms 50 (clipped to 1), 0.5, 0.5
        clipped.add(np.array([1.0, 1.0]) + change, 1)
    np.testing.assert_allclose(clipped.result(), [1.3, 1.4], rtol=1e-6)  # median of 1.6/1.3/1.0 and 1.8/1.4/0.5


def test_server_side_dp_clips_aggregates_noises_and_accounts_each_release():
    dp = DifferentialPrivacyServerSideFixedClipping(FixedClipping(FedAvg(), 5.0), 2.0, 0.5,
                                                    np.random.default_rng(0))
    assert dp.clip_norm == 0.5, "the tighter of the two bounds"
    dp.begin(np.zeros(100_000))
    for count in (1, 3):
        dp.add(np.zeros(100_000), count)  # no change: all of the result is noise
    noise = dp.result()
    assert noise.std() == pytest.approx(2.0 * 0.5 * 3 / 4, rel=0.02)  # z · C · the largest share (3 of 4)
    assert dp.accountant.steps == 1
    saved = dp.state_dict()
    dp.result()
    assert dp.accountant.steps == 2
    dp.load_state_dict(saved)
    assert dp.accountant.steps == 1 and FedAvg().state_dict() is None


def test_from_settings_composes_the_chain_config_describes():
    def chain(**env):
        strategy, names = from_settings(load_settings(environ=env)), []
        while strategy is not None:
            names.append(type(strategy).__name__)
            strategy = getattr(strategy, "inner", None)
        return names

    assert chain() == ["FedAvg"]
    assert chain(FEDAD__FEDERATION__STRATEGY="median", FEDAD__FEDERATION__CLIP_NORM="2") == ["FixedClipping", "Median"]
    assert chain(FEDAD__PRIVACY__NOISE_MULTIPLIER="1.0") == ["DifferentialPrivacyServerSideFixedClipping", "FedAvg"]
    assert chain(FEDAD__PRIVACY__NOISE_MULTIPLIER="1.0", FEDAD__PRIVACY__SIDE="client") == ["FedAvg"]
