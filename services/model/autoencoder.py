"""The dense autoencoder every node trains, and its flat float32 weight vector (what crosses the wire)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from services.model.layout import layer_sizes


def build_autoencoder(input_width: int, hidden: list[int], seed: int | None = None) -> nn.Sequential:
    """input → hidden… → input, ReLU inside, linear output (inputs are standard-scaled, so unbounded)."""
    if seed is not None:
        torch.manual_seed(seed)
    sizes = layer_sizes(input_width, hidden)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


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
