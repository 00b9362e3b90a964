"""The synthetic fleet: deterministic, labelled, every anomaly kind visible in the data, devices that differ."""

import time

import numpy as np
import pytest

from services.data.source import DataError
from services.data.synthetic import ANOMALY_KINDS, SyntheticSource, generate_device, normal_signal

SENSORS = tuple(f"s{i}" for i in range(8))


def device(k: int, **kw) -> SyntheticSource:
    return SyntheticSource(k, SENSORS, **kw)


def test_one_labelled_timestamped_run_per_device():
    (run,) = device(0, rows=3000, normal_rows=1000, anomalies=6, interval_s=60).runs()
    assert run.name == "device-0" and run.values.shape == (3000, 8) and run.values.dtype == np.float32
    assert run.labels.shape == (3000,) and set(np.unique(run.labels)) == {0, 1}
    assert not run.labels[:1000].any()  # the training stretch is anomaly-free
    assert np.all(np.diff(run.timestamps) == np.timedelta64(60, "s"))
    assert np.isfinite(run.values).all()


def test_deterministic_by_seed_and_device():
    a, b = device(2, seed=5).runs()[0], device(2, seed=5).runs()[0]
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.values, device(2, seed=6).runs()[0].values)
    assert not np.array_equal(a.values, device(3, seed=5).runs()[0].values)


def test_devices_are_not_identically_distributed():
    means = np.array([device(k).runs()[0].values[:1500].mean(axis=0) for k in range(4)])
    stds = np.array([device(k).runs()[0].values[:1500].std(axis=0) for k in range(4)])
    assert np.ptp(means, axis=0).min() > 1.0  # every sensor sits at a different level on some device
    assert (np.ptp(stds, axis=0) / stds.mean(axis=0)).min() > 0.1  # and has a different spread


def test_sensors_are_correlated_like_a_machines():
    normal = device(1).runs()[0].values[:1500]
    corr = np.corrcoef(normal.T)
    off_diagonal = np.abs(corr[~np.eye(8, dtype=bool)])
    assert np.median(off_diagonal) > 0.3, np.median(off_diagonal)


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_each_kind_changes_exactly_its_labelled_rows(kind):
    source = device(0, rows=4000, normal_rows=1000, anomalies=5, kinds=(kind,))
    clean, scale = normal_signal(source)
    values, labels = generate_device(source)
    changed = np.abs(values - clean.astype(np.float32)) > 1e-3 * scale
    assert labels.sum() > 0 and labels[:1000].sum() == 0
    assert not changed[labels == 0].any()  # nothing outside the labelled rows moved
    rows_changed = changed.any(axis=1)
    assert rows_changed[labels == 1].mean() > 0.8  # (a stuck sensor can match its last value for a row or two)
    assert (changed.sum(axis=0) > 0).sum() >= 1
    if kind == "stuck":
        edges = np.diff(np.concatenate([[0], labels, [0]]))
        events = list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))
        assert len(events) == 5
        for start, end in events:  # in every event one sensor is frozen
            assert (np.ptp(values[start:end], axis=0) == 0).sum() == 1
    else:
        deviation = np.abs(values - clean)[labels == 1].max(axis=1) / scale.max()
        assert np.median(deviation) > 0.2


def test_fast_enough_for_many_workers():
    started = time.perf_counter()
    for k in range(50):
        device(k, rows=5000).runs()
    assert time.perf_counter() - started < 5.0


def test_bad_parameters_are_refused():
    with pytest.raises(DataError, match="kinds must be among"):
        device(0, kinds=("meteor",))
    with pytest.raises(DataError, match="normal_rows"):
        device(0, rows=100, normal_rows=100)
    with pytest.raises(DataError, match="no room"):
        device(0, rows=2000, normal_rows=1500, anomalies=10)
