"""Which precision a node serves, int8 or fp32, decided by measurement on that node (``serving.model: auto``).

int8 is not a free lunch here: its sessions are no faster than fp32 for models this small (BENCHMARKS.md), and its
rounding moves the scores of a narrow, well-fitted autoencoder by about as much as the reconstruction errors it ranks
(docs/quality.md "int8 on narrow models": every quantised layer alone costs as much, whatever the calibration method
or whether the last layer's output stays float). Its kernels also differ by CPU. So at every install a worker scores
its own held-out rows with both sessions, each at its own threshold, and serves int8 only when it ranks them as well:

- with labels (both classes among the held-out rows): int8's ROC-AUC at most ``AUC_TOLERANCE`` below fp32's;
- without: the scores rank the rows alike (Spearman ≥ ``RANK_TOLERANCE``) and the alarm rates differ by at most
  ``ALARM_RATE_TOLERANCE`` percentage points.

``int8`` and ``fp32`` force one precision (the figures are still measured and reported); model kinds whose int8 file
is not int8 (services/config.INT8_REFUSED) serve fp32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from services.config import INT8_REFUSED
from services.model.metrics import roc_auc

AUC_TOLERANCE = 0.005  # ROC-AUC points int8 may lose to fp32
RANK_TOLERANCE = 0.99  # Spearman rank correlation of the two sessions' scores, without labels
ALARM_RATE_TOLERANCE = 0.5  # percentage points of held-out rows flagged, without labels


@dataclass(frozen=True)
class PrecisionChoice:
    served: str  # int8 | fp32
    setting: str  # serving.model: auto | int8 | fp32
    reason: str  # one sentence with the figures
    rows: int = 0  # held-out rows compared
    roc_auc_int8: float | None = None
    roc_auc_fp32: float | None = None
    rank_agreement: float | None = None  # Spearman of the two sessions' scores
    alarm_rate_int8: float | None = None  # % of the compared rows flagged
    alarm_rate_fp32: float | None = None

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def choose(setting: str, kind: str, scores: dict[str, np.ndarray], thresholds: dict[str, float],
           labels: np.ndarray | None) -> PrecisionChoice:
    """``scores`` / ``thresholds``: each precision's scores of the same held-out rows and its own alarm limit."""
    figures = compare(scores, thresholds, labels)
    if kind in INT8_REFUSED:
        return PrecisionChoice("fp32", setting, f"fp32: {kind} has no real int8 model ({INT8_REFUSED[kind]})",
                               **figures)
    if setting in ("int8", "fp32"):
        return PrecisionChoice(setting, setting, f"{setting}: forced by serving.model ({_figures_text(figures)})",
                               **figures)
    if figures["rows"] == 0:
        return PrecisionChoice("fp32", setting, "fp32: no held-out rows to check int8 on", **figures)
    auc8, auc32 = figures.get("roc_auc_int8"), figures.get("roc_auc_fp32")
    if auc8 is not None and auc32 is not None:
        ok = auc8 >= auc32 - AUC_TOLERANCE
        rule = f"int8 ROC-AUC {auc8:.4f} vs fp32 {auc32:.4f} on {figures['rows']} held-out rows " \
               f"({'within' if ok else 'more than'} {AUC_TOLERANCE} below)"
    else:
        rank, gap = figures["rank_agreement"], abs(figures["alarm_rate_int8"] - figures["alarm_rate_fp32"])
        ok = rank >= RANK_TOLERANCE and gap <= ALARM_RATE_TOLERANCE
        rule = (f"no labels: scores rank alike {rank:.4f} (needs >= {RANK_TOLERANCE}), alarm rates "
                f"{figures['alarm_rate_int8']:.2f} % vs {figures['alarm_rate_fp32']:.2f} % (needs within "
                f"{ALARM_RATE_TOLERANCE} points) on {figures['rows']} held-out rows")
    return PrecisionChoice("int8" if ok else "fp32", setting, f"{'int8' if ok else 'fp32'}: {rule}", **figures)


def compare(scores: dict[str, np.ndarray], thresholds: dict[str, float], labels: np.ndarray | None) -> dict:
    """ROC-AUC of each (when the rows hold both classes), rank agreement and alarm rates."""
    s8, s32 = (np.asarray(scores[p], dtype=np.float64) for p in ("int8", "fp32"))
    finite = np.isfinite(s8) & np.isfinite(s32)
    s8, s32 = s8[finite], s32[finite]
    out: dict = {"rows": int(len(s8))}
    if not len(s8):
        return out
    out["alarm_rate_int8"] = 100 * float(np.mean(s8 > thresholds["int8"]))
    out["alarm_rate_fp32"] = 100 * float(np.mean(s32 > thresholds["fp32"]))
    out["rank_agreement"] = spearman(s8, s32)
    if labels is not None:
        y = np.asarray(labels)[finite].astype(bool)
        if 0 < y.sum() < len(y):
            out["roc_auc_int8"], out["roc_auc_fp32"] = roc_auc(y, s8), roc_auc(y, s32)
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (ties averaged); 1.0 for two constant score vectors, which rank nothing differently."""
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 1.0 if ra.std() == rb.std() else 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2)[inverse]


def _figures_text(figures: dict) -> str:
    if figures.get("roc_auc_int8") is not None:
        return f"int8 ROC-AUC {figures['roc_auc_int8']:.4f}, fp32 {figures['roc_auc_fp32']:.4f}"
    if figures.get("rank_agreement") is not None:
        return f"scores rank alike {figures['rank_agreement']:.4f}"
    return "nothing to compare on"
