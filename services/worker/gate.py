"""The gate: is a newly installed model fit to replace the one this worker serves? (config ``models.gate``)

A federated round can make a node's detector worse — another node's data pulls the weights away, a faulty or
malicious worker poisons the aggregate, noise drowns the signal. So before a new model is served it is compared
with the served one on the node's own held-out rows, each model at its own threshold:

- labelled rows: F1 may drop at most ``max_f1_drop``. F1 already weighs false alarms against missed faults, so a
  model that trades a few more false alarms for many more caught faults passes;
- unlabelled rows: the alarm rate on the held-out rows may rise at most ``max_alarm_rate_increase`` percentage
  points (the rate on label-normal rows is shown beside F1 but not judged);
- always: the mean score of held-out normal rows, new / served, may be at most ``max_error_ratio`` (a model that
  reconstructs normal rows much worse has learned something else: a poisoned or noised aggregate fails here first).

The first model passes (nothing to compare it with). Pure functions of figures: no files, no sessions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from services.config import GateSettings
from services.model.metrics import detection_metrics


@dataclass(frozen=True)
class GateFigures:
    """One model's figures on the held-out rows, at its own threshold."""

    alarm_rate: float  # % of held-out normal rows scored above the threshold
    mean_score: float  # mean score of held-out normal rows
    normal_rows: int
    f1: float | None = None  # labelled held-out rows only

    @classmethod
    def of(cls, scores: np.ndarray, threshold: float, labels: np.ndarray | None) -> GateFigures:
        scores = np.asarray(scores, dtype=np.float64)
        normal = np.ones(len(scores), bool) if labels is None else np.asarray(labels) == 0
        picked = scores[normal]
        if not len(picked):  # every held-out row an anomaly: the alarm rate says nothing, judge all rows
            picked = scores
        with np.errstate(all="ignore"):
            alarm_rate = 100 * float(np.mean(picked > threshold)) if len(picked) else 0.0
            mean_score = float(np.mean(picked)) if len(picked) else 0.0
        f1 = None
        if labels is not None and len(scores):
            f1 = float(detection_metrics(labels, scores > threshold)["f1"])
        return cls(alarm_rate=alarm_rate, mean_score=mean_score, normal_rows=int(len(picked)), f1=f1)

    def as_dict(self) -> dict:
        return {"normal_alarm_rate": _finite(round(self.alarm_rate, 3)), "normal_mean_score": _finite(self.mean_score),
                "normal_rows": self.normal_rows, "f1": _finite(self.f1)}


@dataclass(frozen=True)
class Check:
    figure: str
    new: float | None
    served: float | None
    bound: float  # the most the new value may reach
    rule: str  # the configured key and value the bound comes from
    passed: bool
    limit: str = "at most"  # the bound is a ceiling, or "at least": a floor

    def as_dict(self) -> dict:
        return {"figure": self.figure, "new": _finite(self.new), "served": _finite(self.served),
                "bound": _finite(self.bound), "limit": self.limit, "rule": self.rule, "passed": self.passed}

    def describe(self) -> str:
        return (f"{self.figure} {_text(self.new)} (served model {_text(self.served)}), "
                f"{'' if self.passed else 'must be '}{self.limit} {_text(self.bound)} ({self.rule})")


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    checks: tuple[Check, ...] = ()

    def as_dict(self) -> dict:
        return {"passed": self.passed, "reason": self.reason, "checks": [c.as_dict() for c in self.checks]}


def decide(new: GateFigures, served: GateFigures | None, rule: GateSettings) -> GateDecision:
    """Pass or refuse ``new`` against ``served`` (None: nothing served yet, so it passes)."""
    if served is None:
        return GateDecision(True, "first model: nothing served to compare it with")
    checks = compare(new, served, rule)
    failed = [c for c in checks if not c.passed]
    if not rule.enabled:
        return GateDecision(True, "gate disabled (models.gate.enabled false)", checks)
    if failed:
        return GateDecision(False, "refused: " + "; ".join(c.describe() for c in failed), checks)
    return GateDecision(True, "passed the gate: " + "; ".join(c.describe() for c in checks), checks)


def compare(new: GateFigures, served: GateFigures, rule: GateSettings) -> tuple[Check, ...]:
    checks = []
    if new.f1 is not None and served.f1 is not None:
        bound = served.f1 - rule.max_f1_drop
        checks.append(Check("held-out F1", new.f1, served.f1, bound, f"max_f1_drop {rule.max_f1_drop:g}",
                            _at_least(new.f1, bound), "at least"))
    if not checks:  # no labels: the alarm rate is the only figure of detection there is
        bound = served.alarm_rate + rule.max_alarm_rate_increase
        checks.append(Check("alarm rate on held-out normal rows (%)", new.alarm_rate, served.alarm_rate, bound,
                          f"max_alarm_rate_increase {rule.max_alarm_rate_increase:g} points",
                          _at_most(new.alarm_rate, bound)))
    bound = served.mean_score * rule.max_error_ratio
    checks.append(Check("mean score of held-out normal rows", new.mean_score, served.mean_score, bound,
                        f"max_error_ratio {rule.max_error_ratio:g} × served; new/served "
                        f"{_text(_ratio(new.mean_score, served.mean_score))}", _at_most(new.mean_score, bound)))
    return tuple(checks)


EPS = 1e-9  # figures rounded to a few decimals must not fail a bound they meet


def _at_most(value: float, bound: float) -> bool:
    return math.isfinite(value) and value <= bound + EPS  # NaN or inf (a blown-up model) never passes


def _at_least(value: float, bound: float) -> bool:
    return math.isfinite(value) and value >= bound - EPS


def _ratio(new: float, served: float) -> float:
    with np.errstate(all="ignore"):
        return float(np.float64(new) / np.float64(served)) if served else (math.inf if new else 1.0)


def _finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: such a figure is reported as null (the reason text still says it)."""
    return value if value is None or math.isfinite(value) else None


def _text(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" if math.isfinite(value) else str(value)
