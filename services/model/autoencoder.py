"""The dense autoencoder every node trains, and its flat float32 weight vector (what crosses the wire)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from torch import nn


def build_autoencoder(input_width: int, hidden: list[int], seed: int | None = None) -> nn.Sequential:
    """input → hidden… → input, ReLU inside, linear output (inputs are standard-scaled, so unbounded)."""
    if seed is not None:
        torch.manual_seed(seed)
    sizes = [input_width, *hidden, input_width]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def parameter_shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items()]


def spec_hash(input_width: int, hidden: list[int]) -> str:
    """Identifies the architecture: a worker whose config builds another model must not join the federation."""
    shapes = parameter_shapes(build_autoencoder(input_width, hidden))
    return hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]


def get_flat_weights(model: nn.Module) -> np.ndarray:
    """All parameters in state_dict order as one float32 vector."""
    return np.concatenate([t.detach().cpu().numpy().ravel() for t in model.state_dict().values()]).astype(np.float32)


def set_flat_weights(model: nn.Module, flat: np.ndarray) -> None:
    state = model.state_dict()
    expected = sum(t.numel() for t in state.values())
    if flat.size != expected:
        raise ValueError(f"weight vector has {flat.size} values, the model has {expected}")
    offset = 0
    for name, tensor in state.items():
        n = tensor.numel()
        state[name] = torch.from_numpy(np.array(flat[offset:offset + n], dtype=np.float32).reshape(tensor.shape))
        offset += n
    model.load_state_dict(state)


def count_parameters(input_width: int, hidden: list[int]) -> int:
    sizes = [input_width, *hidden, input_width]
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))
