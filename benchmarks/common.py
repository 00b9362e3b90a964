"""Shared by the benchmark scripts: the machine, real services on free loopback ports, timing helpers, output.

Everything binds and connects to 127.0.0.1 only. Services run as separate processes (``python -m services.…``), so
the load generator never shares an interpreter with the server it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from services.machine import cpu_flags, cpu_model

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
AFTER_CAMPAIGN = ("idle", "done")  # the phase once the first rounds are done: idle with continual rounds, else done


def newest_round(worker_status: dict) -> int | None:
    """The newest global round a worker installed, served or refused by its gate (its ``model_round`` is the served
    one, which stays older when the gate refuses a model)."""
    latest = (worker_status.get("models") or {}).get("latest_round")
    return latest if latest is not None else worker_status.get("model_round")


# -- the machine -------------------------------------------------------------------------------------------------------
def load_average() -> tuple[float, float, float]:
    with contextlib.suppress(OSError):
        return os.getloadavg()
    return (float("nan"),) * 3


def machine() -> dict:
    return {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "nproc": os.cpu_count(),
            "cpu": cpu_model(), "cpu_flags": cpu_flags(), "python": platform.python_version(),
            "load_avg": [round(x, 2) for x in load_average()]}


def print_header(title: str, argv: list[str] | None = None) -> dict:
    m = machine()
    command = " ".join(["python", "-m", f"benchmarks.{Path(sys.argv[0]).stem}", *(argv if argv is not None
                                                                                  else sys.argv[1:])])
    print(f"# {title}")
    print(f"# command: {command}")
    flags = " ".join(m["cpu_flags"]) or "no avx2/vnni"
    print(f"# machine: nproc={m['nproc']}, cpu={m['cpu']!r} ({flags}), python {m['python']}; date {m['date']}; "
          f"load average {m['load_avg'][0]:.2f} {m['load_avg'][1]:.2f} {m['load_avg'][2]:.2f} (at start)")
    return m


def rss_mib(pid: int) -> float:
    """Resident set size of a process, MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- timing ------------------------------------------------------------------------------------------------------------
def best_of(fn, repeat: int, number: int) -> float:
    """Seconds per call: the best of ``repeat`` timings of ``number`` calls (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - started) / number)
    return best


def median(values) -> float:
    return statistics.median(values)


# -- services ----------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    """``predicate()``'s first truthy result, polled every ``interval`` s; TimeoutError naming ``what`` after that."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def get_json(url: str, timeout: float = 5.0):
    try:
        r = httpx.get(url, timeout=timeout)
        return r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


class Process:
    """A service process with its output in a log file; stopped (SIGTERM, then SIGKILL) on exit.

    The tests' harness (tests/support.py) uses it too: one way to start, probe and stop a service.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, url: str, cwd: Path = REPO):
        self.name, self.argv, self.env, self.url, self.cwd = name, argv, env, url, cwd  # cwd: whose services run
        self.log_path = Path(log_dir) / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Process:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_healthy(self, timeout: float = 60, path: str = "/healthz") -> Process:
        def healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")
            return get_json(f"{self.url}{path}", timeout=1)
        wait_until(healthy, timeout, f"{self.name} {path}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """``sig`` and wait: SIGKILL is a crash, SIGTERM a graceful stop."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


class Unreachable(Exception):
    """The aggregator did not answer (connection refused or cut: it is down or restarting)."""


class Connection:
    """One keep-alive HTTP/1.1 connection with hand-written requests: cheap enough to stand for a node; a
    connection the server closed (idle, or a restart) is opened again once."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> Connection:
        """Connect now rather than at the first request (a benchmark that times its requests, not the connects)."""
        self.reader, self.writer = await asyncio.open_connection(LOOPBACK, self.port)
        return self

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"",
                      timeout: float = 120) -> tuple[int, dict, bytes]:
        for attempt in (0, 1):
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(LOOPBACK, self.port)
                head = f"{method} {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Length: {len(body)}\r\n"
                head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
                self.writer.write(head.encode() + body)
                return await asyncio.wait_for(self._answer(), timeout)
            except (OSError, asyncio.IncompleteReadError, ConnectionError, EOFError) as exc:
                self.close()
                if attempt:  # a fresh connection failed too: the server is away
                    raise Unreachable(str(exc) or type(exc).__name__) from None
        raise AssertionError("unreachable")

    async def _answer(self) -> tuple[int, dict, bytes]:
        assert self.reader is not None
        status_line = await self.reader.readline()
        if not status_line:
            raise EOFError("connection closed")
        status = int(status_line.split()[1])
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        length = int(headers.get("content-length", 0))
        return status, headers, await self.reader.readexactly(length) if length else b""

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def base_env(**overrides: str) -> dict[str, str]:
    """This environment without FEDAD__ overrides, plus ``overrides``; one thread per numeric library."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDAD__")}
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    env.update(overrides)
    return env


class Federation:
    """A real aggregator and workers from config.yaml on free loopback ports, state in ``workdir``."""

    def __init__(self, workdir: Path, workers: list[str], rounds: int, epochs: int, checkout: Path = REPO,
                 **overrides: str):
        """``checkout``: the source tree whose services run (another revision's worktree, for a reference)."""
        self.workdir = Path(workdir)
        self.workers = workers
        self.agg_port = free_port()
        self.agg_url = f"http://{LOOPBACK}:{self.agg_port}"
        self.ports = {w: free_port() for w in workers}
        env = base_env(**{
            "FEDAD__AGGREGATOR__HOST": LOOPBACK,
            "FEDAD__AGGREGATOR__PORT": str(self.agg_port),
            "FEDAD__AGGREGATOR__URL": self.agg_url,
            "FEDAD__AGGREGATOR__STATE_DIR": str(self.workdir / "aggregator"),
            "FEDAD__FEDERATION__ROUNDS": str(rounds),
            "FEDAD__FEDERATION__MIN_WORKERS": str(len(workers)),
            "FEDAD__FEDERATION__QUORUM": str(len(workers)),
            "FEDAD__MODEL__LOCAL_EPOCHS": str(epochs),
        })
        for w in workers:
            env[f"FEDAD__WORKERS__{w.upper()}__HOST"] = LOOPBACK
            env[f"FEDAD__WORKERS__{w.upper()}__PORT"] = str(self.ports[w])
            env[f"FEDAD__WORKERS__{w.upper()}__STATE_DIR"] = str(self.workdir / w)
        env.update(overrides)
        self.env = env
        self.aggregator = Process("aggregator", [sys.executable, "-m", "services.aggregator"], env, self.workdir,
                                  self.agg_url, checkout)
        self.services = {w: Process(w, [sys.executable, "-m", "services.worker", "--id", w], env, self.workdir,
                                    self.worker_url(w), checkout) for w in workers}

    def worker_url(self, w: str) -> str:
        return f"http://{LOOPBACK}:{self.ports[w]}"

    def start(self) -> Federation:
        self.aggregator.start()
        for s in self.services.values():
            s.start()
        self.aggregator.wait_healthy()
        for s in self.services.values():
            s.wait_healthy()
        return self

    def wait_trained(self, timeout: float = 600) -> dict:
        def done():
            status = get_json(f"{self.agg_url}/v1/status")
            if not status or status["phase"] not in AFTER_CAMPAIGN or status["rounds_done"] < status["rounds_total"]:
                return None
            ws = {w: get_json(f"{self.worker_url(w)}/v1/status") for w in self.workers}
            ok = all(s and newest_round(s) == status["rounds_done"] and s["phase"] in AFTER_CAMPAIGN
                     for s in ws.values())
            return ws if ok else None
        try:
            return wait_until(done, timeout, "the federation to finish", interval=0.25)
        except TimeoutError:
            raise RuntimeError("federation did not finish; logs:\n" + "\n".join(
                f"--- {p.name}\n{p.log()}" for p in [self.aggregator, *self.services.values()])) from None

    def stop(self) -> None:
        for p in [*self.services.values(), self.aggregator]:
            p.stop()


@contextlib.contextmanager
def workdir(keep: str | None = None):
    """A temporary folder for state and logs (or ``keep``, left in place)."""
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
        return
    path = Path(tempfile.mkdtemp(prefix="fedad-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def emit_json(path: str | None, payload: dict) -> None:
    """Optionally write the figures as JSON too (``--json FILE``), for BENCHMARKS.md and the smoke tests."""
    if path:
        Path(path).write_text(json.dumps(payload, indent=1, default=float))


# -- profiles ----------------------------------------------------------------------------------------------------------
class Profile:
    """``py-spy record`` of a running service (pip install py-spy; needs ptrace rights, e.g. root): collapsed stacks
    in ``path``, summarised by ``top``. A no-op when py-spy is missing."""

    def __init__(self, pid: int, path: Path, rate: int = 250):
        self.path = Path(path)
        exe = shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy")
        self.proc = None
        if Path(exe).exists():
            self.proc = subprocess.Popen([str(exe), "record", "-p", str(pid), "-r", str(rate), "-f", "raw", "-o",
                                          str(self.path), "--nonblocking"], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # attached before the load starts

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def top(self, n: int = 15) -> list[str]:
        """The ``n`` frames with the largest inclusive share of samples, and the largest own share."""
        if not self.path.exists():
            return []
        own: dict[str, int] = {}
        inclusive: dict[str, int] = {}
        total = 0
        for line in self.path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            k = int(count)
            total += k
            frames = stack.split(";")
            own[frames[-1]] = own.get(frames[-1], 0) + k
            for f in set(frames):
                inclusive[f] = inclusive.get(f, 0) + k
        if not total:
            return []
        lines = [f"{total} samples; own time:"]
        lines += [f"  {v / total:6.1%}  {f}" for f, v in sorted(own.items(), key=lambda x: -x[1])[:n]]
        lines.append("inclusive time (frames under the server's entry points):")
        lines += [f"  {v / total:6.1%}  {f}" for f, v in sorted(inclusive.items(), key=lambda x: -x[1])[:n + 12]
                  if v < total]
        return lines
