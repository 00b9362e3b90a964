"""The data check's report (services/data/check.py) on the shipped SKAB configuration and on a source without files
(the synthetic fleet): counts, clock, columns, labels, training rows, input width — the figures training uses."""

from __future__ import annotations

from support import REPO

from services.config import load_settings
from services.data.check import check, format_report
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
