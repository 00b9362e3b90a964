"""A plain verdict per data set: does the detector a node serves rank its held-out rows better than a default
IsolationForest fitted in the same run on the same inputs, and if not, what to try.

Tables do not say whether a user's data is served well; this does, in one line. Both detectors are compared pooled
over every node's held-out rows: ROC-AUC (how well the scores rank faults above normal rows, each score divided by its
node's threshold as ``runner.pooled`` does), and F1 / FAR at the same threshold rule (``threshold.rule`` on each
detector's own training scores). ``fedad evaluate`` prints it from its results; ``fedad run`` from the versions the
workers serve, read from their state folders, and a forest it fits itself (services/evaluation/live.py).
"""

from __future__ import annotations

from services.config import Settings, default_hidden

LEVEL = 0.005  # ROC-AUC points within which the two count as level


def verdict(served: dict, reference: dict, settings: Settings, what: str = "the served detector") -> dict:
    """``served`` / ``reference``: pooled figures (``runner.pooled``). Returns ``{"ranks", "line", "advice"}``,
    ranks being ``above``, ``level``, ``below`` or ``unknown`` (no labels, or one class only)."""
    if not served.get("labels", True) or "roc_auc" not in served or "roc_auc" not in reference:
        line = (f"verdict: no labelled faults among the held-out rows, so no ranking; {what} flags "
                f"{_rate(served)} of them, the same-run IsolationForest {_rate(reference)}")
        return {"ranks": "unknown", "line": line, "advice": []}
    ours, theirs = served["roc_auc"], reference["roc_auc"]
    ranks = "level" if abs(ours - theirs) <= LEVEL else "above" if ours > theirs else "below"
    words = {"above": "ranks held-out faults better than", "level": "ranks held-out faults as well as",
             "below": "ranks held-out faults WORSE than"}[ranks]
    line = (f"verdict: {what} {words} the same-run IsolationForest: ROC-AUC {ours:.3f} vs {theirs:.3f}; at the same "
            f"threshold rule F1 {served['f1']:.3f} vs {reference['f1']:.3f}, FAR {served['far']:.2f} % vs "
            f"{reference['far']:.2f} %")
    advice = advice_for(settings) if ranks == "below" else []
    if advice:
        line += "; try: " + "; ".join(advice)
    return {"ranks": ranks, "line": line, "advice": advice, "roc_auc": ours, "reference_roc_auc": theirs}


def advice_for(settings: Settings) -> list[str]:
    """What to try, most likely first, from what the config does now (each a key to change)."""
    model, data = settings.model, settings.data
    width = settings.input_width
    tips = []
    if model.kind == "dense" and model.hidden is not None and not model._derived \
            and model.hidden != default_hidden(width):
        tips.append(f"the default shape for {width} inputs (remove model.hidden: {default_hidden(width)})")
    if model.score == "error":
        tips.append("model.score: error_and_t2 (adds the distance from the node's normal centre, which sees values "
                    "out of their normal range)")
    if data.window > 1 and not data.window_stats:
        tips.append(f"window statistics instead of the {data.window} flattened rows (data.window_stats: [mean, std, "
                    "slope]: a few values per channel the model can fit, where raw rows are mostly noise)")
    elif data.window == 1 and data.source.timestamp_columns:
        tips.append("windows: data.window 10 with data.window_stats [mean, std, slope] (a fault often shows in how "
                    "rows change)")
    elif data.window > 1:
        tips.append(f"another window length (data.window, now {data.window})")
    if model.kind == "dense" and data.window > 1:
        tips.append("model.kind conv1d or lstm over the raw window (`make evaluate` compares the kinds)")
    tips.append("more training rows (data.training), or more rounds (federation.rounds)")
    return tips


def _rate(figures: dict) -> str:
    return f"{figures['alarm_rate']:.2f} %" if "alarm_rate" in figures else "an unknown share"
