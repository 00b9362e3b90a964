"""The verdict line: the served detector against the same-run IsolationForest, and what to try when it ranks below."""

from services.config import load_settings
from services.evaluation.verdict import verdict

SKAB = load_settings(environ={})


def figures(auc, f1=0.5, far=5.0):
    return {"labels": True, "roc_auc": auc, "f1": f1, "far": far}


def test_above_level_and_below():
    above = verdict(figures(0.886, 0.834, 11.64), figures(0.695, 0.127, 1.02), SKAB)
    assert above["ranks"] == "above" and not above["advice"]
    assert above["line"] == ("verdict: the served detector ranks held-out faults better than the same-run "
                             "IsolationForest: ROC-AUC 0.886 vs 0.695; at the same threshold rule F1 0.834 vs 0.127, "
                             "FAR 11.64 % vs 1.02 %")
    assert verdict(figures(0.800), figures(0.803), SKAB)["ranks"] == "level"
    below = verdict(figures(0.714), figures(0.755), SKAB)
    assert below["ranks"] == "below" and "WORSE than" in below["line"] and "; try: " in below["line"]


def test_advice_follows_the_config():
    flattened = load_settings(environ={"FEDAD__DATA__WINDOW_STATS": "[]", "FEDAD__MODEL__HIDDEN": "[64, 32, 64]"})
    advice = verdict(figures(0.7), figures(0.8), flattened)["advice"]
    assert advice[0] == "the default shape for 120 inputs (remove model.hidden: [60, 30, 60])"
    assert any(a.startswith("model.score: error_and_t2") for a in advice)  # config.yaml's SKAB choice: error
    assert any(a.startswith("window statistics instead of the 20 flattened rows") for a in advice)
    t2 = load_settings(environ={"FEDAD__MODEL__SCORE": "error_and_t2"})
    assert not any("model.score" in a for a in verdict(figures(0.7), figures(0.8), t2)["advice"])


def test_without_labelled_faults_there_is_no_ranking():
    result = verdict({"labels": False, "alarm_rate": 1.5}, {"labels": False, "alarm_rate": 0.9}, SKAB)
    assert result["ranks"] == "unknown" and "flags 1.50 % of them, the same-run IsolationForest 0.90 %" in result["line"]
