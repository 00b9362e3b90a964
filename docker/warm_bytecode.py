"""Build time only: import and briefly exercise what a service runs, so that the bytecode of every module it loads
(including the ~800 that torch imports lazily at the first optimiser step) is compiled into the image.

The image keeps bytecode for these modules only: pip installs with --no-compile (bytecode for everything would add
~240 MB), and the non-root service cannot write __pycache__ at run time, so a module without it is recompiled at
every start (measured: +2.7 s before a worker's first training step). Running this doubles as a smoke test: the
build fails if the service cannot be imported with the packages in the image.

    python warm_bytecode.py worker|worker-detect|aggregator
"""

import importlib
import io
import sys
import tempfile
import warnings
from pathlib import Path


def exercise_torch() -> None:
    """A generic small autoencoder: forward, an Adam step, ONNX export and int8 quantisation."""
    import numpy as np
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 8))
    x = torch.randn(64, 8)
    with torch.no_grad():
        model(x)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = nn.functional.mse_loss(model(x), x)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    try:  # the service's own export path, when its signatures are the ones this script knows
        from services.model.onnx_export import export_onnx, quantize_int8

        with tempfile.TemporaryDirectory() as tmp:
            quantize_int8(export_onnx(model, 8), np.random.rand(300, 8).astype(np.float32), Path(tmp))
    except Exception as exc:  # noqa: BLE001  warm what we can; the import smoke test is what must pass
        warnings.warn(f"ONNX export/quantisation not exercised: {type(exc).__name__}: {exc}", stacklevel=1)
        buffer = io.BytesIO()
        torch.onnx.export(model, (x[:1],), buffer, dynamo=False)


def exercise_detect() -> None:
    """What a detect-only worker runs without torch: the fp32 graph from weights, int8 of it, the in-graph session."""
    import numpy as np

    from services.data.windows import Preprocessing
    from services.model.graph import autoencoder_graph
    from services.model.layout import Architecture
    from services.model.preprocess_graph import served_graph
    from services.model.quantize import quantize_int8
    from services.model.scoring import make_session

    fp32 = autoencoder_graph(Architecture.dense(6, (4,)).initial_weights(0), 6, [4])
    with tempfile.TemporaryDirectory() as tmp:
        int8 = quantize_int8(fp32, np.random.rand(300, 6).astype(np.float32), Path(tmp))
    prep = Preprocessing(columns=(0, 1), window=3, stats=("mean", "std", "slope"), baseline="run")
    make_session(served_graph(int8, prep, prep.reference(np.random.rand(10, 2), None), 2))


ENTRY_MODULES = {
    "worker": ["services.worker.__main__", "services.worker.app"],
    "worker-detect": ["services.worker.__main__", "services.worker.app"],
    "aggregator": ["services.aggregator.__main__", "services.aggregator.app"],
}


def main(service: str) -> int:
    if service not in ENTRY_MODULES:
        print(__doc__, file=sys.stderr)
        return 2
    for module in [*ENTRY_MODULES[service], "healthcheck"]:  # healthcheck: run every few seconds
        importlib.import_module(module)
    if service == "worker":  # the aggregator has no torch (numpy seeds its first model)
        exercise_torch()
    if service.startswith("worker"):
        exercise_detect()
    print(f"{service}: {len(sys.modules)} modules imported and compiled")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
