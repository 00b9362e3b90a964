"""Container tests against a real Docker engine: engine check, images built from the repository's Dockerfiles.

No engine reachable: the tests skip, unless the environment variable CI is set, in which case they fail (CI must
prove the containers work; .ci/docker-engine.sh prepares an engine). Everything a run creates is named per run
(image tags, compose project, host ports), so runs in parallel do not collide. Only 127.0.0.1 is ever contacted.

Knobs: FEDAD_BASE_IMAGE (default: python:3.11-slim if present locally, else local/python-base, else
python:3.11-slim pulled by the build), FEDAD_COMPOSE ("docker compose" or "docker-compose"; default: v2 if present).
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_ID = uuid.uuid4().hex[:8]
TIMINGS: dict[str, str] = {}  # printed in the terminal summary: what docs/containers.md reports


def run(cmd: list[str], timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run a command, capturing its output; on failure the assertion shows the command and its output."""
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"timed out after {timeout} s: {shlex.join(cmd)}\n{exc.stdout or ''}{exc.stderr or ''}")
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}: {shlex.join(cmd)}\n{result.stdout[-4000:]}"
                             f"\n{result.stderr[-4000:]}")
    return result


def compose_command() -> list[str] | None:
    chosen = os.environ.get("FEDAD_COMPOSE")
    if chosen:
        return shlex.split(chosen)
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "`docker info` timed out"
    if info.returncode != 0 or not info.stdout.strip():
        return f"`docker info` failed: {info.stderr.strip()[:300]}"
    if compose_command() is None:
        return "neither `docker compose` (v2) nor `docker-compose` (1.29) is installed"
    return None


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """The engine's version; skip without one, but fail when CI is set."""
    problem = _engine_problem()
    if problem:
        if "CI" in os.environ:
            pytest.fail(f"CI is set and no usable Docker engine: {problem}. Run `bash .ci/docker-engine.sh start` "
                        "(as root) first.", pytrace=False)
        pytest.skip(f"no usable Docker engine ({problem}); with CI set this is a failure")
    version = run(["docker", "version", "--format", "{{.Server.Version}}"]).stdout.strip()
    TIMINGS["engine"] = f"Docker {version}, compose: {shlex.join(compose_command())}"
    return version


def _image_present(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True, check=False).returncode == 0


def base_image() -> str:
    if os.environ.get("FEDAD_BASE_IMAGE"):
        return os.environ["FEDAD_BASE_IMAGE"]
    for candidate in ("python:3.11-slim", "local/python-base"):
        if _image_present(candidate):
            return candidate
    return "python:3.11-slim"


def _ensure_wheelhouse() -> None:
    """`make wheels` (a no-op while build/wheels is newer than pyproject.toml), one run at a time."""
    lock_path = REPO / "build" / ".wheels.lock"
    lock_path.parent.mkdir(exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        t0 = time.monotonic()
        run(["make", "--no-print-directory", "-C", str(REPO), "-f", "mk/containers.mk", "wheels",
             f"PY={sys.executable}"], timeout=900)
        TIMINGS["make wheels"] = f"{time.monotonic() - t0:.1f} s"


@dataclass(frozen=True)
class Images:
    aggregator: str
    worker: str
    base: str


@pytest.fixture(scope="session")
def images(docker_engine) -> Iterator[Images]:
    """Both images built from docker/*.Dockerfile with per-run tags; the tags (not the layer cache) go at the end."""
    _ensure_wheelhouse()
    built = Images(aggregator=f"fedad-aggregator:test-{RUN_ID}", worker=f"fedad-worker:test-{RUN_ID}",
                   base=base_image())
    try:
        for name, tag in (("aggregator", built.aggregator), ("worker", built.worker)):
            t0 = time.monotonic()
            run(["docker", "build", "--build-arg", f"BASE_IMAGE={built.base}", "-f", f"docker/{name}.Dockerfile",
                 "-t", tag, "."], cwd=REPO, timeout=900)
            size = int(run(["docker", "image", "inspect", "--format", "{{.Size}}", tag]).stdout)
            TIMINGS[f"build {name}"] = f"{time.monotonic() - t0:.1f} s"
            TIMINGS[f"size {name}"] = f"{size / 1e6:.0f} MB (base {built.base})"
        yield built
    finally:
        for tag in (built.aggregator, built.worker):
            # --no-prune: keep the untagged parent layers, the next run's build cache
            subprocess.run(["docker", "rmi", "--no-prune", tag], capture_output=True, check=False)


@pytest.fixture(scope="session")
def detect_image(docker_engine) -> Iterator[str]:
    """The detect-only worker image (docker/worker-detect.Dockerfile) for this machine's architecture."""
    _ensure_wheelhouse()
    tag = f"fedad-worker-detect:test-{RUN_ID}"
    t0 = time.monotonic()
    run(["docker", "build", "--build-arg", f"BASE_IMAGE={base_image()}", "-f", "docker/worker-detect.Dockerfile",
         "-t", tag, "."], cwd=REPO, timeout=900)
    size = int(run(["docker", "image", "inspect", "--format", "{{.Size}}", tag]).stdout)
    TIMINGS["build worker-detect"] = f"{time.monotonic() - t0:.1f} s"
    TIMINGS["size worker-detect"] = f"{size / 1e6:.0f} MB (base {base_image()})"
    try:
        yield tag
    finally:
        run(["docker", "rmi", "--no-prune", tag], check=False)


@pytest.fixture(scope="session")
def trained_state(tmp_path_factory) -> Path:
    """Two SKAB workers federated for 2 rounds x 2 epochs on loopback; ``trained_state / <worker id>`` is that
    worker's state dir, a model a container can serve as it is (copy it; the aggregator is gone)."""
    from support import Stack

    tmp = tmp_path_factory.mktemp("federation")
    stack = Stack(tmp, workers=("valve1", "valve2"), rounds=2, epochs=2, min_workers=2, quorum=2)
    stack.start()
    try:
        stack.wait_done(600)
    finally:
        stack.stop()
    return tmp


def free_loopback_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("container timings and sizes")
        for key, value in TIMINGS.items():
            terminalreporter.write_line(f"{key:<40} {value}")
