"""What a session with the preprocessing in its graph is fed (services/model/preprocess_graph.py): the raw rows'
input name and a run's reference as float64 columns. Kept apart from the graph builder, which needs the ``onnx``
package: a worker serves such a session, built elsewhere, with numpy and onnxruntime alone."""

from __future__ import annotations

import numpy as np

from services.data.windows import Preprocessing, Reference

RAW_INPUT_NAME = "rows"  # the served graph's input: raw rows (≥ 1), all data.features columns, consecutive, oldest first
REFERENCE_PREFIX = "reference_"  # + mean, std, feature_mean, feature_std: float64 [n, 1], baked in or fed


def feature_scaling(prep: Preprocessing) -> bool:
    """Whether a reference of ``prep`` standardises the window statistics again (``Preprocessing.reference``)."""
    return prep.baseline == "run" and bool(prep.stats)


def column(values) -> np.ndarray:
    """A per-channel (or per-input) vector that broadcasts over the batch axis of a channel-major tensor."""
    return np.asarray(values, np.float64).reshape(-1, 1)


def reference_feeds(prep: Preprocessing, reference: Reference) -> dict[str, np.ndarray]:
    """A run's reference as the feeds of a graph built with ``reference=None``: it then scores as if built with
    this reference. Raises ValueError when the reference does not fit ``prep``."""
    if len(reference.mean) != prep.channels or len(reference.std) != prep.channels:
        raise ValueError(f"the reference scales {len(reference.mean)} channels, the model sees {prep.channels}")
    fields = {"mean": reference.mean, "std": reference.std}
    if feature_scaling(prep):
        if len(reference.feature_mean) != prep.width or len(reference.feature_std) != prep.width:
            raise ValueError(f"the reference scales {len(reference.feature_mean)} window statistics, the model takes "
                             f"{prep.width}")
        fields.update(feature_mean=reference.feature_mean, feature_std=reference.feature_std)
    return {REFERENCE_PREFIX + name: column(values) for name, values in fields.items()}
