"""The numpy layout the aggregator uses must be the torch model's: same shapes, same hash, same seeded weights."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from services.config import ConfigError, load_settings
from services.model.autoencoder import build_autoencoder, get_flat_weights
from services.model.layout import count_parameters, initial_weights, parameter_shapes, spec_hash

SETTINGS = load_settings()
ARCHITECTURES = [(SETTINGS.input_width, SETTINGS.model.hidden), (8, [16, 4, 16]), (24, [12, 6, 12]), (3, [1]),
                 (8, [64, 32, 64])]


@pytest.mark.parametrize("width,hidden", ARCHITECTURES)
def test_shapes_hash_and_count_match_the_torch_model(width, hidden):
    model = build_autoencoder(width, hidden)
    shapes = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
    assert parameter_shapes(width, hidden) == shapes
    activations = [type(m).__name__ for m in model][1::2]  # after each hidden Linear: ReLU, or a narrow bottleneck's none
    linear = activations.index("Identity") if "Identity" in activations else None
    assert activations.count("Identity") == (min(hidden) <= 2) and (linear is None or hidden[linear] == min(hidden))
    described = {"kind": "dense", "width": width, "shapes": shapes}
    if linear is not None:
        described["linear_bottleneck"] = linear
    assert spec_hash(width, hidden) == hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]
    assert count_parameters(width, hidden) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("seed", [0, 1, 42, 12345, 2**31 + 7, 2**32 - 1])
@pytest.mark.parametrize("width,hidden", ARCHITECTURES)
def test_initial_weights_are_bit_for_bit_the_seeded_torch_init(width, hidden, seed):
    expected = get_flat_weights(build_autoencoder(width, hidden, seed=seed))
    got = initial_weights(width, hidden, seed)
    assert got.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_seeds_differ_and_out_of_range_seeds_are_refused():
    assert not np.array_equal(initial_weights(8, [4], 0), initial_weights(8, [4], 1))
    for seed in (-1, 2**32):
        with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*32\)"):
            initial_weights(8, [4], seed)
        with pytest.raises(ConfigError, match=r"model\.seed"):
            load_settings(environ={"FEDAD__MODEL__SEED": str(seed)})


def test_the_aggregator_service_never_imports_torch():
    """Its image leaves torch out (docker/aggregator.Dockerfile); this keeps the code honest on any machine."""
    probe = ("import sys, services.aggregator.__main__, services.aggregator.app; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'onnxruntime', 'onnx', 'sklearn'}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
