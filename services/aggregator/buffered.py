"""Asynchronous buffered aggregation (``federation.mode: async``): FedBuff with a polynomial staleness weight.

A node trains on global model v and sends its weights to round v + 1 whenever it is done, however far the federation
has moved on meanwhile. The aggregator folds each update into a buffer as it arrives and publishes a new global model
every ``buffer_size`` updates (or at the round deadline with a quorum), so a straggler never holds anyone up
(FedBuff: Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS 2022, Algorithm 1).

An update based on version v that arrives while version c is current is s = c - v versions stale. Its change to the
model it trained on, Δ = w - g_v, counts with the weight

    s(τ) = (1 + τ) ** -a,   a = federation.staleness_exponent (0.5: 1 / sqrt(1 + τ))

the polynomial staleness function of FedAsync (Xie, Koyejo, Gupta, "Asynchronous Federated Optimization", 2019,
§5.2), the one FedBuff's experiments use. Updates more than ``max_staleness`` versions old are refused (409
``too_stale``): their change was computed on a model too far from the current one to help.

How it meets the aggregation rules: each update is rebased onto the current global model g_c as

    w' = g_c + s(τ) · (w - g_v)

and handed to the configured strategy chain (services/aggregator/strategies.py) exactly like a synchronous update.
FedAvg of the buffer then gives g_c + Σ nᵢ s(τᵢ) Δᵢ / Σ nᵢ: FedBuff's step with a server learning rate of 1 and
sample-weighted averaging, and, for updates that are all fresh (τ = 0, w' = w), the same model a synchronous round
would publish. Clipping bounds each rebased change, server-side DP noises each published model (one Gaussian release
per version for the accountant), and median / trimmed mean take the coordinate-wise rule over the rebased updates.
"""

from __future__ import annotations

import numpy as np


def staleness_weight(staleness: int, exponent: float) -> float:
    """FedAsync's polynomial s(τ) = (1 + τ) ** -a: 1 for a fresh update, 1/sqrt(2) one version behind at a = 0.5."""
    return float((1.0 + max(0, staleness)) ** -exponent)


def rebase(weights: np.ndarray, base: np.ndarray, current: np.ndarray, factor: float) -> np.ndarray:
    """The update's change to the model it trained on, scaled by ``factor`` and applied to the current model."""
    if factor == 1.0 and base is current:
        return weights
    change = np.asarray(weights, np.float64) - np.asarray(base, np.float64)
    return (np.asarray(current, np.float64) + factor * change).astype(np.float32)


class RecentModels:
    """The global models updates may still be based on: the current one and the ``keep`` before it."""

    def __init__(self, keep: int):
        self.keep = keep
        self.models: dict[int, np.ndarray] = {}

    def add(self, round_no: int, weights: np.ndarray) -> None:
        self.models[round_no] = weights
        for old in [r for r in self.models if r < round_no - self.keep]:
            del self.models[old]

    def get(self, round_no: int) -> np.ndarray | None:
        return self.models.get(round_no)
