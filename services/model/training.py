"""Local training: E epochs of Adam on the node's own windows, starting from the global weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class TrainResult:
    loss: float  # mean reconstruction MSE over the last epoch
    epoch_losses: list[float]


def train_local(
    model: nn.Module,
    inputs: np.ndarray,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    fedprox_mu: float = 0.0,
    on_epoch=None,
) -> TrainResult:
    """Train ``model`` in place. ``fedprox_mu`` > 0 adds FedProx's (mu/2)·‖w − w_global‖², which keeps a node with
    unusual data from drifting far from the federation."""
    generator = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    anchor = [p.detach().clone() for p in model.parameters()] if fedprox_mu > 0 else None
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    losses: list[float] = []
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        total = 0.0
        for start in range(0, len(data), batch_size):
            batch = data[order[start:start + batch_size]]
            loss = nn.functional.mse_loss(model(batch), batch)
            objective = loss
            if anchor is not None:
                objective = loss + fedprox_mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
            optimiser.zero_grad()
            objective.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        losses.append(total / len(data))
        if on_epoch is not None:
            on_epoch(epoch + 1, losses[-1])
    model.eval()
    return TrainResult(loss=losses[-1], epoch_losses=losses)


def reconstruction_scores(model: nn.Module, inputs: np.ndarray) -> np.ndarray:
    """Per-row mean squared reconstruction error with the torch model (the fp32 reference)."""
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
        return ((model(x) - x) ** 2).mean(dim=1).numpy()
