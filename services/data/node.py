"""An edge node's local data and its model inputs, shared by the worker service and the evaluation
(services/evaluation) so both train, calibrate and score on exactly the same inputs.

Besides its source's runs a node may hold extra runs that only train: live rows the served model scored normal
(services/worker/buffer.py). They have no labels and nothing held out, so they change neither the held-out
figures nor the default scaling of /detect rows."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.data.selection import TrainingSelection
from services.data.source import Run
from services.data.windows import Preprocessing, Reference
from services.protocol.scaling import Scaler


@dataclass
class NodeData:
    """The node's own runs; rows never leave this object except as aggregates."""

    runs: list[Run]
    prep: Preprocessing
    selection: TrainingSelection
    _cache: dict = field(default_factory=dict, repr=False)
    extra: list[Run] = field(default_factory=list)  # runs whose every row trains (live normal rows)

    def __post_init__(self):
        self.masks = [self.selection.mask(run) for run in self.runs]

    def with_extra(self, extra: list[Run]) -> NodeData:
        """The same source runs plus ``extra`` training runs (runs shorter than one window are left out)."""
        usable = [run for run in extra if len(run.values) >= max(2, self.prep.window)]
        return NodeData(self.runs, self.prep, self.selection, extra=usable)

    def train_counts(self) -> dict[str, int]:
        """Training rows per source run, by run name: what a later reload is compared with to count new rows."""
        counts: dict[str, int] = {}
        for run, mask in zip(self.runs, self.masks):
            counts[run.name] = counts.get(run.name, 0) + int(mask.sum())
        return counts

    def rows_new_since(self, trained: dict[str, int]) -> int:
        """Source training rows beyond ``trained`` (an earlier ``train_counts``): new files, grown runs."""
        return sum(max(0, n - trained.get(name, 0)) for name, n in self.train_counts().items())

    @property
    def labelled(self) -> bool:
        """Every run has labels: only then are detection figures (F1, FAR, ...) meaningful."""
        return bool(self.runs) and all(run.labelled for run in self.runs)

    def train_raw(self) -> np.ndarray:
        """Raw rows that train (the node's normal rows), all runs, extra runs included."""
        return np.concatenate([self._source_train_raw(), *(run.values for run in self.extra)])

    def _source_train_raw(self) -> np.ndarray:
        return np.concatenate([run.values[mask] for run, mask in zip(self.runs, self.masks)])

    def reference(self, run: Run, mask: np.ndarray, scaler: Scaler | None) -> Reference:
        """The scaling of one run: its own training rows (``run``), the node's (``node``) or the federation's scaler."""
        if self.prep.baseline == "run":
            return self.prep.reference(run.values[mask], scaler)
        return self.default_reference(scaler)

    def run_inputs(self, scaler: Scaler | None) -> list[np.ndarray]:
        """Model inputs of every run, each scaled by its reference (cached per scaler)."""
        key = None if scaler is None else (tuple(scaler.mean), tuple(scaler.std))
        if self._cache.get("key") != key or "inputs" not in self._cache:
            self._cache.clear()
            inputs = [self.prep.inputs(run.values, self.reference(run, mask, scaler))
                      for run, mask in zip(self.runs, self.masks)]
            self._cache.update(key=key, inputs=inputs)
        return self._cache["inputs"]

    def windows(self, scaler: Scaler | None, part: str) -> np.ndarray:
        """``train``: inputs of the rows that train; ``held_out``: of the rest."""
        keep = (lambda m: m) if part == "train" else (lambda m: ~m)
        parts = [x[keep(m)] for x, m in zip(self.run_inputs(scaler), self.masks)]
        if part == "train":
            parts.extend(self._extra_inputs(scaler))
        return np.concatenate(parts)

    def _extra_inputs(self, scaler: Scaler | None) -> list[np.ndarray]:
        """Model inputs of the extra runs, each scaled as a source run would be (all its rows are training rows)."""
        if not self.extra:
            return []
        key = None if scaler is None else (tuple(scaler.mean), tuple(scaler.std))
        if self._cache.get("extra_key") != key or "extra_inputs" not in self._cache:
            inputs = [self.prep.inputs(run.values, self.reference(run, np.ones(len(run.values), bool), scaler))
                      for run in self.extra]
            self._cache.update(extra_key=key, extra_inputs=inputs)
        return self._cache["extra_inputs"]

    def held_out_labels(self) -> np.ndarray | None:
        """Labels of the held-out rows, or None when any run is unlabelled."""
        if not self.labelled:
            return None
        return np.concatenate([run.labels[~m] for run, m in zip(self.runs, self.masks)])

    def default_reference(self, scaler: Scaler | None) -> Reference:
        """What /detect scales with when a request brings no reference rows of its own: all local training rows."""
        if "node_reference" not in self._cache or self._cache.get("node_key") != id(scaler):
            rows = self._source_train_raw() if self.prep.baseline in ("run", "node") else None
            self._cache.update(node_reference=self.prep.reference(rows, scaler), node_key=id(scaler))
        return self._cache["node_reference"]
