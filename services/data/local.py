"""An edge node's local data and its model inputs, shared by the worker service and the evaluation (services/evaluation)
so both train, calibrate and score on exactly the same inputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.data.scaling import Scaler
from services.data.skab import Experiment
from services.data.windows import Preprocessing, Reference


@dataclass
class LocalData:
    """The node's own experiments; rows never leave this object except as aggregates."""

    experiments: list[Experiment]
    train_rows: int
    window: int = 1
    prep: Preprocessing | None = None  # None: flattened windows of federation-scaled rows (the original pipeline)
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.prep is None:
            width = self.experiments[0].values.shape[1] if self.experiments else 0
            self.prep = Preprocessing(columns=tuple(range(width)), window=self.window, stats=(),
                                      baseline="federation", train_rows=self.train_rows)

    @classmethod
    def from_settings(cls, experiments: list[Experiment], data_settings) -> "LocalData":
        """The node's data with the model inputs config.yaml's ``data`` section asks for."""
        prep = Preprocessing.from_settings(data_settings)
        return cls(experiments, prep.train_rows, prep.window, prep)

    def train_raw(self) -> np.ndarray:
        return np.concatenate([e.train_part(self.train_rows) for e in self.experiments])

    def run_inputs(self, scaler: Scaler | None) -> list[np.ndarray]:
        """Model inputs of every experiment, each scaled by its reference (cached per scaler)."""
        key = None if scaler is None else (tuple(scaler.mean), tuple(scaler.std))
        if self._cache.get("key") != key or "inputs" not in self._cache:
            self._cache.clear()
            self._cache.update(key=key, inputs=[self.prep.run_inputs(e.values, scaler)[0] for e in self.experiments])
        return self._cache["inputs"]

    def windows(self, scaler: Scaler | None, part: str) -> np.ndarray:
        """``train``: inputs of the first train_rows rows of each experiment; ``held_out``: of the rest."""
        n = self.train_rows
        return np.concatenate([x[:n] if part == "train" else x[n:] for x in self.run_inputs(scaler)])

    def held_out_labels(self) -> np.ndarray:
        return np.concatenate([e.labels[self.train_rows:] for e in self.experiments])

    def default_reference(self, scaler: Scaler | None) -> Reference:
        """What /detect scales with when a request brings no reference rows of its own: all local training rows."""
        return self.prep.reference(self.train_raw() if self.prep.baseline == "run" else None, scaler)
