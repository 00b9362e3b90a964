"""A small configuration of the whole evaluation, end to end: the federated path runs the aggregator's Federation
class, every mode and kind is scored, and the report holds every figure."""

import json
import re

import numpy as np
import pytest

from services.config import load_settings
from services.evaluation import runner
from services.evaluation.cli import format_table
from services.evaluation.report import FIGURES, write_report
from services.protocol.codec import decode_weights

SMALL = {  # two rounds of one epoch on a few files per worker: the code paths, not the figures
    "FEDAD__FEDERATION__ROUNDS": "2",
    "FEDAD__MODEL__LOCAL_EPOCHS": "1",
    "FEDAD__WORKERS__VALVE1__PARTITION": "[valve1/0.csv, valve1/1.csv]",
    "FEDAD__WORKERS__VALVE2__PARTITION": "[valve2/0.csv]",
    "FEDAD__WORKERS__OTHER__PARTITION": "[other/5.csv, other/9.csv]",
}


class SpyFederation(runner.Federation):
    """The real Federation, recording what the evaluation submits and what it publishes."""

    instances: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.submitted: dict[int, dict[str, tuple[np.ndarray, int]]] = {}
        self.published: dict[int, np.ndarray] = {}
        SpyFederation.instances.append(self)

    def submit(self, worker_id, round_no, body, sample_count, loss, sha256):
        weights = decode_weights(body, self.n_params, sha256)
        self.submitted.setdefault(round_no, {})[worker_id] = (weights, sample_count)
        return super().submit(worker_id, round_no, body, sample_count, loss, sha256)

    def close_round(self, reason):
        round_no = self.open_round
        super().close_round(reason)
        self.published[round_no] = self.global_weights.copy()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    settings = load_settings(environ=SMALL)
    out = tmp_path_factory.mktemp("evaluation")
    lines = []
    mp = pytest.MonkeyPatch()
    mp.setattr(runner, "Federation", SpyFederation)
    mp.setattr(runner, "LATENT_POINTS", 300)
    mp.setattr(runner, "TIMING_CALLS", 50)
    try:
        results = runner.run_evaluation(settings, out, echo=lines.append)
    finally:
        mp.undo()
    return settings, out, results, lines


def test_federated_mode_runs_the_aggregators_round_logic(evaluated):
    settings, _, results, lines = evaluated
    fed = SpyFederation.instances[-1]
    assert fed.rounds_done == 2 and fed.phase in ("idle", "done")  # idle: continual rounds would follow
    assert sorted(fed.submitted) == [1, 2] and all(set(u) == {"valve1", "valve2", "other"}
                                                   for u in fed.submitted.values())
    # The published model of round 2 is FedAvg of what the workers submitted (sample-weighted mean).
    updates = fed.submitted[2].values()
    total = sum(n for _, n in updates)
    expected = sum(w.astype(np.float64) * n for w, n in updates) / total
    np.testing.assert_allclose(fed.published[2], expected, rtol=1e-6, atol=1e-7)
    assert {w: n for w, (_, n) in fed.submitted[2].items()} == {"valve1": 800, "valve2": 400, "other": 800}
    history = results["modes"]["federated"]["history"]
    assert [h["round"] for h in history] == [1, 2] and all(h["closed_by"] == "min_workers" for h in history)
    assert results["modes"]["federated"]["losses"]["valve1"] == [h["workers"]["valve1"]["loss"] for h in history]
    assert any("federated round 2/2" in line for line in lines)  # the progress display


def test_every_mode_and_kind_has_pooled_and_per_worker_figures(evaluated):
    _, out, results, _ = evaluated
    assert set(results["modes"]) == {"federated", "centralised", "local"}
    for mode in results["modes"].values():
        for kind in ("fp32", "int8"):
            entry = mode["kinds"][kind]
            pooled = entry["pooled"]
            assert set(entry["workers"]) == {"valve1", "valve2", "other"}
            assert pooled["rows"] == sum(w["rows"] for w in entry["workers"].values())
            assert pooled["counts"]["tp"] == sum(w["counts"]["tp"] for w in entry["workers"].values())
            for key in ("f1", "far", "mar", "roc_auc", "pr_auc"):
                assert np.isfinite(pooled[key])
        assert abs(mode["int8_vs_fp32"]["roc_auc_difference"]) < 0.05
    assert set(results["checks"]) and all("ok" in c for c in results["checks"].values())
    saved = json.loads((out / "results.json").read_text())
    assert saved["modes"]["federated"]["kinds"]["int8"]["pooled"] == results["modes"]["federated"]["kinds"]["int8"]["pooled"]
    table = format_table(results)
    assert "fedad federated int8" in table and "Conv-AE" in table


def test_held_out_rows_follow_skabs_protocol(evaluated):
    settings, out, results, _ = evaluated
    arrays = np.load(out / "arrays.npz")
    labels = arrays["labels/valve1/0"]
    scores = arrays["scores/federated/int8/valve1/0"]
    assert len(scores) == len(labels) == 1147  # every row of valve1/0.csv scored ...
    held = results["modes"]["federated"]["kinds"]["int8"]["workers"]["valve1"]["rows"]
    assert held == (1147 - 400) + (1145 - 400)  # ... but only rows after the first 400 of each file count


def test_report_is_one_html_file_with_every_figure(evaluated, tmp_path):
    _, out, _, _ = evaluated
    page = write_report(out, tmp_path / "report.html").read_text()
    for key in FIGURES:
        assert re.search(rf"id='{key}'>.*?<img[^>]+src='data:image/png;base64,[A-Za-z0-9+/=]{{1000,}}'", page,
                         re.S), f"figure {key} missing"
    assert "Conv-AE" in page and "fedad federated int8" in page
    assert "src='http" not in page and "<script" not in page  # self-contained


def test_each_node_serves_its_own_precision_and_the_table_ends_with_a_verdict(evaluated):
    settings, _, results, _ = evaluated
    served = results["modes"]["federated"]["served"]
    for worker, figures in served["workers"].items():
        chosen = figures["precision"]
        assert chosen["setting"] == "auto" and chosen["served"] in ("int8", "fp32")
        own = results["modes"]["federated"]["kinds"][chosen["served"]]["workers"][worker]
        assert figures["f1"] == own["f1"] and figures["threshold"] == own["threshold"]
        assert (chosen["served"] == "int8") == (chosen["roc_auc_int8"] >= chosen["roc_auc_fp32"] - 0.005)
    verdict, reference = results["verdict"], results["reference"]["pooled"]
    gap = served["pooled"]["roc_auc"] - reference["roc_auc"]
    assert verdict["ranks"] == ("level" if abs(gap) <= 0.005 else "above" if gap > 0 else "below")
    assert ("; try: " in verdict["line"]) == (verdict["ranks"] == "below")
    table = format_table(results).splitlines()
    assert table[0].startswith("model dense 18→8→4→8→18 (from the input width); measured on ")
    assert table[-1] == verdict["line"] and table[-1].startswith("verdict: the served detector (federated, ")
    assert (f"ROC-AUC {served['pooled']['roc_auc']:.3f} vs {reference['roc_auc']:.3f}; at the same threshold rule "
            f"F1 {served['pooled']['f1']:.3f} vs {reference['f1']:.3f}") in table[-1]


def test_skabs_changepoint_board_scores_the_served_alarms(evaluated):
    _, _, results, _ = evaluated
    board = results["changepoints"]
    assert board["alarms"]["changepoints"] == 18  # valve1/0, valve1/1, valve2/0, other/5, other/9: 4 + 4 + 4 + 2 + 4
    for series in ("alarms", "rows"):
        r = board[series]
        assert r["missed"] <= r["changepoints"] and -100 < r["low_fp"] <= r["standard"] <= 100
    assert "SKAB changepoint board" in format_table(results) and "leaderboard: MSCRED" in format_table(results)
