"""A stream's incremental window (running sums, re-anchored; a ring buffer for raw windows) gives the model inputs of
the exact batch path: on every SKAB file as a stream of single rows, on random splits, across many re-anchorings
of a long stream with spikes, for flattened windows, and when the reference changes mid-stream."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from services.config import load_settings
from services.data.stream_window import StreamWindow
from services.data.windows import InputPipeline, Preprocessing
from support import partition_runs

SETTINGS = load_settings()
PREP = Preprocessing.from_settings(SETTINGS.data)
BASELINE = SETTINGS.data.train_rows
RTOL = ATOL = 1e-5  # float32 rounding of standardised inputs


def skab_runs() -> list[np.ndarray]:
    """Every SKAB file with faults (valve1, valve2, other), whole, as raw rows in feature order."""
    return [run.values.astype(np.float32) for run in partition_runs(SETTINGS, ["valve1", "valve2", "other"])]


def streamed(window: StreamWindow, pipeline: InputPipeline, rows: np.ndarray, sizes) -> np.ndarray:
    out, sent = [], 0
    for size in sizes:
        out.append(window.inputs(pipeline, rows[sent:sent + size]))
        sent += size
    assert sent == len(rows)
    return np.concatenate(out)


def random_sizes(n: int, rng: np.random.Generator, most: int) -> list[int]:
    sizes: list[int] = []
    while sum(sizes) < n:
        sizes.append(min(int(rng.integers(1, most)), n - sum(sizes)))
    return sizes


def test_every_skab_file_row_by_row_equals_the_exact_inputs():
    runs = skab_runs()
    assert len(runs) >= 30, "the SKAB files with faults should all be there"
    for i, run in enumerate(runs):
        baseline, rows = run[:BASELINE], run[BASELINE:]
        reference = PREP.reference(baseline, None)
        expected = PREP.inputs(run, reference)[BASELINE:]  # two-pass statistics over sliding windows
        window = StreamWindow(PREP.window, run.shape[1], baseline)
        got = streamed(window, InputPipeline(PREP, reference), rows, [1] * len(rows))
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, err_msg=f"SKAB run {i}")
        np.testing.assert_array_equal(window.history, rows[-(PREP.window - 1):])


def test_random_splits_of_a_stream_give_the_same_inputs():
    run = skab_runs()[3]
    baseline, rows = run[:BASELINE], run[BASELINE:]
    reference = PREP.reference(baseline, None)
    pipeline = InputPipeline(PREP, reference)
    expected = PREP.inputs(run, reference)[BASELINE:]
    rng = np.random.default_rng(7)
    for most in (3, 2 * PREP.window, 200):
        sizes = random_sizes(len(rows), rng, most)
        got = streamed(StreamWindow(PREP.window, run.shape[1], baseline), pipeline, rows, sizes)
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, err_msg=f"pieces of up to {most - 1}")


@pytest.mark.parametrize("stats", [("mean", "std", "slope"), ("slope", "mean"), ()])
def test_a_long_stream_with_spikes_across_many_reanchorings(stats):
    """10,000 rows far from zero with spikes of 10⁴ σ and a constant channel, one row at a time and without a
    baseline (the first row repeats before it): 500 re-anchorings at the default window of 20."""
    prep = replace(PREP, stats=stats)
    rng = np.random.default_rng(3)
    n, features = 10_000, len(SETTINGS.data.features)
    rows = (rng.standard_normal((n, features)) * 0.01 + 1000).astype(np.float32)
    rows[:, prep.columns[-1]] = 7.25  # constant: its std is 0 in every window
    rows[::997, prep.columns[0]] += 100  # spikes, each leaving the window 20 rows later
    reference = prep.reference(rows[:BASELINE], None)
    pipeline = InputPipeline(prep, reference)
    expected = prep.inputs(rows, reference)
    window = StreamWindow(prep.window, features)
    got = streamed(window, pipeline, rows, [1] * n)
    assert got.shape == expected.shape == (n, prep.width)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_a_new_reference_mid_stream_scales_the_held_rows_afresh():
    """Streams without a baseline follow the served model's default reference: a new model brings a new one."""
    run = skab_runs()[5]
    first, second = (InputPipeline(PREP, PREP.reference(run[a:a + BASELINE], None)) for a in (0, 300))
    window = StreamWindow(PREP.window, run.shape[1])
    half = len(run) // 2
    before = streamed(window, first, run[:half], [1] * half)
    after = streamed(window, second, run[half:], [1] * (len(run) - half))
    np.testing.assert_allclose(before, first(run)[:half], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(after, second(run)[half:], rtol=RTOL, atol=ATOL)


def test_window_one_and_a_young_stream():
    run = skab_runs()[0][:60]
    pipeline = InputPipeline(replace(PREP, window=1), PREP.reference(run[:BASELINE], None))
    got = streamed(StreamWindow(1, run.shape[1]), pipeline, run, [1] * len(run))
    np.testing.assert_allclose(got, pipeline(run), rtol=RTOL, atol=ATOL)
    window = StreamWindow(PREP.window, run.shape[1])  # fewer rows than a window: the first row pads
    pipeline = InputPipeline(PREP, PREP.reference(run, None))
    streamed(window, pipeline, run[:5], [1] * 5)
    assert len(window.history) == 5 and window.held == 5
