"""An in-process federation on real SKAB data: the aggregator's Federation class (strategies, filters, DP, store)
and the workers' own training code, without HTTP, so strategies can be compared under attack in seconds.

Five edge nodes from SKAB's three folders (valve1 and other split in two by file, valve2 whole) — non-IID as in
the real deployment. One node can be an attacker that sends a poisoned version of its honest update:
  scale      g + 100·Δ          (Δ = its honest change to the global model g)
  sign_flip  g − 100·Δ          (the change reversed and amplified)
  random     g + N(0, 10²)      (values unrelated to any training)
Detection is evaluated like a worker does it (each node's threshold from its own training rows, scores on its
held-out rows, SKAB protocol), with the fp32 torch model, and pooled over all five nodes.

Run as a script for the README's tables:  .venv/bin/python tests/reliability/federated_sim.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.aggregator import strategies  # noqa: E402
from services.aggregator.rounds import Federation  # noqa: E402
from services.aggregator.store import AggregatorStore  # noqa: E402
from services.config import Settings, load_settings  # noqa: E402
from services.protocol.scaling import FeatureStats  # noqa: E402
from services.data.node import NodeData  # noqa: E402
from services.data.sources import load_node, training_selection  # noqa: E402
from services.data.windows import Preprocessing  # noqa: E402
from services.model.autoencoder import build_autoencoder, set_flat_weights  # noqa: E402
from services.model.metrics import pooled_metrics  # noqa: E402
from services.model.detector import AnomalyDetector, DetectorSpec, node_seed  # noqa: E402
from services.model.scoring import calibrate_threshold  # noqa: E402
from services.model.training import reconstruction_scores  # noqa: E402
from services.protocol.codec import encode_weights  # noqa: E402
from services.protocol.messages import JoinRequest, TrainingPlan  # noqa: E402
from services.security.filters import FilterContext, apply, client_privacy_filters  # noqa: E402

ATTACKER = "other-a"
MIXED = ("node1", "node2", "node3", "node4", "other-a")
ATTACKS = ("scale", "sign_flip", "random")
RANDOM_STD = 10.0


@functools.lru_cache(maxsize=4)
def _experiments(folder: str):
    settings = load_settings(environ={})
    return load_node(settings, settings.workers[0].model_copy(update={"partition": [folder]})).runs


def _node(runs, settings: Settings) -> NodeData:
    return NodeData(list(runs), Preprocessing.from_settings(settings.data), training_selection(settings.data.training))


def load_nodes(settings: Settings, layout: str = "mixed") -> dict[str, NodeData]:
    """``mixed``: five nodes each with every fifth file of all folders (alike honest nodes, the setting robust
    aggregation is made for); ``folders``: valve1 and other split in two, valve2 whole (strongly non-IID)."""
    if layout == "mixed":
        experiments = [e for folder in ("valve1", "valve2", "other") for e in _experiments(folder)]
        return {name: _node(experiments[k::len(MIXED)], settings)
                for k, name in enumerate(MIXED)}
    nodes = {}
    for folder in ("valve1", "valve2", "other"):
        experiments = _experiments(folder)
        parts = [experiments] if folder == "valve2" else [experiments[0::2], experiments[1::2]]
        for suffix, part in zip("ab", parts):
            name = folder if folder == "valve2" else f"{folder}-{suffix}"
            nodes[name] = _node(part, settings)
    return nodes


def poison(kind: str, honest: np.ndarray, global_weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    delta = honest.astype(np.float64) - global_weights
    if kind == "scale":
        out = global_weights + 100 * delta
    elif kind == "sign_flip":
        out = global_weights - 100 * delta
    elif kind == "random":
        out = global_weights + rng.normal(0, RANDOM_STD, size=honest.shape)
    else:
        raise ValueError(kind)
    return out.astype(np.float32)


@dataclass
class Outcome:
    f1: float
    far: float
    mar: float
    seconds: float
    history: list


def simulate(strategy: str = "fedavg", attack: str | None = None, rounds: int = 4, epochs: int | None = None,
             clip_norm: float | None = None, noise_multiplier: float = 0.0, dp_clip: float = 1.0,
             dp_side: str = "server", seed: int = 0, layout: str = "folders",
             overrides: dict[str, str] | None = None) -> Outcome:
    """One federation from the config's model on the five nodes; returns pooled held-out detection figures."""
    started = time.time()
    torch.set_num_threads(1)
    environ = {
        "FEDAD__FEDERATION__ROUNDS": str(rounds), "FEDAD__FEDERATION__MIN_WORKERS": "5",
        "FEDAD__FEDERATION__QUORUM": "5", "FEDAD__FEDERATION__STRATEGY": strategy,
        "FEDAD__FEDERATION__CLIP_NORM": "null" if clip_norm is None else str(clip_norm),
        "FEDAD__PRIVACY__NOISE_MULTIPLIER": str(noise_multiplier),
        "FEDAD__PRIVACY__CLIP_NORM": str(dp_clip), "FEDAD__PRIVACY__SIDE": dp_side, **(overrides or {}),
    }
    if epochs is not None:
        environ["FEDAD__MODEL__LOCAL_EPOCHS"] = str(epochs)
    settings: Settings = load_settings(environ=environ)
    nodes = load_nodes(settings, layout)
    rng = np.random.default_rng(seed)
    scratch = "/dev/shm" if Path("/dev/shm").is_dir() else None  # fsync is free there: the simulation is about maths
    with tempfile.TemporaryDirectory(prefix="fedad-sim-", dir=scratch) as tmp:
        # server-side DP noise (if any) from a seeded generator: reproducible in a simulation
        fed = Federation(settings, AggregatorStore(Path(tmp)),
                         strategy=strategies.from_settings(settings, np.random.default_rng(seed + 1)))
        client_filters = client_privacy_filters(settings.privacy, np.random.default_rng(seed + 2))
        for name, node in nodes.items():
            raw = node.train_raw()
            fed.join(name, JoinRequest(spec_hash=fed.spec_hash, sample_count=len(raw),
                                       stats=FeatureStats.from_rows(raw)))
        scaler = fed.scaler
        inputs = {name: node.windows(scaler, "train") for name, node in nodes.items()}
        spec, plan = DetectorSpec.from_settings(settings), TrainingPlan.from_settings(settings)
        while fed.phase == "training":
            round_no, start = fed.open_round, fed.global_weights.copy()
            for name, node in nodes.items():
                worker_seed = node_seed(settings.model.seed, name) + 1000 * seed  # WorkerLoop's rule
                detector = AnomalyDetector(spec, start)
                result = detector.partial_fit(inputs[name], plan, worker_seed + round_no)
                weights = detector.get_weights()
                if client_filters:
                    weights = apply(client_filters, weights, FilterContext(reference=start))
                if attack and name == ATTACKER:
                    weights = poison(attack, weights, start, rng)
                fed.submit(name, round_no, encode_weights(weights), len(node.train_raw()), result.loss, None)
        figures = evaluate(settings, fed.global_weights, scaler, nodes, inputs)
        return Outcome(figures["f1"], figures["far"], figures["mar"], round(time.time() - started, 1),
                       fed.state.history)


def evaluate(settings: Settings, weights: np.ndarray, scaler, nodes: dict[str, NodeData], inputs) -> dict:
    model = build_autoencoder(settings.input_width, settings.model.hidden)
    set_flat_weights(model, weights)
    counts = []
    for name, node in nodes.items():
        train_scores = reconstruction_scores(model, inputs[name])
        if not np.all(np.isfinite(train_scores)):
            train_scores = np.nan_to_num(train_scores, nan=np.inf)
        threshold = calibrate_threshold(train_scores, settings.threshold)
        scores = np.nan_to_num(reconstruction_scores(model, node.windows(scaler, "held_out")), nan=np.inf)
        predicted = scores > threshold
        labels = node.held_out_labels().astype(bool)
        counts.append({"tp": int(np.sum(predicted & labels)), "fp": int(np.sum(predicted & ~labels)),
                       "fn": int(np.sum(~predicted & labels)), "tn": int(np.sum(~predicted & ~labels))})
    return pooled_metrics(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=None, help="local epochs (default: config's)")
    parser.add_argument("--dp-clip", type=float, default=1.0)
    parser.add_argument("--layout", choices=("folders", "mixed"), default="folders")
    parser.add_argument("--skip-attacks", action="store_true")
    parser.add_argument("--skip-dp", action="store_true")
    args = parser.parse_args()
    from services.security.accountant import GaussianAccountant

    run = functools.partial(simulate, rounds=args.rounds, epochs=args.epochs, layout=args.layout)
    print(f"5 nodes ({args.layout}), attacker {ATTACKER}; {args.rounds} rounds of "
          f"{args.epochs or 'config'} local epochs; pooled held-out F1")
    if not args.skip_attacks:
        print("\n| strategy | clean | ×100 | sign flip ×100 | random |\n|---|---|---|---|---|")
        rows = [(s, {}) for s in ("fedavg", "median", "trimmed_mean")]
        rows += [(f"fedavg + clip_norm {c}", {"clip_norm": c}) for c in (1.0,)]
        for label, extra in rows:
            strategy = label.split()[0]
            f1 = [run(strategy, a, **extra).f1 for a in (None, *ATTACKS)]
            print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in f1) + " |", flush=True)
    if not args.skip_dp:
        print(f"\n| DP side | noise multiplier z | F1 | FAR % | MAR % | ε at δ=1e-5 after {args.rounds} rounds |"
              "\n|---|---|---|---|---|---|")
        o = run("fedavg", None)
        print(f"| off | – | {o.f1:.3f} | {o.far:.2f} | {o.mar:.2f} | ∞ |")
        o = run("fedavg", None, clip_norm=args.dp_clip)
        print(f"| clip {args.dp_clip} only | 0 | {o.f1:.3f} | {o.far:.2f} | {o.mar:.2f} | ∞ |", flush=True)
        for side in ("server", "client"):
            for z in (0.1, 0.3, 1.0, 3.0):
                o = run("fedavg", None, noise_multiplier=z, dp_clip=args.dp_clip, dp_side=side)
                acc = GaussianAccountant()
                for _ in range(args.rounds):
                    acc.step(z)
                print(f"| {side} | {z} | {o.f1:.3f} | {o.far:.2f} | {o.mar:.2f} | {acc.get_epsilon(1e-5):.1f} |",
                      flush=True)


if __name__ == "__main__":
    main()
