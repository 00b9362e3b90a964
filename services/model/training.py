"""Local training: E epochs of Adam on the node's own windows, starting from the global weights.

``train_weights`` is a node's one training path: ``AnomalyDetector.partial_fit`` (evaluation, benchmarks) and the
worker's training process (services/worker/train_round.py) both call it, so what is evaluated trains as the worker
trains (tests/worker/test_trainer.py holds the weights equal).

Adam is written out here (``Adam``) rather than taken from ``torch.optim``: the first ``torch.optim.Adam`` imports
``torch._dynamo`` and with it sympy and torch.fx, +80 MiB on a training process whose whole peak is ~300 MiB
(BENCHMARKS.md section 4). The maths is torch.optim.Adam's on CPU with its defaults (tests/model/test_training.py
holds the weights equal).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from services.model.autoencoder import build_autoencoder, get_flat_weights, set_flat_weights


class Adam:
    """torch.optim.Adam (betas 0.9/0.999, eps 1e-8, no weight decay, no amsgrad) as its CPU single-tensor path
    computes it, op for op, so the weights come out the same within float32 rounding."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = [p for p in params if p.requires_grad]
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.steps = [0 for _ in self.params]  # per parameter, as torch.optim counts them
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, (p, exp_avg, exp_avg_sq) in enumerate(zip(self.params, self.exp_avg, self.exp_avg_sq)):
            if p.grad is None:
                continue  # a parameter the loss does not reach keeps its moments and count, as in torch.optim
            grad = p.grad
            self.steps[i] += 1
            bias_correction1 = 1 - self.beta1 ** self.steps[i]
            bias_correction2_sqrt = (1 - self.beta2 ** self.steps[i]) ** 0.5
            step_size = self.lr / bias_correction1
            exp_avg.lerp_(grad, 1 - self.beta1)
            exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)


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
    optimiser = Adam(model.parameters(), lr=learning_rate)
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


def train_weights(architecture, weights: np.ndarray, inputs: np.ndarray, plan: Mapping, seed: int,
                  epochs: int | None = None, on_epoch=None) -> tuple[np.ndarray, TrainResult]:
    """Train the model ``architecture`` (services/model/layout.py, or anything with one) from the flat ``weights``
    on ``inputs`` as ``plan`` says (a TrainingPlan's fields: local_epochs, batch_size, learning_rate, fedprox_mu;
    ``epochs`` overrides local_epochs). Returns the trained flat weights and the losses."""
    model = build_autoencoder(architecture)
    set_flat_weights(model, weights)
    result = train_local(model, inputs, epochs or plan["local_epochs"], plan["batch_size"], plan["learning_rate"],
                         seed=seed, fedprox_mu=plan["fedprox_mu"], on_epoch=on_epoch)
    return get_flat_weights(model), result


def reconstruction_scores(model: nn.Module, inputs: np.ndarray) -> np.ndarray:
    """Per-row mean squared reconstruction error with the torch model (the fp32 reference)."""
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
        return ((model(x) - x) ** 2).mean(dim=1).numpy()
