"""The autoencoder's parameter layout and initial weights, in numpy alone.

The aggregator needs only these (an architecture hash, a parameter count, a seeded starting model) and none of torch,
which is most of a container image. The initial weights are bit for bit those of ``build_autoencoder(..., seed)``:
``nn.Linear``'s default init drawn from the same MT19937 stream torch seeds, so a federation starts from the model
a worker would build (tests/test_layout.py holds the two equal).
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np

SEED_LIMIT = 2**32  # torch keeps the low 32 bits of a manual seed; numpy's legacy MT19937 takes exactly those


def layer_sizes(input_width: int, hidden: list[int]) -> list[int]:
    """input → hidden… → input."""
    return [input_width, *hidden, input_width]


def parameter_shapes(input_width: int, hidden: list[int]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) in ``nn.Sequential`` state_dict order: Linear layers sit at even indices, ReLUs between them."""
    sizes = layer_sizes(input_width, hidden)
    shapes: list[tuple[str, tuple[int, ...]]] = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        shapes += [(f"{2 * i}.weight", (n_out, n_in)), (f"{2 * i}.bias", (n_out,))]
    return shapes


def spec_hash(input_width: int, hidden: list[int]) -> str:
    """Identifies the architecture: a worker whose config builds another model must not join the federation."""
    return hashlib.sha256(json.dumps(parameter_shapes(input_width, hidden)).encode()).hexdigest()[:16]


def count_parameters(input_width: int, hidden: list[int]) -> int:
    return sum(math.prod(shape) for _, shape in parameter_shapes(input_width, hidden))


def initial_weights(input_width: int, hidden: list[int], seed: int) -> np.ndarray:
    """The flat float32 vector of a freshly built, seeded autoencoder.

    Per Linear layer torch draws the weight from kaiming_uniform_(a=√5), then the bias from U(±1/√fan_in); each
    value takes the low 24 bits of one 32-bit MT19937 output as u ∈ [0, 1) and computes lo + u·(hi − lo) in double
    with float32 bounds, rounding once to float32.
    """
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    rng = np.random.RandomState(seed)
    sizes = layer_sizes(input_width, hidden)
    parts = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        gain = math.sqrt(2.0 / (1 + math.sqrt(5) ** 2))  # torch.nn.init.calculate_gain("leaky_relu", √5)
        weight_bound = math.sqrt(3.0) * (gain / math.sqrt(n_in))
        bias_bound = 1 / math.sqrt(n_in)
        for count, bound in ((n_out * n_in, weight_bound), (n_out, bias_bound)):
            u = (rng.randint(0, 2**32, size=count, dtype=np.uint64) & (2**24 - 1)) * 2.0**-24
            lo, hi = float(np.float32(-bound)), float(np.float32(bound))
            parts.append((u * (hi - lo) + lo).astype(np.float32))
    return np.concatenate(parts)
