"""From raw rows to model inputs: window statistics by hand, per-run reference scaling, and the served fast path
(block-wise running sums, ``InputPipeline``) equal to the exact one."""

import numpy as np

from services.data.windows import Preprocessing, window_stats


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


def test_running_window_stats_equal_the_sliding_window_ones():
    from services.data.windows import window_stats
    from services.data.windows import running_window_stats

    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 19, 20, 21, 40, 41, 300):
        for window in (1, 2, 3, 20):
            z = rng.standard_normal((n, 6)) * 3
            z[:, 5] = -0.37  # a constant channel: std exactly 0 in the exact path
            if n > 10:
                z[n // 2, 2] = 1e4  # a spike: the quiet windows after it keep their small std
            expected = window_stats(z, window, ("mean", "std", "slope"))
            got = running_window_stats(z, window, ("mean", "std", "slope")).astype(np.float32)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=f"n={n} window={window}")


def test_served_inputs_equal_the_preprocessing():
    from services.data.windows import Preprocessing, Reference
    from services.data.windows import InputPipeline

    class Data:  # config's data section: 3 of 4 columns, window statistics, standardised again
        columns, model_columns, window, window_stats, baseline, scaling = (
            ["a", "b", "c", "d"], ["d", "a", "c"], 5, ["mean", "std", "slope"], "run", "standard")

    prep = Preprocessing.from_settings(Data)
    rows = np.random.default_rng(1).standard_normal((200, 4)).astype(np.float32) * [1, 10, 100, 0.1] + [0, 5, 50, 1]
    reference = prep.reference(rows[:50], None)
    pipeline = InputPipeline(prep, Reference(**reference.model_dump()))
    for n in (1, 2, 7, 200):
        np.testing.assert_allclose(pipeline(rows[:n]), prep.inputs(rows[:n], reference), rtol=1e-5, atol=1e-5)
