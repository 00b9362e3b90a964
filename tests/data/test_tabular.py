"""The tabular source on SKAB's real files and on small exports: delimiters, Parquet, timestamps and run cuts,
categorical encodings, missing-value policies, training policies, and the config's guard rails."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from support import REPO

from services.config import ConfigError, load_settings
from services.data import skab
from services.data.selection import training_selection
from services.data.source import DataError
from services.data.sources import load_node
from services.data.tabular import TabularSource, read_table

SETTINGS = load_settings(environ={})
FEATURES = SETTINGS.data.features


@pytest.fixture(scope="module")
def skab_dir() -> Path:
    return skab.find_skab_dir()


def reference_read(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """SKAB's file read independently of the source: the csv module, ; delimiter, columns by name."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    values = np.array([[float(r[c]) for c in FEATURES] for r in rows], dtype=np.float32)
    labels = np.array([int(float(r["anomaly"])) for r in rows], dtype=np.int8)
    return values, labels, [r["datetime"] for r in rows]


def data_settings(tmp_path, **changes):
    """SKAB's config with ``changes`` to data (dotted keys) and data.source.dir set to ``tmp_path``."""
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["data"]["source"]["dir"] = str(tmp_path)
    for key, value in changes.items():
        node = raw["data"]
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    return load_settings(config, environ={})


def test_skab_through_the_source_equals_an_independent_read(skab_dir):
    runs = TabularSource(skab_dir, ["valve2"], SETTINGS.data).runs()
    assert [r.name for r in runs] == ["valve2/0.csv", "valve2/1.csv", "valve2/2.csv", "valve2/3.csv"]
    for run in runs:
        values, labels, times = reference_read(skab_dir / run.name)
        np.testing.assert_array_equal(run.values, values)
        np.testing.assert_array_equal(run.labels, labels)
        assert [str(t).replace("T", " ")[:19] for t in run.timestamps[[0, -1]]] == [times[0], times[-1]]


def test_the_delimiter_is_detected(skab_dir):
    detected = SETTINGS.data.model_copy(update={"source": SETTINGS.data.source.model_copy(update={"delimiter": None})})
    table = read_table(skab_dir / "valve1" / "3.csv", "valve1/3.csv", detected)
    assert table.delimiter == ";" and not table.problems
    np.testing.assert_array_equal(table.values, reference_read(skab_dir / "valve1" / "3.csv")[0])


def test_parquet_reads_like_the_csv_it_was_made_from(tmp_path, skab_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    values, labels, times = reference_read(skab_dir / "valve1" / "5.csv")
    columns = {"datetime": pa.array(np.array(times, dtype="datetime64[s]"))}
    columns.update({c: pa.array(values[:, i].astype(np.float64)) for i, c in enumerate(FEATURES)})
    columns["anomaly"] = pa.array(labels.astype(np.float64))
    pq.write_table(pa.table(columns), tmp_path / "5.parquet")
    settings = data_settings(tmp_path, **{"source.download": None, "source.format": "auto"})
    settings.workers[0].partition = ["*.parquet"]
    node = load_node(settings, settings.workers[0])
    (run,) = node.runs
    assert run.name == "5.parquet"
    np.testing.assert_array_equal(run.values, values)
    np.testing.assert_array_equal(run.labels, labels)
    assert str(run.timestamps[0])[:19] == times[0].replace(" ", "T")


def test_a_long_stream_is_cut_into_runs_where_the_clock_jumps(tmp_path, skab_dir):
    """Two SKAB experiments hours apart written into one file come back as the two runs (SKAB's consecutive
    experiments follow each other within a second: those stay one run)."""
    a, b = (skab_dir / "valve1" / "0.csv").read_text(), (skab_dir / "valve2" / "0.csv").read_text()
    (tmp_path / "stream.csv").write_text(a + "".join(b.splitlines(keepends=True)[1:]))
    settings = data_settings(tmp_path, **{"source.run_gap_s": 60, "source.download": None})
    settings.workers[0].partition = ["stream.csv"]
    runs = load_node(settings, settings.workers[0]).runs
    assert [r.name for r in runs] == ["stream.csv#1", "stream.csv#2"]
    np.testing.assert_array_equal(runs[0].values, reference_read(skab_dir / "valve1" / "0.csv")[0])
    np.testing.assert_array_equal(runs[1].values, reference_read(skab_dir / "valve2" / "0.csv")[0])


EXPORT = ("time,temp,door,pump,label\n"
          "2024-05-01T00:00:10,4.0,closed,off,0\n"
          "2024-05-01T00:00:00,4.2, open ,on,0\n"  # out of order: sorted by time, its label moves with it
          "2024-05-01T00:00:20,,closed,on,1\n"
          "2024-05-01T00:00:30,4.4,closed,off,0\n")


def small(tmp_path, **changes):
    (tmp_path / "x.csv").write_text(EXPORT)
    settings = data_settings(tmp_path, **{
        "source.delimiter": None, "source.timestamp": "time", "source.label": {"column": "label", "normal": [0]},
        "source.download": None, "features": ["temp", "door", "pump"], "model_features": None, "window": 1,
        "window_stats": [], "source.categorical": {"door": {"levels": ["closed", "open"], "encoding": "onehot"},
                                                   "pump": {"levels": ["off", "on"]}},
        "training.rows": 2, **changes})
    settings.workers[0].partition = ["x.csv"]
    return settings


def test_categorical_columns_and_time_order(tmp_path):
    settings = small(tmp_path, **{"source.missing": "ffill"})
    assert settings.data.columns == ["temp", "door=closed", "door=open", "pump"]
    assert settings.input_width == 4
    (run,) = load_node(settings, settings.workers[0]).runs
    expected = np.array([[4.2, 0, 1, 1], [4.0, 1, 0, 0], [4.0, 1, 0, 1], [4.4, 1, 0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(run.values, expected)
    np.testing.assert_array_equal(run.labels, [0, 0, 1, 0])
    assert str(run.timestamps[0]) == "2024-05-01T00:00:00.000"


def test_missing_value_policies_count_what_they_do(tmp_path):
    table = TabularSource(tmp_path, ["x.csv"], small(tmp_path, **{"source.missing": "drop"}).data).tables()[0]
    assert (table.dropped, table.filled, table.missing["temp"], len(table.values)) == (1, 0, 1, 3)
    table = TabularSource(tmp_path, ["x.csv"], small(tmp_path, **{"source.missing": "ffill"}).data).tables()[0]
    assert (table.dropped, table.filled, len(table.values)) == (0, 1, 4)
    with pytest.raises(DataError, match=r"x\.csv:4: column 'temp' is empty"):
        refuse = small(tmp_path)
        load_node(refuse, refuse.workers[0])


def test_training_policies(tmp_path):
    settings = small(tmp_path, **{"source.missing": "ffill"})
    (run,) = load_node(settings, settings.workers[0]).runs
    def policy(**changes):
        return training_selection(settings.data.training.model_copy(update=changes)).mask(run)

    np.testing.assert_array_equal(policy(policy="first_rows", rows=2), [1, 1, 0, 0])
    before = np.datetime64("2024-05-01T00:00:15").astype(object)
    np.testing.assert_array_equal(policy(policy="before", before=before), [1, 1, 0, 0])
    np.testing.assert_array_equal(policy(policy="labelled_normal"), [1, 1, 0, 1])
    np.testing.assert_array_equal(policy(policy="all"), [1, 1, 1, 1])
    half = policy(policy="labelled_normal", share=0.5, seed=3)
    assert not half[2] and np.array_equal(half, policy(policy="labelled_normal", share=0.5, seed=3))
    # the first rows: counting normal rows only, or every row whatever its label
    np.testing.assert_array_equal(policy(policy="first_rows", rows=3, count="normal"), [1, 1, 0, 1])
    np.testing.assert_array_equal(policy(policy="first_rows", rows=3, count="all"), [1, 1, 1, 0])
    # a share of the normal rows in the run's (time) order, whatever the seed
    for seed in (0, 3):
        np.testing.assert_array_equal(policy(policy="labelled_normal", share=0.67, order="file", seed=seed),
                                      [1, 1, 0, 0])


def test_first_rows_count_normal_rows_only_in_labelled_runs(tmp_path):
    """On SKAB's other/2.csv, whose first 400 rows hold 296 anomalous ones: count normal takes the first 400 normal
    rows (the run has 396: all of them) and holds the anomalous ones out; count all (SKAB's published protocol)
    trains on them; an unlabelled run has no labels to count by."""
    settings = data_settings(tmp_path, **{"source.dir": str(skab.find_skab_dir()), "training.count": "normal"})
    settings.workers[0].partition = ["other/2.csv"]
    node = load_node(settings, settings.workers[0])
    ((run, mask),) = zip(node.runs, node.masks)
    assert (run.labels[:400] == 1).sum() == 296 and (run.labels == 0).sum() == 396
    np.testing.assert_array_equal(mask, run.labels == 0)
    every = training_selection(settings.data.training.model_copy(update={"count": "all"})).mask(run)
    np.testing.assert_array_equal(np.flatnonzero(every), np.arange(400))
    unlabelled = training_selection(settings.data.training).mask(replace(run, labels=None))
    np.testing.assert_array_equal(np.flatnonzero(unlabelled), np.arange(400))


def test_a_worker_can_override_how_its_files_are_read(tmp_path, skab_dir):
    (tmp_path / "comma.csv").write_text((skab_dir / "valve2" / "0.csv").read_text().replace(";", ","))
    settings = data_settings(tmp_path, **{"source.download": None})
    settings.workers[0].partition = ["comma.csv"]
    with pytest.raises(DataError, match="comma.csv: no column"):
        load_node(settings, settings.workers[0])
    settings.workers[0].source = {"delimiter": ","}
    (run,) = load_node(settings, settings.workers[0]).runs
    np.testing.assert_array_equal(run.values, reference_read(skab_dir / "valve2" / "0.csv")[0])


@pytest.mark.parametrize("changes,message", [
    ({"FEDAD__DATA__FEATURES": "[anomaly, Current]", "FEDAD__DATA__MODEL_FEATURES": "null"},
     "features must be model inputs only: anomaly is the label column"),
    ({"FEDAD__DATA__FEATURES": "[datetime, Current]", "FEDAD__DATA__MODEL_FEATURES": "null"},
     "datetime is the timestamp column"),
    ({"FEDAD__DATA__TRAINING__POLICY": "before"}, "policy before needs a timestamp"),
    ({"FEDAD__DATA__SOURCE__TIMESTAMP": "null", "FEDAD__DATA__SOURCE__RUN_GAP_S": "60"}, "it needs source.timestamp"),
    ({"FEDAD__DATA__SOURCE__TIMESTAMP": "[a, b, c]"}, "one column name, or \\[date column, time column\\]"),
    ({"FEDAD__DATA__SOURCE__CATEGORICAL": '{Pump: {levels: ["off", "on"]}}'}, "categorical columns \\['Pump'\\] are not"),
    ({"FEDAD__WORKERS__0__SOURCE": "{delimiter: ';;'}"}, "worker valve1's data overrides"),
])
def test_the_config_refuses_confusing_data_settings(changes, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=changes)
