"""Pluggable stages for weights crossing the wire, in the spirit of NVIDIA FLARE's DXO filters: one interface,
applied to what comes in (the aggregator's view of each update) or goes out (a worker's update before upload, the
aggregator's new global model before it is published). Each stage is a small class; a chain is a list of them.

An *update* here is a worker's new weights; its *change* (delta) is the difference to the global model the worker
started from, which the filter gets as ``context.reference``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import numpy as np


@dataclass
class FilterContext:
    reference: np.ndarray  # the global weights the update started from
    weight_share: float = 1.0  # this contribution's largest share of the aggregate (server-side noise scales with it)
    notes: dict = field(default_factory=dict)  # what the stages did, for logs and status


def update_norm(weights: np.ndarray, reference: np.ndarray) -> float:
    """L2 norm of an update's change to the weights it started from (float64, whatever the inputs' dtype)."""
    return float(np.linalg.norm(np.asarray(weights, dtype=np.float64) - np.asarray(reference, dtype=np.float64)))


class Filter:
    name = "filter"

    def process(self, weights: np.ndarray, context: FilterContext) -> np.ndarray:
        raise NotImplementedError


class ClipUpdateNorm(Filter):
    """Scale the change to the global model down to an L2 norm of at most ``max_norm`` (a no-op below it). Bounds
    how far any one worker can pull the federation, and is the sensitivity bound that DP noise is calibrated to."""

    name = "clip"

    def __init__(self, max_norm: float):
        if max_norm <= 0:
            raise ValueError("max_norm must be > 0")
        self.max_norm = float(max_norm)

    def process(self, weights: np.ndarray, context: FilterContext) -> np.ndarray:
        norm = update_norm(weights, context.reference)
        context.notes["update_norm"] = norm
        context.notes["clipped"] = norm > self.max_norm
        if norm <= self.max_norm:
            return np.asarray(weights, dtype=np.float32)
        reference = np.asarray(context.reference, dtype=np.float64)
        delta = np.asarray(weights, dtype=np.float64) - reference
        return (reference + delta * (self.max_norm / norm)).astype(np.float32)


class GaussianNoise(Filter):
    """Add N(0, σ²) to every weight, σ = noise_multiplier × clip_norm × context.weight_share: the Gaussian mechanism
    for a contribution whose L2 sensitivity is clip_norm × its share (1 for a single update sent by a worker)."""

    name = "noise"

    def __init__(self, noise_multiplier: float, clip_norm: float, rng: np.random.Generator | None = None):
        self.noise_multiplier = float(noise_multiplier)
        self.clip_norm = float(clip_norm)
        self.rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))

    def process(self, weights: np.ndarray, context: FilterContext) -> np.ndarray:
        std = self.noise_multiplier * self.clip_norm * context.weight_share
        context.notes["noise_std"] = std
        if std == 0:
            return np.asarray(weights, dtype=np.float32)
        noise = self.rng.normal(0.0, std, size=np.shape(weights))
        return (np.asarray(weights, dtype=np.float64) + noise).astype(np.float32)


def apply(chain: list[Filter], weights: np.ndarray, context: FilterContext) -> np.ndarray:
    for stage in chain:
        weights = stage.process(weights, context)
    return weights


def client_privacy_filters(privacy, rng: np.random.Generator | None = None) -> list[Filter]:
    """A worker's outbound chain with client-side DP: clip its own update, then add noise to it."""
    if not (privacy.enabled and privacy.side == "client"):
        return []
    return [ClipUpdateNorm(privacy.clip_norm), GaussianNoise(privacy.noise_multiplier, privacy.clip_norm, rng)]
