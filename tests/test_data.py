"""SKAB data: partitions, the 400-row protocol split, federated scaling, windows, verified download."""

import http.server
import shutil
import threading
from functools import partial

import numpy as np
import pytest

from services.config import load_settings
from services.data import skab
from services.data.scaling import FeatureStats
from services.data.windows import make_windows
from support import free_port

SETTINGS = load_settings()


@pytest.fixture(scope="module")
def data_dir():
    return skab.find_data_dir()


def test_default_partitions_are_skabs_three_folders(data_dir):
    sizes = {w.id: len(skab.load_partition(data_dir, w.partition, SETTINGS.data.features)) for w in SETTINGS.workers}
    assert sizes == {"valve1": 16, "valve2": 4, "other": 14}


def test_experiment_columns_labels_and_train_split(data_dir):
    e = skab.read_experiment(data_dir / "skab" / "valve1" / "0.csv", SETTINGS.data.features)
    assert e.values.shape == (1147, 8) and e.values.dtype == np.float32
    assert e.values[0, -1] == 32.0  # Volume Flow RateRMS of the first row
    assert set(np.unique(e.labels)) == {0, 1} and e.train_part(400).shape == (400, 8)
    assert e.labels[:400].sum() == 0  # SKAB's training part is fault-free for this file


def test_missing_column_and_partition_give_clear_errors(data_dir):
    with pytest.raises(skab.DataError, match=r"no column\(s\) \['Humidity'\]"):
        skab.read_experiment(data_dir / "skab" / "valve1" / "0.csv", ["Humidity"])
    with pytest.raises(skab.DataError, match="valve9"):
        skab.load_partition(data_dir, ["valve9"], SETTINGS.data.features)


def test_merged_stats_equal_pooled_statistics():
    rng = np.random.default_rng(0)
    parts = [rng.normal(5, 3, (n, 4)) for n in (10, 200, 37)]
    scaler = FeatureStats.merge([FeatureStats.from_rows(p) for p in parts]).scaler()
    pooled = np.concatenate(parts)
    np.testing.assert_allclose(scaler.mean, pooled.mean(0))
    np.testing.assert_allclose(scaler.std, pooled.std(0))


def test_windows_pad_with_the_first_row_and_keep_one_window_per_row():
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    w = make_windows(rows, 3)
    assert w.shape == (4, 9)
    np.testing.assert_array_equal(w[0], [0, 1, 2] * 3)
    np.testing.assert_array_equal(w[3], np.arange(3, 12))
    assert make_windows(rows, 1) is not None and make_windows(rows, 1).shape == (4, 3)


def _serve(folder):
    port = free_port()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{port}"


def test_download_checks_every_file_against_its_sha256(tmp_path, data_dir):
    """SKAB's files served from loopback (standing in for its public repository) arrive verified and complete."""
    server, url = _serve(data_dir / "skab")
    try:
        target = skab.download_skab(tmp_path / "cache", base_url=url)
        assert len(list((target / "skab").rglob("*.csv"))) == 35
        assert (target / "skab" / "valve1" / "0.csv").read_bytes() == (data_dir / "skab" / "valve1" / "0.csv").read_bytes()
    finally:
        server.shutdown()


def test_a_corrupted_download_is_refused_and_not_kept(tmp_path, data_dir):
    mirror = tmp_path / "mirror"
    shutil.copytree(data_dir / "skab", mirror)
    (mirror / "anomaly-free" / "anomaly-free.csv").write_text("tampered")
    server, url = _serve(mirror)
    try:
        with pytest.raises(skab.DataError, match="expected 7641a874"):
            skab.download_skab(tmp_path / "cache", base_url=url)
        assert not (tmp_path / "cache" / "skab" / "anomaly-free" / "anomaly-free.csv").exists()
    finally:
        server.shutdown()


def test_unreachable_source_gives_advice(tmp_path):
    with pytest.raises(skab.DataError, match="Set FEDAD_DATA_DIR"):
        skab.download_skab(tmp_path, base_url=f"http://127.0.0.1:{free_port()}")
