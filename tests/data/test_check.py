"""The data check's report (services/data/check.py) on the shipped SKAB configuration and on a source without files
(the synthetic fleet): counts, clock, columns, labels, training rows, input width — the figures training uses; with
data.split the same figures as the unsplit file; warnings where held-out figures would mislead."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from support import REPO, near_constant_device

from services.config import Settings, load_settings
from services.data.check import check, format_report
from services.data.skab import find_skab_dir
from services.data.sources import load_node

SKAB = load_settings(environ={})


def test_skab_report_matches_what_training_reads():
    (report,) = check(SKAB, ["valve1"])
    node = load_node(SKAB, SKAB.worker("valve1"))
    assert report.usable and report.problems == []
    assert report.files[:3] == ["valve1/0.csv", "valve1/1.csv", "valve1/2.csv"] and len(report.files) == 16
    assert (report.runs, report.rows) == (len(node.runs), sum(len(r.values) for r in node.runs)) == (16, 18160)
    assert report.train_rows == len(node.train_raw()) == 16 * 400
    assert report.interval_s == 1.0 and report.duplicates == 0 and report.out_of_order == 0
    assert report.labels == (18160 - sum(int(r.labels.sum()) for r in node.runs), 6309)
    current = next(c for c in report.columns if c.name == "Current")
    assert (current.low, current.high) == (float(min(r.values[:, 2].min() for r in node.runs)),
                                           float(max(r.values[:, 2].max() for r in node.runs)))
    text = format_report(report, SKAB)
    assert "model   input width 18 (6 channels × 3 window statistics)" in text and text.endswith("usable")


def test_a_source_without_files_is_reported_from_its_runs():
    settings = load_settings(REPO / "examples" / "synthetic.yaml",
                             environ={"FEDAD__DATA__SOURCE__SYNTHETIC__ROWS": "600",
                                      "FEDAD__DATA__SOURCE__SYNTHETIC__NORMAL_ROWS": "300",
                                      "FEDAD__DATA__SOURCE__SYNTHETIC__ANOMALIES": "2",
                                      "FEDAD__DATA__TRAINING__ROWS": "300"})
    report = check(settings)[0]
    assert report.usable, report.problems
    assert (report.runs, report.rows, report.train_rows, report.held_out_rows) == (1, 600, 300, 300)
    assert report.labels is not None and sum(report.labels) == 600
    assert "label   generated:" in format_report(report, settings)


# -- data.split: the node's part of the rows, the files' clock ----------------------------------------------------

def _export_with_clock_faults(skab_file: Path, out: Path) -> dict:
    """A logger's export made from a real SKAB run: a two-state ``pump`` column (the motor's current above its
    median), spelt several ways; every 40th row stamped with the time of the row before (a duplicate time), and
    every 97th pair of rows written in the wrong order. Returns what it put in: the figures data check must find."""
    lines = skab_file.read_text().splitlines()
    header, rows = lines[0].split(";"), [line.split(";") for line in lines[1:]]
    current = np.array([float(r[header.index("Current")]) for r in rows])
    on = current > np.median(current)
    spellings = {True: ["on", " 1", "ON "], False: ["off", "0 ", "Off"]}
    stamps = [r[0] for r in rows]
    duplicates = 0
    for i in range(40, len(rows), 40):
        stamps[i] = stamps[i - 1]
        duplicates += 1
    order = list(range(len(rows)))
    out_of_order = 0
    for i in range(97, len(rows) - 1, 97):
        if i % 40 and (i + 1) % 40 and (i + 2) % 40:  # keep a swapped pair clear of the duplicated stamps
            order[i], order[i + 1] = order[i + 1], order[i]
            out_of_order += 1
    body = [";".join(["datetime", *header[1:], "pump"])]
    for n, i in enumerate(order):
        body.append(";".join([stamps[i], *rows[i][1:], spellings[bool(on[i])][n % 3]]))
    out.write_text("\n".join(body) + "\n")
    return {"rows": len(rows), "duplicates": duplicates, "out_of_order": out_of_order,
            "levels": {"off": int((~on).sum()), "on": int(on.sum())}}


def _settings(tmp_path: Path, workers: int, split: dict | None, **data) -> Settings:
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["data"]["source"].update(dir=str(tmp_path), download=None, **data.pop("source", {}))
    raw["data"].update(split=split, **data)
    raw["workers"] = [{"id": f"n{k}", "partition": ["export.csv"], "state_dir": str(tmp_path / f"n{k}"),
                       "token": f"token-n{k}"} for k in range(workers)]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_settings(path, environ={})


def test_with_split_each_node_reports_the_files_clock_and_its_own_part(tmp_path):
    put = _export_with_clock_faults(find_skab_dir() / "valve1" / "1.csv", tmp_path / "export.csv")
    assert put["duplicates"] > 20 and put["out_of_order"] > 5
    pump = {"source": {"categorical": {"pump": {"levels": {"off": ["0"], "on": ["1"]}, "ignore_case": True}}},
            "features": [*SKAB.data.features, "pump"]}
    (whole,) = check(_settings(tmp_path, 1, None, **pump))
    assert whole.usable, whole.problems
    assert (whole.rows, whole.duplicates, whole.out_of_order) == (put["rows"], put["duplicates"], put["out_of_order"])
    pump_levels = next(c.levels for c in whole.columns if c.name == "pump")
    assert pump_levels == put["levels"]

    settings = _settings(tmp_path, 3, {"method": "random", "seed": 1}, **pump)
    parts = check(settings)
    for k, part in enumerate(parts):
        assert part.usable, part.problems
        assert part.files == whole.files == ["export.csv"]
        assert part.split == (k, 3)
        assert (part.duplicates, part.out_of_order, part.gaps, part.start, part.end, part.interval_s) == \
            (whole.duplicates, whole.out_of_order, whole.gaps, whole.start, whole.end, whole.interval_s)
        levels = next(c.levels for c in part.columns if c.name == "pump")
        assert sum(levels.values()) == part.rows > 0
        text = format_report(part, settings)
        assert "  files   export.csv" in text and f"  split   part {k + 1} of 3 of the {whole.rows} rows read" in text
        assert f"duplicate times: {put['duplicates']}, out-of-order rows: {put['out_of_order']}" in text
    assert sum(p.rows for p in parts) == whole.rows
    assert {level: sum(next(c.levels for c in p.columns if c.name == "pump")[level] for p in parts)
            for level in ("off", "on")} == put["levels"]
    assert tuple(map(sum, zip(*(p.labels for p in parts)))) == whole.labels


def test_shuttle_split_parts_add_up_to_the_file(tmp_path):
    settings = load_settings(REPO / "examples" / "shuttle.yaml", environ={})
    parts = check(settings)
    unsplit = load_settings(REPO / "examples" / "shuttle.yaml", environ={"FEDAD__DATA__SPLIT": "null"})
    (whole,) = check(unsplit, ["node1"])
    assert whole.rows == 49097 and sum(p.rows for p in parts) == whole.rows
    assert all(p.files == ["shuttle.csv"] and p.rows_read == whole.rows_read for p in parts)
    assert tuple(map(sum, zip(*(p.labels for p in parts)))) == whole.labels
    for name in settings.data.features:  # every part's range lies within the file's
        low, high = next((c.low, c.high) for c in whole.columns if c.name == name)
        assert all(low <= c.low and c.high <= high for p in parts for c in p.columns if c.name == name)


# -- warnings: labels that separate by session, near-constant inputs ----------------------------------------------

def _two_sessions(tmp_path: Path) -> Path:
    """Real SKAB rows from two recording sessions: the anomaly-free run (8 February 2020) as the normal rows, and
    valve1/0.csv's faulty rows (9 March 2020) as the anomalous ones — normal and fault never recorded together."""
    skab_dir = find_skab_dir()
    free = (skab_dir / "anomaly-free" / "anomaly-free.csv").read_text().splitlines()
    faulty = (skab_dir / "valve1" / "0.csv").read_text().splitlines()
    header = faulty[0].split(";")
    lines = [";".join(header[:-1])]  # without changepoint
    lines += [f"{line};0" for line in free[1:]]
    lines += [";".join(r[:-1]) for r in (line.split(";") for line in faulty[1:]) if float(r[-2]) == 1]
    path = tmp_path / "sessions.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_labels_that_separate_by_session_are_warned_about_with_their_spans(tmp_path):
    _two_sessions(tmp_path)
    settings = _settings(tmp_path, 1, None)
    settings.workers[0].partition = ["sessions.csv"]
    (report,) = check(settings)
    assert report.usable and len(report.warnings) == 1, report.warnings
    (warning,) = report.warnings
    normal, anomalous = report.labels
    assert "labels separate by recording session or period" in warning
    assert "their times do not overlap: normal rows 2020-02-08 13:30:47 → " in warning
    assert f"({normal} rows), anomalous rows 2020-03-09 " in warning and f"({anomalous} rows)" in warning
    text = format_report(report, settings)
    assert "  WARNING labels separate by recording session" in text and text.endswith("usable, 1 warning(s)")

    cut = _settings(tmp_path, 1, None, source={"run_gap_s": 3600})  # the gap between the sessions cuts the runs
    cut.workers[0].partition = ["sessions.csv"]
    (report,) = check(cut)
    assert report.runs == 2
    assert "no run holds both: normal rows only in sessions.csv#1, anomalous rows only in sessions.csv#2; normal " \
           "rows 2020-02-08 13:30:47 → " in report.warnings[0]


def test_skab_and_the_own_data_example_raise_no_warning():
    assert [r.warnings for r in check(SKAB)] == [[], [], []]
    own = load_settings(REPO / "examples" / "own-data" / "config.yaml", environ={})
    assert [r.warnings for r in check(own)] == [[], [], []]


def test_a_near_constant_device_is_warned_about(tmp_path):
    config = near_constant_device(tmp_path)
    (report,) = check(load_settings(config, environ={}))
    assert report.usable and len(report.warnings) == 1
    assert report.warnings[0].startswith("near-constant input: the 400 training rows hold 2 distinct value(s) of the "
                                         "model's channels ['state', 'power'] (the most common one is 50% of them)")

    still = load_settings(config, environ={"FEDAD__DATA__SOURCE__CATEGORICAL": "{}", "FEDAD__DATA__FEATURES": "[power]",
                                           "FEDAD__DATA__TRAINING__ROWS": "50"})
    (report,) = check(still)
    assert "one row is 100.0% of them, at least the threshold's quantile 0.99" in report.warnings[0]
