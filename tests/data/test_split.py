"""The splitter on the real Shuttle file: disjoint, complete, deterministic, and skewed only when asked."""

from pathlib import Path

import numpy as np
import pytest

from services.data.source import DataError, Run
from services.data.split import SplitPlan, SplitSource, split_indices, take_rows

SHUTTLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "shuttle" / "shuttle.csv"
FEATURES = [f"a{i}" for i in range(1, 10)]


@pytest.fixture(scope="module")
def shuttle() -> Run:
    if not SHUTTLE.is_file():
        pytest.skip(f"no Shuttle data at {SHUTTLE}")
    table = np.loadtxt(SHUTTLE, delimiter=",", skiprows=1)
    assert table.shape == (49097, 10)
    return Run("shuttle.csv", table[:, :9].astype(np.float32), labels=table[:, 9].astype(np.int8))


class FileSource:
    def __init__(self, runs):
        self._runs = runs

    def runs(self):
        return self._runs


def parts_of(run: Run, plan: SplitPlan, parts: int) -> list[list[Run]]:
    return [SplitSource(FileSource([run]), plan, k, parts, FEATURES, "label").runs() for k in range(parts)]


@pytest.mark.parametrize("plan", [SplitPlan("random", seed=3), SplitPlan("dirichlet", "label", 0.5, seed=3),
                                  SplitPlan("dirichlet", "a1", 0.3, seed=1)])
def test_every_row_in_exactly_one_node_in_file_order(shuttle, plan):
    n = len(shuttle.values)
    column = shuttle.labels if plan.column == "label" else shuttle.values[:, 0] if plan.column else None
    shares = split_indices(n, 3, plan, column)
    together = np.concatenate(shares)
    assert len(together) == n and len(np.unique(together)) == n  # complete, no row twice
    assert all(len(s) and np.all(np.diff(s) > 0) for s in shares)  # non-empty, in file order
    # the split Runs carry exactly those rows with their own labels
    nodes = parts_of(shuttle, plan, 3)
    for share, runs in zip(shares, nodes):
        (run,) = runs
        np.testing.assert_array_equal(run.values, shuttle.values[share])
        np.testing.assert_array_equal(run.labels, shuttle.labels[share])


def test_same_seed_same_split_other_seed_other_split(shuttle):
    n = len(shuttle.values)
    a = split_indices(n, 3, SplitPlan("dirichlet", "label", 0.5, seed=7), shuttle.labels)
    b = split_indices(n, 3, SplitPlan("dirichlet", "label", 0.5, seed=7), shuttle.labels)
    c = split_indices(n, 3, SplitPlan("dirichlet", "label", 0.5, seed=8), shuttle.labels)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(len(x) == len(z) and np.array_equal(x, z) for x, z in zip(a, c))


def test_random_keeps_the_mix_dirichlet_skews_it(shuttle):
    overall = shuttle.labels.mean()  # 7.15 % anomalies
    random_nodes = parts_of(shuttle, SplitPlan("random", seed=0), 4)
    shares = [runs[0].labels.mean() for runs in random_nodes]
    assert all(abs(s - overall) < 0.01 for s in shares), shares
    assert sorted(len(r[0].values) for r in random_nodes) == [12274, 12274, 12274, 12275]
    skewed = [runs[0].labels.mean() for runs in parts_of(shuttle, SplitPlan("dirichlet", "label", 0.3, 0), 4)]
    assert max(skewed) - min(skewed) > 0.05, skewed  # nodes see clearly different anomaly shares
    gentle = [runs[0].labels.mean() for runs in parts_of(shuttle, SplitPlan("dirichlet", "label", 1e5, 0), 4)]
    assert max(gentle) - min(gentle) < 0.01, gentle  # a large alpha is close to random


def test_a_continuous_column_is_binned_so_nodes_see_different_ranges(shuttle):
    nodes = parts_of(shuttle, SplitPlan("dirichlet", "a1", 0.2, seed=0), 3)
    medians = [float(np.median(runs[0].values[:, 0])) for runs in nodes]
    assert max(medians) - min(medians) > 1.0, medians


def test_runs_keep_timestamps_and_drop_empty_pieces():
    t = np.datetime64("2026-01-01T00:00:00") + np.arange(6).astype("timedelta64[s]")
    runs = [Run("a", np.arange(6, dtype=np.float32)[:, None], t, np.zeros(6, np.int8)),
            Run("b", np.arange(4, dtype=np.float32)[:, None] + 100, None, None)]
    cut = take_rows(runs, np.array([1, 4, 5]))
    assert [r.name for r in cut] == ["a"]
    np.testing.assert_array_equal(cut[0].values[:, 0], [1, 4, 5])
    np.testing.assert_array_equal(cut[0].timestamps, t[[1, 4, 5]])
    cut = take_rows(runs, np.array([0, 7, 9]))
    assert [r.name for r in cut] == ["a", "b"] and cut[1].labels is None
    np.testing.assert_array_equal(cut[1].values[:, 0], [101, 103])


def test_bad_plans_are_refused_with_the_reason(shuttle):
    with pytest.raises(DataError, match="dirichlet needs split.column"):
        SplitPlan("dirichlet")
    with pytest.raises(DataError, match="alpha must be > 0"):
        SplitPlan("dirichlet", "label", alpha=0)
    with pytest.raises(DataError, match="method must be random or dirichlet"):
        SplitPlan("stratified")
    with pytest.raises(DataError, match="fewer rows than nodes"):
        split_indices(2, 3, SplitPlan())
    with pytest.raises(DataError, match="neither a feature"):
        parts_of(shuttle, SplitPlan("dirichlet", "colour"), 2)
    unlabelled = Run("u", shuttle.values[:100])
    with pytest.raises(DataError, match="has no labels"):
        SplitSource(FileSource([unlabelled]), SplitPlan("dirichlet", "label"), 0, 2, FEATURES, "label").runs()
