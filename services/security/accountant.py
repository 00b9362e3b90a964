"""Privacy spent by the Gaussian mechanism over federated rounds, as an Opacus-style accountant: a small object with
``step`` / ``get_epsilon`` and ``state_dict`` / ``load_state_dict``, so the budget checkpoints with the run.

Each round releases one Gaussian mechanism with noise multiplier z (noise std / L2 sensitivity) over the whole
federation, without subsampling (every worker is in every round). Its Rényi DP at order α is α / (2 z²), and T
rounds compose to T α / (2 z²) (Mironov 2017); (ε, δ) is min over α of RDP(α) + log(1/δ) / (α − 1).
"""

from __future__ import annotations

import math

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024]


class GaussianAccountant:
    def __init__(self):
        self.history: list[list[float]] = []  # [noise_multiplier, steps] runs, as Opacus' RDPAccountant keeps

    def step(self, noise_multiplier: float) -> None:
        if noise_multiplier <= 0:
            raise ValueError("the Gaussian mechanism needs a noise multiplier > 0")
        if self.history and self.history[-1][0] == noise_multiplier:
            self.history[-1][1] += 1
        else:
            self.history.append([float(noise_multiplier), 1])

    @property
    def steps(self) -> int:
        return int(sum(steps for _, steps in self.history))

    def get_epsilon(self, delta: float) -> float:
        if not self.history:
            return 0.0
        best = math.inf
        for alpha in ORDERS:
            rdp = sum(steps * alpha / (2 * z * z) for z, steps in self.history)
            best = min(best, rdp + math.log(1 / delta) / (alpha - 1))
        return best

    def state_dict(self) -> dict:
        return {"history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict | None) -> None:
        self.history = [list(h) for h in (state or {}).get("history", [])]
