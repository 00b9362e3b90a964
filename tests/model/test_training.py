"""Local training's hand-written Adam on real SKAB windows: the same weights as torch.optim.Adam within float32
rounding (plain and FedProx), and a training process that never imports torch._dynamo nor sympy (the +80 MiB the
hand-written optimiser avoids)."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from services.config import load_settings
from services.protocol.scaling import FeatureStats
from services.data.sources import load_node
from services.model import training
from services.model.autoencoder import build_autoencoder, get_flat_weights, set_flat_weights
from services.model.detector import DetectorSpec
from services.protocol.messages import TrainingPlan

SETTINGS = load_settings(environ={})
SPEC = DetectorSpec.from_settings(SETTINGS)
PLAN = TrainingPlan.from_settings(SETTINGS)
EPOCHS = 4


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    node = load_node(SETTINGS, SETTINGS.worker("valve1"))
    return node.windows(FeatureStats.from_rows(node.train_raw()).scaler(), "train")


def train(inputs: np.ndarray, fedprox_mu: float) -> tuple[np.ndarray, list[float]]:
    model = build_autoencoder(SPEC)
    set_flat_weights(model, SPEC.architecture.initial_weights(SPEC.seed))
    result = training.train_local(model, inputs, EPOCHS, PLAN.batch_size, PLAN.learning_rate, seed=3,
                                  fedprox_mu=fedprox_mu)
    return get_flat_weights(model), result.epoch_losses


@pytest.mark.parametrize("fedprox_mu", [0.0, 0.1])
def test_hand_written_adam_trains_the_same_weights_as_torch_optim_adam(inputs, fedprox_mu, monkeypatch):
    assert len(inputs) > 10 * PLAN.batch_size, "several hundred steps, so a drift in the maths would accumulate"
    ours, our_losses = train(inputs, fedprox_mu)
    monkeypatch.setattr(training, "Adam", torch.optim.Adam)  # the reference: the very same loop, torch's optimiser
    theirs, their_losses = train(inputs, fedprox_mu)

    start = SPEC.architecture.initial_weights(SPEC.seed)
    assert np.abs(theirs - start).max() > 100 * np.abs(ours - theirs).max(), "training moved the weights far more"
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(our_losses, their_losses, rtol=1e-5)
    assert their_losses[-1] < their_losses[0], "the loss falls over the epochs"


def test_adam_leaves_a_parameter_without_gradient_untouched():
    used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    optimiser = training.Adam([used, unused], lr=0.1)
    (used ** 2).sum().backward()
    optimiser.step()
    assert torch.all(used < 1) and torch.equal(unused.detach(), torch.ones(2))
    assert optimiser.steps == [1, 0]


def test_training_never_imports_torch_dynamo(inputs, tmp_path):
    """A fresh process, as the worker's training process is: train, then look at what got imported."""
    np.save(tmp_path / "inputs.npy", inputs[:2000])
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from services.config import load_settings
        from services.model.autoencoder import build_autoencoder
        from services.model.detector import DetectorSpec
        from services.model.training import train_local
        model = build_autoencoder(DetectorSpec.from_settings(load_settings(environ={{}})))
        train_local(model, np.load({str(tmp_path / "inputs.npy")!r}), 1, 64, 1e-3, seed=0, fedprox_mu=0.1)
        print(sorted(m for m in ("torch._dynamo", "sympy") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
