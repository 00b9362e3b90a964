"""Robust aggregation and differential privacy.

The poisoning experiment on real SKAB data: five edge nodes, one of them sends poisoned updates (×100, sign-flipped
×100, random); FedAvg's held-out F1 collapses while the coordinate-wise median and the trimmed mean stay within 0.02 F1 of their clean run. All runs are in one test run, on the config's
model, so the comparison holds whatever config.yaml's defaults are. Then DP: clipping, noise, the accountant. The
maths of each aggregation rule on small arrays is in tests/aggregator/test_strategies.py.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from reliability import federated_sim
from services.aggregator.rounds import Federation
from services.aggregator.store import AggregatorStore
from services.config import load_settings
from services.protocol.scaling import FeatureStats
from services.protocol.codec import encode_weights
from services.protocol.messages import JoinRequest
from services.security.accountant import GaussianAccountant
from services.security.filters import ClipUpdateNorm, FilterContext, GaussianNoise

ROUNDS = 5
TOLERANCE = 0.02


def test_clip_and_noise_filters():
    reference = np.zeros(1000, np.float32)
    big = np.full(1000, 1.0, np.float32)  # norm √1000
    context = FilterContext(reference=reference)
    clipped = ClipUpdateNorm(2.0).process(big, context)
    assert np.linalg.norm(clipped) == pytest.approx(2.0, rel=1e-5) and context.notes["clipped"]
    small = np.full(1000, 0.01, np.float32)
    np.testing.assert_array_equal(ClipUpdateNorm(2.0).process(small, FilterContext(reference)), small)
    noise = GaussianNoise(1.5, 2.0, np.random.default_rng(0))
    noised = noise.process(np.zeros(200_000, np.float32), FilterContext(reference, weight_share=0.5))
    assert noised.std() == pytest.approx(1.5 * 2.0 * 0.5, rel=0.01)


def test_accountant_composes_and_checkpoints():
    a = GaussianAccountant()
    for _ in range(10):
        a.step(1.0)
    eps = a.get_epsilon(1e-5)
    assert 15 < eps < 25  # 10 Gaussian mechanisms at z = 1: RDP α·10/2, best α ≈ 2.5
    b = GaussianAccountant()
    b.load_state_dict(a.state_dict())
    assert b.get_epsilon(1e-5) == eps and b.steps == 10
    b.step(1.0)
    assert b.get_epsilon(1e-5) > eps


def _federation(tmp_path, **env):
    settings = load_settings(environ={"FEDAD__FEDERATION__ROUNDS": "3", **env})
    fed = Federation(settings, AggregatorStore(tmp_path))
    stats = FeatureStats.from_rows(np.random.default_rng(0).normal(size=(50, len(settings.data.features))))
    for w in ("valve1", "valve2", "other"):
        fed.join(w, JoinRequest(spec_hash=fed.spec_hash, sample_count=50, stats=stats))
    return fed


def test_update_norm_clipping_bounds_a_scaled_update(tmp_path):
    fed = _federation(tmp_path, FEDAD__FEDERATION__CLIP_NORM="0.5")
    g = fed.global_weights.copy()
    direction = np.ones(fed.n_params, np.float32) / np.sqrt(fed.n_params)
    fed.submit("valve1", 1, encode_weights(g + 100 * direction), 50, 0.1, None)
    fed.submit("valve2", 1, encode_weights(g + 0.1 * direction), 50, 0.1, None)
    fed.submit("other", 1, encode_weights(g + 0.1 * direction), 50, 0.1, None)
    record = fed.state.history[0]["workers"]
    assert record["valve1"]["clipped"] and record["valve1"]["update_norm"] == pytest.approx(100, rel=1e-4)
    assert not record["valve2"]["clipped"]
    np.testing.assert_allclose(np.linalg.norm(fed.global_weights - g), (0.5 + 0.1 + 0.1) / 3, rtol=1e-4)


def test_server_side_dp_noises_the_aggregate_and_accounts_across_restarts(tmp_path):
    env = {"FEDAD__PRIVACY__NOISE_MULTIPLIER": "1.0", "FEDAD__PRIVACY__CLIP_NORM": "0.5"}
    fed = _federation(tmp_path, **env)
    g = fed.global_weights.copy()
    for w in ("valve1", "valve2", "other"):
        fed.submit(w, 1, encode_weights(g), 50, 0.1, None)  # no change: all of the difference is noise
    noise = fed.global_weights - g
    assert noise.std() == pytest.approx(1.0 * 0.5 / 3, rel=0.25)  # z · C · largest share (1/3)
    first = fed.status()["privacy"]
    assert first["rounds_accounted"] == 1 and first["epsilon"] > 0
    again = Federation(fed.settings, AggregatorStore(tmp_path))
    assert again.status()["privacy"] == first, "the budget spent is persisted with the run"
    for w in ("valve1", "valve2", "other"):
        again.submit(w, 2, encode_weights(again.global_weights), 50, 0.1, None)
    assert again.status()["privacy"]["epsilon"] > first["epsilon"]


def _run(args):
    strategy, attack = args
    return strategy, attack, federated_sim.simulate(strategy, attack, rounds=ROUNDS).f1


@pytest.fixture(scope="module")
def poisoning_f1():
    """F1 of every strategy × (clean, each attack), from one test run, two processes at a time."""
    jobs = [(s, a) for s in ("fedavg", "median", "trimmed_mean") for a in (None, *federated_sim.ATTACKS)]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_run, jobs))
    table = {(s, a): f1 for s, a, f1 in results}
    print("\nheld-out F1, 1 of 5 workers poisoned:")
    for s in ("fedavg", "median", "trimmed_mean"):
        print(f"  {s:13s} clean {table[(s, None)]:.3f}  "
              + "  ".join(f"{a} {table[(s, a)]:.3f}" for a in federated_sim.ATTACKS))
    return table


@pytest.mark.parametrize("attack", federated_sim.ATTACKS)
def test_poisoned_worker_collapses_fedavg_but_not_the_robust_strategies(poisoning_f1, attack):
    clean = poisoning_f1[("fedavg", None)]
    assert clean > 0.3, f"the clean federation must detect something to lose (F1 {clean:.3f})"
    assert poisoning_f1[("fedavg", attack)] < clean - 0.1, f"FedAvg under {attack}: {poisoning_f1}"
    for strategy in ("median", "trimmed_mean"):
        own_clean = poisoning_f1[(strategy, None)]
        assert abs(poisoning_f1[(strategy, attack)] - own_clean) <= TOLERANCE, f"{strategy} under {attack}: {poisoning_f1}"
