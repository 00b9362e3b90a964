"""`fedad evaluate --datasets …` (what `make evaluate` runs), small: each data set in its own folder with its model
kinds, one comparison across them, a data set whose files are missing skipped with the reason, the report rendered
from the first data set with the comparison in it."""

import json

import pytest

from services.config import REPO_ROOT, load_settings
from services.evaluation import grid, runner
from services.evaluation.cli import evaluate_command, report_command

SMALL_FLEET = {  # 4 devices × 8 sensors, 1,200 rows each; 2 rounds of 1 epoch
    "FEDAD__DATA__SOURCE__SYNTHETIC__ROWS": "1200",
    "FEDAD__DATA__SOURCE__SYNTHETIC__NORMAL_ROWS": "600",
    "FEDAD__DATA__SOURCE__SYNTHETIC__ANOMALIES": "4",
    "FEDAD__DATA__TRAINING__ROWS": "600",
    "FEDAD__FEDERATION__ROUNDS": "2",
    "FEDAD__MODEL__LOCAL_EPOCHS": "1",
}


@pytest.fixture
def missing_shuttle(tmp_path):
    """examples/shuttle.yaml reading a folder that does not exist."""
    text = (REPO_ROOT / "examples" / "shuttle.yaml").read_text()
    config = tmp_path / "shuttle.yaml"
    config.write_text(text.replace("dir: ../../shared/data/shuttle", f"dir: {tmp_path / 'nowhere'}"))
    return config


def test_every_kind_on_every_data_set_in_one_comparison(tmp_path, missing_shuttle, monkeypatch, capsys):
    for key, value in SMALL_FLEET.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(grid.DATASETS, "shuttle", missing_shuttle)
    monkeypatch.setattr(runner, "LATENT_POINTS", 200)
    monkeypatch.setattr(runner, "TIMING_CALLS", 20)
    out = tmp_path / "evaluation"
    evaluate_command(load_settings(), str(out), "federated,local", "dense,lstm", "synthetic,shuttle")
    printed = capsys.readouterr().out
    summary = json.loads((out / "comparison.json").read_text())
    assert list(summary["comparison"]) == ["synthetic"] and "nowhere" in summary["skipped"]["shuttle"]
    kinds = summary["comparison"]["synthetic"]
    assert list(kinds) == ["dense", "lstm"] and all(set(k["modes"]) == {"federated", "local"} for k in kinds.values())
    assert kinds["lstm"]["served"] == "fp32" and kinds["lstm"]["training_process"]["peak_rss_mib"] > 50
    saved = json.loads((out / "synthetic" / "results.json").read_text())
    assert saved["model_kinds"] == kinds and saved["labelled"]
    table = (out / "kinds.md").read_text()
    assert "| synthetic | dense | federated | auto (each node's own choice) |" in table  # serving.model auto
    assert "| synthetic | lstm | federated | fp32" in table
    assert table.splitlines()[2] in printed and "shuttle skipped" in printed

    report_command(str(out), str(tmp_path / "report.html"))  # no results.json at the top: the first data set's
    page = (tmp_path / "report.html").read_text()
    assert "<h2>Model kinds</h2>" in page and "<td>lstm</td>" in page and "shuttle skipped" in page
