"""SKAB as the shipped configuration of the tabular source: partitions, the 400-row protocol split, federated
scaling (mean/std and min/max), windows, verified download."""

import http.server
import shutil
import threading
from functools import partial

import numpy as np
import pytest
from support import free_port

from services.config import load_settings
from services.data import skab
from services.protocol.scaling import FeatureStats
from services.data.source import DataError
from services.data.sources import load_node
from services.data.windows import make_windows

SETTINGS = load_settings(environ={})


@pytest.fixture(scope="module")
def skab_dir():
    return skab.find_skab_dir()


@pytest.fixture(scope="module")
def valve1():
    return load_node(SETTINGS, SETTINGS.worker("valve1"))


def test_default_partitions_are_skabs_three_folders():
    sizes = {w.id: len(load_node(SETTINGS, w).runs) for w in SETTINGS.workers}
    assert sizes == {"valve1": 16, "valve2": 4, "other": 14}


def test_experiment_columns_labels_timestamps_and_train_split(valve1):
    run, mask = valve1.runs[0], valve1.masks[0]
    assert run.name == "valve1/0.csv"
    assert run.values.shape == (1147, 8) and run.values.dtype == np.float32
    assert run.values[0, -1] == 32.0  # Volume Flow RateRMS of the first row
    assert str(run.timestamps[0]) == "2020-03-09T10:14:33.000"
    assert set(np.unique(run.labels)) == {0, 1} and mask.sum() == 400 and mask[:400].all()
    assert run.labels[:400].sum() == 0  # SKAB's training part is fault-free for this file


def test_missing_column_and_partition_give_clear_errors(tmp_path):
    humid = load_settings(environ={"FEDAD__DATA__FEATURES": "[Humidity]", "FEDAD__DATA__MODEL_FEATURES": "null"})
    with pytest.raises(DataError, match=r"valve1/0\.csv: no column\(s\) \['Humidity'\]; the file has \['datetime'"):
        load_node(humid, humid.worker("valve1"))
    nowhere = load_settings(environ={"FEDAD__WORKERS__VALVE1__PARTITION": "[valve9]"})
    with pytest.raises(DataError, match="partition entry 'valve9': no such folder or file under"):
        load_node(nowhere, nowhere.worker("valve1"))


def test_merged_stats_equal_pooled_statistics():
    rng = np.random.default_rng(0)
    parts = [rng.normal(5, 3, (n, 4)) for n in (10, 200, 37)]
    merged = FeatureStats.merge([FeatureStats.from_rows(p) for p in parts])
    pooled = np.concatenate(parts)
    np.testing.assert_allclose(merged.scaler().mean, pooled.mean(0))
    np.testing.assert_allclose(merged.scaler().std, pooled.std(0))
    minmax = merged.scaler("minmax")  # (x - min) / (max - min): min in mean, the range in std
    np.testing.assert_allclose(minmax.mean, pooled.min(0))
    np.testing.assert_allclose(minmax.std, pooled.max(0) - pooled.min(0))
    scaled = minmax.transform(pooled.astype(np.float32))
    assert scaled.min() >= -1e-6 and scaled.max() <= 1 + 1e-6


def test_windows_pad_with_the_first_row_and_keep_one_window_per_row():
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    w = make_windows(rows, 3)
    assert w.shape == (4, 9)
    np.testing.assert_array_equal(w[0], [0, 1, 2] * 3)
    np.testing.assert_array_equal(w[3], np.arange(3, 12))
    np.testing.assert_array_equal(make_windows(rows, 1), rows)


def _serve(folder):
    port = free_port()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{port}"


def test_download_checks_every_file_against_its_sha256(tmp_path, skab_dir):
    """SKAB's files served from loopback (standing in for its public repository) arrive verified and complete."""
    server, url = _serve(skab_dir)
    try:
        target = skab.download_skab(tmp_path / "cache", base_url=url)
        assert len(list((target / "skab").rglob("*.csv"))) == 35
        assert (target / "skab" / "valve1" / "0.csv").read_bytes() == (skab_dir / "valve1" / "0.csv").read_bytes()
    finally:
        server.shutdown()


def test_a_corrupted_download_is_refused_and_not_kept(tmp_path, skab_dir):
    mirror = tmp_path / "mirror"
    shutil.copytree(skab_dir, mirror)
    (mirror / "anomaly-free" / "anomaly-free.csv").write_text("tampered")
    server, url = _serve(mirror)
    try:
        with pytest.raises(DataError, match="expected 7641a874"):
            skab.download_skab(tmp_path / "cache", base_url=url)
        assert not (tmp_path / "cache" / "skab" / "anomaly-free" / "anomaly-free.csv").exists()
    finally:
        server.shutdown()


def test_unreachable_source_gives_advice(tmp_path):
    with pytest.raises(DataError, match="Set data.source.dir"):
        skab.download_skab(tmp_path, base_url=f"http://127.0.0.1:{free_port()}")
