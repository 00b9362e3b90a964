"""SKAB's changepoint board: NAB scores (standard, LowFP, LowFN) of the served detector's alarms.

SKAB scores changepoint detection with its variant of the Numenta Anomaly Benchmark (NAB) score, computed by its public
scoring code (waico/SKAB ``core/metrics.py``, ``chp_score``, taken from the tsad library; the leaderboard's settings in
its notebooks: ``window_width="60s"``, ``anomaly_window_destination="righter"``). That code is GPL-3.0; the rules are
re-implemented here from its description and behaviour, not copied:

- the true changepoints are the test rows whose ``changepoint`` column is 1 (SKAB marks where each fault's transition
  begins and ends, four per file mostly); each opens a detection window from its time to 60 s after it; where a window
  reaches the next one, the next one starts where the first ends ("cut right window");
- a detector's predicted changepoints are the rows where its 0/1 output changes (``|diff|``), plus the first test row
  if it is 1 there — SKAB's notebooks derive them so from the outlier predictions;
- in each window only the first predicted changepoint counts: it scores A_tp at the window's start falling to A_fp at
  its end along the scaled tanh ``(A_tp − A_fp)/2 · (−tanh(x) / tanh(π/2)) + (A_tp − A_fp)/2 + A_fp``, x from −π/2 to
  π/2 over the window in 1,000 steps; a window without one scores A_fn; every predicted changepoint outside all
  windows scores A_fp (later ones inside a window count for nothing);
- profiles (A_tp, A_fp, A_fn): standard (1, −0.11, −1), LowFP (1, −0.22, −1), LowFN (1, −0.11, −2); per profile, summed
  over files, 100 × (score − null) / (perfect − null), null = windows × A_fn, perfect = windows × A_tp.

The leaderboard (SKAB's README, its test set): MSCRED standard 32.42, Isolation forest 26.16, Conv-AE 23.61 with LowFP
21.54 (82 missed changepoints, 23 false positives of 127). tests/evaluation/test_changepoints.py checks the rules on
hand-made cases.
"""

from __future__ import annotations

import math

import numpy as np

PROFILES = {"standard": (1.0, -0.11, -1.0), "low_fp": (1.0, -0.22, -1.0), "low_fn": (1.0, -0.11, -2.0)}
WINDOW = np.timedelta64(60, "s")  # the leaderboard's window_width, to the right of each true changepoint
STEPS = 1000  # resolution of the scaled tanh
LEADERBOARD = [("MSCRED", 32.42, 16.53, 40.28), ("Isolation forest", 26.16, 19.5, 30.82),
               ("T-squared+Q (PCA-based)", 25.35, 14.51, 31.33), ("Conv-AE", 23.61, 21.54, 27.55),
               ("LSTM-AE", 23.51, 20.11, 25.91), ("Vanilla AE", 11.41, 6.53, 13.91)]
CHANGEPOINT_COLUMN = "changepoint"


def windows(changepoint_times: np.ndarray, width: np.timedelta64 = WINDOW) -> list[list[np.datetime64]]:
    """[start, end] after each true changepoint; an overlapping window starts where the one before it ends."""
    out = [[t, t + width] for t in np.sort(np.asarray(changepoint_times))]
    for before, after in zip(out, out[1:]):
        if before[1] >= after[0]:
            after[0] = before[1]
    return out


def predicted(flags: np.ndarray) -> np.ndarray:
    """Indices where a 0/1 series changes, and 0 when it starts at 1."""
    flags = np.asarray(flags).astype(np.int8)
    changes = np.flatnonzero(np.diff(flags) != 0) + 1
    return np.r_[[0] if len(flags) and flags[0] else [], changes].astype(int)


def _tp_score(start, first, end, a_tp: float, a_fp: float) -> float:
    span = (end - start) / np.timedelta64(1, "ms")
    event = min(int((first - start) / np.timedelta64(1, "ms") / span * STEPS), STEPS - 1) if span > 0 else 0
    x = -math.pi / 2 + event * math.pi / (STEPS - 1)
    return (a_tp - a_fp) / 2 * (-math.tanh(x) / math.tanh(math.pi / 2)) + (a_tp - a_fp) / 2 + a_fp


def run_outcome(true_times: np.ndarray, predicted_times: np.ndarray) -> dict:
    """One file: the first prediction in each window, the windows missed, the predictions outside every window."""
    boxes = windows(true_times)
    predicted_times = np.sort(np.asarray(predicted_times))
    hits, missed = [], 0
    outside = np.ones(len(predicted_times), dtype=bool)
    for start, end in boxes:
        inside = (predicted_times >= start) & (predicted_times <= end)
        outside &= ~inside
        if inside.any():
            hits.append((start, predicted_times[inside][0], end))
        else:
            missed += 1
    return {"windows": len(boxes), "hits": hits, "missed": missed, "false_positives": int(outside.sum())}


def nab_scores(outcomes: list[dict]) -> dict:
    """Standard, LowFP and LowFN scores (0 = the null detector, 100 = perfect) over every file's outcome."""
    out = {}
    n = sum(o["windows"] for o in outcomes)
    for profile, (a_tp, a_fp, a_fn) in PROFILES.items():
        score = 0.0
        for o in outcomes:
            score += a_fp * o["false_positives"] + a_fn * o["missed"]
            score += sum(_tp_score(start, first, end, a_tp, a_fp) for start, first, end in o["hits"])
        null, perfect = n * a_fn, n * a_tp
        out[profile] = round(100 * (score - null) / (perfect - null), 2) if n else None
    out.update(changepoints=n, missed=sum(o["missed"] for o in outcomes),
               false_positives=sum(o["false_positives"] for o in outcomes))
    return out


def alarm_state(flags: np.ndarray, open_after: int, clear_after: int) -> np.ndarray:
    """The debounced alarm of a stream (services/worker/alarms.py) as a 0/1 series: open from the first of
    ``open_after`` consecutive flagged rows, closed again from the ``clear_after``-th consecutive normal row."""
    flags = np.asarray(flags).astype(bool)
    state = np.zeros(len(flags), dtype=np.int8)
    is_open, anomalous, normal = False, 0, 0
    for i, flag in enumerate(flags):
        if flag:
            anomalous, normal = anomalous + 1, 0
            if not is_open and anomalous >= open_after:
                is_open = True
                state[i - anomalous + 1:i] = 1
        else:
            anomalous, normal = 0, normal + 1
            if is_open and normal >= clear_after:
                is_open = False
        state[i] = is_open
    return state


def board(runs: list[dict], open_after: int, clear_after: int) -> dict:
    """``runs``: per test file its held-out ``times``, ``changepoints`` (0/1) and the detector's ``flags``. Scores
    of the raw row flags and of the debounced alarms (what an operator is shown)."""
    out: dict = {}
    for name, series in (("alarms", lambda f: alarm_state(f, open_after, clear_after)), ("rows", lambda f: f)):
        outcomes = [run_outcome(r["times"][np.asarray(r["changepoints"]) == 1],
                                r["times"][predicted(series(r["flags"]))]) for r in runs]
        out[name] = nab_scores(outcomes)
    out["open_after"], out["clear_after"] = open_after, clear_after
    return out


def skab_board(settings, nodes: dict, scored: dict) -> dict:
    """The board for SKAB's held-out rows and the detector each node serves (``runner.score_trained``'s
    ``served``): the changepoint column read through the same source, its rows in the same order."""
    from services.config import LabelSettings
    from services.data.sources import load_node

    marked = settings.model_copy(deep=True)
    marked.data.source.label = LabelSettings(column=CHANGEPOINT_COLUMN, normal=[0])
    runs = []
    for worker in settings.workers:
        node, served = nodes[worker.id], scored[worker.id]["served"]
        for run, cp_run, mask, scores in zip(node.runs, load_node(marked, worker).runs, node.masks,
                                             served["run_scores"]):
            held = ~mask
            assert run.timestamps is not None and cp_run.labels is not None  # SKAB: a clock and both columns
            runs.append({"times": run.timestamps[held], "changepoints": cp_run.labels[held],
                         "flags": scores[held] > served["threshold"]})
    return board(runs, settings.alarms.open_after, settings.alarms.clear_after)


def format_board(result: dict) -> list[str]:
    lines = [f"SKAB changepoint board (NAB, 60 s windows after each of {result['alarms']['changepoints']} true "
             "changepoints; SKAB's scoring rules):",
             f"  {'detector':<52} {'standard':>9} {'LowFP':>7} {'LowFN':>7} {'missed':>7} {'FPs':>5}"]
    for key, name in (("alarms", f"served, alarms (open after {result['open_after']}, clear after "
                                 f"{result['clear_after']} rows)"), ("rows", "served, every flagged row")):
        r = result[key]
        lines.append(f"  {name:<52} {r['standard']:>9.2f} {r['low_fp']:>7.2f} {r['low_fn']:>7.2f} "
                     f"{r['missed']:>7} {r['false_positives']:>5}")
    for name, standard, low_fp, low_fn in LEADERBOARD:
        lines.append(f"  {'leaderboard: ' + name:<52} {standard:>9.2f} {low_fp:>7.2f} {low_fn:>7.2f}")
    return lines
