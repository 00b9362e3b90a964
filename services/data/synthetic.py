"""A synthetic IoT fleet: N devices × D sensors with labelled anomalies, for trying the system and for scale tests.

Each device is one edge node (worker k reads device k) and yields one run. Its sensors are noisy mixtures of a few
shared latent signals — a daily-like seasonality, a slow mean-reverting wander and a faster cycle — so the sensors are
correlated the way a machine's are and an autoencoder has structure to learn; the wander reverts to its mean, so the
anomaly-free start covers the range normal rows keep later. On top: a slow drift of the operating point (along the
shared signals), a tiny drift of each sensor's calibration, Gaussian noise; and every device has its own levels,
scales, periods, phases and noise, and its own variation of the machine type's sensor mixing, so the nodes are not
identically distributed (non-IID), as real sites are not, yet share what a federated model can learn.

The first ``normal_rows`` rows are anomaly-free (they train, as SKAB's first rows do); after them ``anomalies``
events are injected at random places, cycling through the kinds, each on one sensor, each labelled 1 row by row:

- ``spike``: a few rows jump by 5–9 standard deviations;
- ``level_shift``: the sensor's level moves by 3–5 standard deviations for a while;
- ``drift``: the sensor ramps away from its normal path, up to 4–7 standard deviations;
- ``stuck``: the sensor repeats its last value (a frozen reading);
- ``noise_burst``: extra noise of 3–5 standard deviations.

Everything is deterministic for (seed, device) and cheap: a device of 5,000 rows × 8 sensors takes a few ms, so a
scale test can start many workers.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from services.config import Settings, WorkerSettings
from services.data.source import DataError, Run

ANOMALY_KINDS = ("spike", "level_shift", "drift", "stuck", "noise_burst")
LATENT = 3
MAX_EVENT_ROWS = 120  # longest anomaly event
WANDER_ROWS = 150  # memory of the slow latent wander
DEVICE_SPREAD = 0.3  # how far a device's sensor mixing strays from its machine type's
START = np.datetime64("2026-01-01T00:00:00", "ms")


@dataclass(frozen=True)
class SyntheticSource:
    """Device ``device`` of a fleet: one run of ``rows`` rows, one column per sensor name in ``sensors``."""

    device: int
    sensors: tuple[str, ...]
    rows: int = 5000
    normal_rows: int = 1500
    anomalies: int = 10
    kinds: tuple[str, ...] = ANOMALY_KINDS
    interval_s: float = 1.0
    period_rows: int = 600  # seasonality period, before each device's ±25 % jitter
    seed: int = 0

    def __post_init__(self):
        unknown = [k for k in self.kinds if k not in ANOMALY_KINDS]
        if unknown or not self.kinds:
            raise DataError(f"synthetic anomaly kinds must be among {list(ANOMALY_KINDS)}, got {list(self.kinds)}")
        if not 2 <= self.normal_rows < self.rows:
            raise DataError(f"synthetic normal_rows ({self.normal_rows}) must be at least 2 and below rows "
                            f"({self.rows})")
        if self.anomalies < 0 or self.anomalies * MAX_EVENT_ROWS > self.rows - self.normal_rows:
            raise DataError(f"synthetic: {self.rows - self.normal_rows} rows after the normal ones leave no room for "
                            f"{self.anomalies} anomalies; raise rows or lower anomalies")

    def runs(self) -> list[Run]:
        values, labels = generate_device(self)
        timestamps = START + (np.arange(self.rows) * self.interval_s * 1000).astype("timedelta64[ms]")
        return [Run(name=f"device-{self.device}", values=values, timestamps=timestamps, labels=labels)]


def _rng(source: SyntheticSource, stream: int) -> np.random.Generator:
    return np.random.default_rng([source.seed, source.device, stream])


def normal_signal(source: SyntheticSource) -> tuple[np.ndarray, np.ndarray]:
    """The device's anomaly-free readings (rows × sensors) and each sensor's scale (its noise-free spread)."""
    rng = _rng(source, 0)
    n, d = source.rows, len(source.sensors)
    t = np.arange(n, dtype=np.float64)
    period = source.period_rows * rng.uniform(0.75, 1.25)
    wander = _slow_wander(rng.normal(0, 1, n + 5 * WANDER_ROWS), WANDER_ROWS)
    operating_drift = rng.normal(0, 0.3) * t / n  # the machine's operating point creeps, all sensors together
    latent = np.stack([
        np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi)),
        wander + operating_drift,
        0.5 * np.sin(2 * np.pi * t / (period / rng.uniform(3, 5)) + rng.uniform(0, 2 * np.pi)),
    ], axis=1)  # (n, LATENT)
    fleet = np.random.default_rng([source.seed, 2**31])  # the machine type all devices share
    mixing = fleet.normal(0, 1, (LATENT, d)) + DEVICE_SPREAD * rng.normal(0, 1, (LATENT, d))
    level = rng.uniform(-50, 50, d)
    scale = rng.uniform(0.5, 5.0, d)
    drift = rng.normal(0, 0.03, d) * t[:, None] / n  # each sensor's own calibration ageing: tiny
    noise = rng.uniform(0.1, 0.25) * rng.normal(0, 1, (n, d))
    clean = latent @ mixing
    clean /= clean.std(axis=0)
    return level + scale * (clean + drift + noise), scale


def _slow_wander(shocks: np.ndarray, rows: int) -> np.ndarray:
    """A mean-reverting wander (AR(1) with a memory of ~``rows`` rows), unit variance: it moves like a random walk
    over a few hundred rows but stays in the range it had from the start, so training rows cover its range. The
    first ``5 × rows`` shocks are a burn-in, so the wander starts in its stationary state."""
    phi = 1.0 - 1.0 / rows
    out = np.empty_like(shocks)
    out[0], scaled = 0.0, shocks * np.sqrt(1 - phi**2)
    for i in range(1, len(shocks)):  # a plain loop: ~1 ms per 1,000 rows, and no scipy import at start-up
        out[i] = phi * out[i - 1] + scaled[i]
    return out[5 * rows:]


def generate_device(source: SyntheticSource) -> tuple[np.ndarray, np.ndarray]:
    """Readings (rows × sensors, float32) and labels (int8, 1 = an injected anomaly) of one device."""
    values, scale = normal_signal(source)
    labels = np.zeros(source.rows, dtype=np.int8)
    rng = _rng(source, 1)
    kinds = [source.kinds[i % len(source.kinds)] for i in rng.permutation(max(source.anomalies, 1))]
    for kind, (start, length) in zip(kinds[:source.anomalies], _event_slots(source, rng)):
        sensor = int(rng.integers(len(source.sensors)))
        if kind == "spike":
            length = int(rng.integers(1, 4))
        rows = slice(start, start + length)
        sigma, sign = scale[sensor], rng.choice([-1.0, 1.0])
        if kind == "spike":
            values[rows, sensor] += sign * rng.uniform(5, 9) * sigma
        elif kind == "level_shift":
            values[rows, sensor] += sign * rng.uniform(3, 5) * sigma
        elif kind == "drift":
            values[rows, sensor] += sign * rng.uniform(4, 7) * sigma * np.linspace(0, 1, length)
        elif kind == "stuck":
            values[rows, sensor] = values[start - 1, sensor]
        else:  # noise_burst
            values[rows, sensor] += rng.uniform(3, 5) * sigma * rng.normal(0, 1, length)
        labels[rows] = 1
    return values.astype(np.float32), labels


def _event_slots(source: SyntheticSource, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Non-overlapping (start, length) places after the normal rows, with normal rows between events."""
    lengths = rng.integers(30, MAX_EVENT_ROWS + 1, source.anomalies)
    free = source.rows - source.normal_rows - int(lengths.sum())
    gaps = rng.dirichlet(np.ones(source.anomalies + 1)) * free
    slots, at = [], float(source.normal_rows)
    for gap, length in zip(gaps[:-1], lengths):
        at += gap
        slots.append((int(at), int(length)))
        at += length
    return slots


def synthetic_source(settings: Settings, worker: WorkerSettings) -> SyntheticSource:
    """Worker k of config's ``workers`` list reads device k of the fleet ``data.source.synthetic`` describes; an
    enrolled node (not in the list) reads a device numbered by its id, the same on every start."""
    g = settings.data_for(worker).source.synthetic
    listed = [w.id for w in settings.workers]
    device = listed.index(worker.id) if worker.id in listed else 1000 + zlib.crc32(worker.id.encode()) % 1_000_000
    return SyntheticSource(device, tuple(settings.data.columns), rows=g.rows, normal_rows=g.normal_rows,
                           anomalies=g.anomalies, kinds=tuple(g.kinds), interval_s=g.interval_s,
                           period_rows=g.period_rows, seed=g.seed)
