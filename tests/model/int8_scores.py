"""Scores of model inputs with the project's own session, written to a file: run by test_int8_across_cpus.py under
QEMU's user-mode emulation of another CPU. Usage: python int8_scores.py IN.npz OUT.npz (IN holds ``x`` and one
ONNX model per other key, as bytes)."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.model.scoring import make_session  # noqa: E402

given = np.load(sys.argv[1])
x = given["x"]
np.savez(sys.argv[2], **{name: make_session(given[name].tobytes()).run(["score"], {"x": x})[0]
                         for name in given.files if name != "x"})
