"""Training in a child process, one per round: the worker that serves /detect stays free of torch.

A round's job goes to ``python -m services.worker.train_round`` through files in ``<state_dir>/training/``; the child
trains, writes the new weights and exits, and its memory goes with it. The parent measures what the round cost:
wall time and the child's peak resident memory (``wait4``'s ru_maxrss, or the child's own VmHWM when it reports
it). A child that crashes or is killed (non-zero exit, a signal: the kernel's OOM killer sends SIGKILL) raises
``TrainingFailed``; the caller reports it and retries, and serving, in the parent, carries on throughout. A child
dies with the worker (PR_SET_PDEATHSIG, services/worker/train_round.py).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from services import atomic

log = logging.getLogger("fedad.worker")
FAULT_POINT = "worker.train"
FAULT_VARIABLE = "FEDAD_FAULT"


class TrainingFailed(Exception):
    """The training process did not deliver: it exited non-zero or was killed."""


@dataclass(frozen=True)
class TrainingRun:
    weights: np.ndarray
    loss: float
    seconds: float  # wall time of the child, start to exit
    peak_rss_bytes: int  # the child's peak resident memory
    cpu_seconds: float  # the child's user + system CPU time


class Trainer:
    """Starts one child per job in ``workdir``; counts the children it started (the fault point ``worker.train``
    fires in the N-th, as ``@N`` says: services/faults.py)."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        shutil.rmtree(self.workdir / "training", ignore_errors=True)  # a job of a process that died with the worker
        self.started = 0

    def train(self, architecture, weights: np.ndarray, inputs: np.ndarray, plan, seed: int,
              on_epoch: Callable[[int, float], None] | None = None) -> TrainingRun:
        """``plan.local_epochs`` of local training of the model ``architecture`` (services/model/layout.py) from
        ``weights``, in a child process."""
        job = self._job({"task": "train", "architecture": architecture, "plan": plan.model_dump(), "seed": seed},
                        weights)
        np.save(job / "inputs.npy", np.ascontiguousarray(inputs, dtype=np.float32))
        self.started += 1
        seconds, peak, cpu = self._run(job, on_epoch, self._env(self.started))
        result = atomic.read_json(job / "result.json")
        if result is None or not (job / "out.npy").exists():
            raise TrainingFailed("the training process exited without writing its result")
        trained = np.load(job / "out.npy")
        # The child's own high-water mark (VmHWM, read after exec) is its peak; wait4's ru_maxrss also counts the
        # pages of this process at fork (Linux keeps the old mm's mark across exec): only a fallback.
        peak = result.get("peak_rss_bytes") or peak
        shutil.rmtree(job, ignore_errors=True)
        return TrainingRun(trained, float(result["loss"]), seconds, peak, cpu)

    def calibrate(self, calibration):
        """A model made servable (services/worker/calibrate.py: graphs, int8, thresholds, the precision) in a child
        process, so this one never loads the ``onnx`` package, onnxruntime's quantisation or torch."""
        job = self._job({"task": "calibrate", "calibration": calibration}, calibration.weights)
        self._run(job, None, self._env(None))
        try:
            return pickle.loads((job / "calibrated.pkl").read_bytes())
        except FileNotFoundError:
            raise TrainingFailed("the calibration process exited without writing the model") from None
        finally:
            shutil.rmtree(job, ignore_errors=True)

    def _job(self, job: dict, weights: np.ndarray) -> Path:
        folder = self.workdir / "training"
        shutil.rmtree(folder, ignore_errors=True)  # the files of a job that failed
        folder.mkdir(parents=True)
        (folder / "job.pkl").write_bytes(pickle.dumps(job))
        np.save(folder / "weights.npy", np.asarray(weights, dtype=np.float32))
        return folder

    def _run(self, job: Path, on_epoch, env: dict[str, str]) -> tuple[float, int, float]:
        """Run the child to its end: (wall seconds, peak RSS bytes, CPU seconds), or TrainingFailed."""
        started = time.time()
        child = subprocess.Popen([sys.executable, "-m", "services.worker.train_round", str(job)],
                                 stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, text=True)
        assert child.stdout is not None  # stdout=PIPE
        try:
            for line in child.stdout:  # progress, one JSON line per epoch, until the child closes stdout
                try:
                    epoch = json.loads(line)
                except ValueError:
                    continue
                if on_epoch is not None:
                    on_epoch(int(epoch["epoch"]), float(epoch["loss"]))
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            child.stdout.close()
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        seconds = time.time() - started
        peak = usage.ru_maxrss * 1024  # KiB on Linux; an upper bound (it counts this process at fork), see train()
        code = child.returncode
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (out of memory?)" if -code == signal.SIGKILL else ""
            raise TrainingFailed(f"training process {child.pid} killed by {name}{hint} after {seconds:.1f}s, "
                                 f"peak {peak / 2**20:.0f} MiB")
        if code != 0:
            raise TrainingFailed(f"training process {child.pid} exited with code {code} after {seconds:.1f}s "
                                 "(its traceback is in the worker's log)")
        return seconds, peak, usage.ru_utime + usage.ru_stime

    def _env(self, number: int | None) -> dict[str, str]:
        """The worker's environment; a ``worker.train`` fault fires only in the training process it names (``@N``:
        the N-th of this worker, default the first; ``number`` None: an export), other points are the worker's."""
        env = dict(os.environ)
        spec = env.pop(FAULT_VARIABLE, "")
        kept = []
        for item in filter(None, (x.strip() for x in spec.split(","))):
            point, _, rest = item.partition(":")
            action, _, nth = rest.partition("@")
            if point == FAULT_POINT and number is not None and int(nth or 1) == number:
                kept.append(f"{point}:{action or 'pause'}")
        if kept:
            env[FAULT_VARIABLE] = ",".join(kept)
        return env
