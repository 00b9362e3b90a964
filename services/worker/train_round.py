"""`python -m services.worker.train_round JOB_DIR`: one job of the worker's training process, then exit.

The worker that serves /detect never imports torch; torch lives only here, in a process started per job
(services/worker/trainer.py) whose memory is all returned when it exits. Jobs, read from JOB_DIR:

- ``train``: ``job.pkl`` (architecture, plan, seed), ``weights.npy`` (the round's start), ``inputs.npy`` (the
  node's training inputs) → ``out.npy`` (the trained weights) and ``result.json`` (loss, peak memory). One JSON line
  per epoch on stdout (``{"epoch": e, "loss": l}``) shows progress.
- ``calibrate``: ``job.pkl`` (a services/worker/calibrate.CalibrationJob) → ``calibrated.pkl``: the model made
  servable (ONNX graphs, int8, thresholds, the precision choice), so the worker never imports the ``onnx`` package or
  onnxruntime's quantisation. It imports no torch unless the kind needs torch's exporter (conv1d, lstm).

For training, the job holds the model's ``Architecture`` (services/model/layout.py) and the plan as plain numbers, so
this process imports torch and the model's torch modules and nothing of serving (onnxruntime, the detector,
pydantic): its peak memory is torch's. It trains through ``services.model.training.train_weights``, the function
``AnomalyDetector.partial_fit`` calls too (tests/worker/test_trainer.py holds the weights equal). The fault point
``worker.train`` is reached here, in the child (services/faults.py).
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import signal
import sys
import time
from pathlib import Path

import numpy as np

from services import atomic, faults

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A worker that is killed takes its training process along (Linux; elsewhere the job simply runs out)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory (VmHWM)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def main(job_dir: Path) -> int:
    die_with_parent()
    started = time.time()
    job = pickle.loads((job_dir / "job.pkl").read_bytes())
    weights = np.load(job_dir / "weights.npy")
    if job["task"] == "calibrate":
        from services.worker.calibrate import calibrate

        atomic.write_bytes(job_dir / "calibrated.pkl", pickle.dumps(calibrate(job["calibration"])))
        return 0

    import torch

    torch.set_num_threads(1)  # an edge box: one core for training, the others keep serving
    from services.model.training import train_weights

    faults.point("worker.train")
    inputs = np.load(job_dir / "inputs.npy")

    def on_epoch(epoch: int, loss: float) -> None:
        print(json.dumps({"epoch": epoch, "loss": loss}), flush=True)

    trained, result = train_weights(job["architecture"], weights, inputs, job["plan"], job["seed"], on_epoch=on_epoch)
    with open(job_dir / "out.npy.tmp", "wb") as f:
        np.save(f, trained)
    os.replace(job_dir / "out.npy.tmp", job_dir / "out.npy")
    atomic.write_json(job_dir / "result.json", {"loss": float(result.loss), "peak_rss_bytes": peak_rss_bytes(),
                                                "seconds": time.time() - started})
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m services.worker.train_round JOB_DIR")
    sys.exit(main(Path(sys.argv[1])))
