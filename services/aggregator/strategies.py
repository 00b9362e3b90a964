"""Aggregation rules: one small class each over one interface, the maths in pure numpy functions.

A strategy sees updates one at a time as they arrive (``add``). FedAvg keeps a running weighted sum, so its memory
stays one model's worth however many workers report; the robust rules (coordinate-wise median, trimmed mean) need
every update of the round and keep them.

Clipping and server-side differential privacy wrap a rule instead of living beside it, as Flower composes them
(``DifferentialPrivacyServerSideFixedClipping(strategy, …)`` in flwr/server/strategy/dp_fixed_clipping.py): the
wrapper clips each update on its way in and noises the aggregate on its way out; the rule inside never knows.
``from_settings`` builds the chain config.yaml describes.
"""

from __future__ import annotations

import math

import numpy as np

from services.config import Settings
from services.security.accountant import GaussianAccountant
from services.security.filters import ClipUpdateNorm, FilterContext, GaussianNoise


# -- the maths ---------------------------------------------------------------------------------------------------------
def weighted_mean(updates: np.ndarray, sample_counts: np.ndarray) -> np.ndarray:
    """Sample-weighted mean of the rows of ``updates`` (n_workers × n_params)."""
    w = np.asarray(sample_counts, dtype=np.float64)
    return (np.asarray(updates, dtype=np.float64) * w[:, None]).sum(axis=0) / w.sum()


def coordinate_median(updates: np.ndarray) -> np.ndarray:
    """Per parameter, the median over workers (Yin et al., 2018): any minority of arbitrary updates moves it at most
    to the range of the honest values."""
    return np.median(np.asarray(updates, dtype=np.float64), axis=0)


def trimmed_mean(updates: np.ndarray, trim_fraction: float) -> np.ndarray:
    """Per parameter, drop the ⌊β·n⌋ largest and ⌊β·n⌋ smallest values over workers and average the rest (Yin et
    al., 2018). β = 0 is the plain (unweighted) mean; with too few workers to trim, nothing is trimmed."""
    values = np.sort(np.asarray(updates, dtype=np.float64), axis=0)
    n = values.shape[0]
    k = int(np.floor(trim_fraction * n))
    if n - 2 * k < 1:
        k = (n - 1) // 2
    return values[k:n - k].mean(axis=0)


# -- the strategies ----------------------------------------------------------------------------------------------------
class Strategy:
    name = "base"
    robust = False  # True: the result does not follow a minority of arbitrary updates
    clip_norm: float | None = None  # the L2 bound on each update's change, when a wrapper clips

    def begin(self, global_weights: np.ndarray) -> None:
        raise NotImplementedError

    def add(self, weights: np.ndarray, sample_count: int) -> None:
        raise NotImplementedError

    def result(self) -> np.ndarray:
        raise NotImplementedError

    def state_dict(self) -> dict | None:
        """Long-lived state to checkpoint with the run (a privacy budget); None: nothing outlives a round."""
        return None

    def load_state_dict(self, state: dict | None) -> None:
        pass


class FedAvg(Strategy):
    """Sample-weighted mean of the updates (McMahan et al., 2017)."""

    name = "fedavg"

    def begin(self, global_weights: np.ndarray) -> None:
        self._sum = np.zeros(global_weights.shape, dtype=np.float64)
        self._scratch = np.empty_like(self._sum)  # update × its count, reused: no new model-sized array per update
        self._count = 0

    def add(self, weights: np.ndarray, sample_count: int) -> None:
        np.multiply(weights, sample_count, out=self._scratch, dtype=np.float64)
        self._sum += self._scratch
        self._count += sample_count

    def result(self) -> np.ndarray:
        if self._count == 0:
            raise ValueError("no updates to aggregate")
        return np.divide(self._sum, self._count, out=np.empty(self._sum.shape, np.float32), casting="same_kind")


class _Collecting(Strategy):
    """Keeps every update of the round (n × model size floats) for rules that need them all at once."""

    robust = True

    def begin(self, global_weights: np.ndarray) -> None:
        self._updates: list[np.ndarray] = []

    def add(self, weights: np.ndarray, sample_count: int) -> None:
        self._updates.append(np.asarray(weights, dtype=np.float32))

    def result(self) -> np.ndarray:
        if not self._updates:
            raise ValueError("no updates to aggregate")
        return self.combine(np.stack(self._updates)).astype(np.float32)

    def combine(self, updates: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Median(_Collecting):
    """Coordinate-wise median: ignores sample counts (a worker could inflate its own)."""

    name = "median"

    def combine(self, updates: np.ndarray) -> np.ndarray:
        return coordinate_median(updates)


class TrimmedMean(_Collecting):
    """Coordinate-wise trimmed mean with ``trim_fraction`` cut from each end."""

    name = "trimmed_mean"

    def __init__(self, trim_fraction: float = 0.2):
        if not 0 <= trim_fraction < 0.5:
            raise ValueError("trim_fraction must be in [0, 0.5)")
        self.trim_fraction = trim_fraction

    def combine(self, updates: np.ndarray) -> np.ndarray:
        return trimmed_mean(updates, self.trim_fraction)


# -- wrappers ------------------------------------------------------------------------------------------------------
class FixedClipping(Strategy):
    """``inner`` over updates whose change to the global model is clipped to an L2 norm of ``clip_norm``: no one
    worker pulls the federation further than that (federation.clip_norm)."""

    def __init__(self, inner: Strategy, clip_norm: float):
        self.inner = inner
        self.clip = ClipUpdateNorm(clip_norm)
        self.name, self.robust = inner.name, inner.robust
        self.clip_norm = min(clip_norm, inner.clip_norm or math.inf)
        self._reference = np.empty(0, np.float32)  # the round's global weights (begin)

    def begin(self, global_weights: np.ndarray) -> None:
        self._reference = global_weights
        self.inner.begin(global_weights)

    def add(self, weights: np.ndarray, sample_count: int) -> None:
        self.inner.add(self.clip.process(weights, FilterContext(reference=self._reference)), sample_count)

    def result(self) -> np.ndarray:
        return self.inner.result()

    def state_dict(self) -> dict | None:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        self.inner.load_state_dict(state)


class DifferentialPrivacyServerSideFixedClipping(FixedClipping):
    """Central DP with fixed clipping, Flower's wrapper of that name: each update clipped to ``clip_norm`` (the
    sensitivity), ``inner`` aggregates, and Gaussian noise of std ``noise_multiplier`` × ``clip_norm`` × the largest
    share of the aggregate any one worker holds is added to the result. Each round's release is one Gaussian
    mechanism for the accountant, whose state is this strategy's ``state_dict`` (it checkpoints with the run)."""

    def __init__(self, inner: Strategy, noise_multiplier: float, clip_norm: float,
                 rng: np.random.Generator | None = None):
        super().__init__(inner, clip_norm)
        self.noise_multiplier = noise_multiplier
        self.noise = GaussianNoise(noise_multiplier, clip_norm, rng)
        self.accountant = GaussianAccountant()
        self._counts: list[int] = []

    def begin(self, global_weights: np.ndarray) -> None:
        super().begin(global_weights)
        self._counts = []

    def add(self, weights: np.ndarray, sample_count: int) -> None:
        super().add(weights, sample_count)
        self._counts.append(sample_count)

    def result(self) -> np.ndarray:
        aggregate = self.inner.result()
        share = max(self._counts) / sum(self._counts)
        noised = self.noise.process(aggregate, FilterContext(reference=self._reference, weight_share=share))
        self.accountant.step(self.noise_multiplier)
        return noised

    def state_dict(self) -> dict | None:
        return self.accountant.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        self.accountant.load_state_dict(state)


STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedAvg, Median, TrimmedMean)}


def make_strategy(name: str, trim_fraction: float = 0.2) -> Strategy:
    if name == TrimmedMean.name:
        return TrimmedMean(trim_fraction)
    return STRATEGIES[name]()


def from_settings(settings: Settings, rng: np.random.Generator | None = None) -> Strategy:
    """federation.strategy, clipped to federation.clip_norm, inside server-side DP when privacy.side is server
    (``rng``: the noise's generator, seeded only by simulations; a fresh secret one by default)."""
    fed, privacy = settings.federation, settings.privacy
    strategy = make_strategy(fed.strategy, fed.trim_fraction)
    if fed.clip_norm:
        strategy = FixedClipping(strategy, fed.clip_norm)
    if privacy.enabled and privacy.side == "server":
        strategy = DifferentialPrivacyServerSideFixedClipping(strategy, privacy.noise_multiplier, privacy.clip_norm,
                                                              rng)
    return strategy
