"""Test support: real services as subprocesses on free loopback ports, each with its own state dirs."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import uvicorn

from benchmarks.common import (  # one harness for tests and benchmarks
    AFTER_CAMPAIGN,
    Process,
    free_port,
    get_json,
    newest_round,
    wait_until,
)

REPO = Path(__file__).resolve().parent.parent
WORKER_IDS = ("valve1", "valve2", "other")


def scored(stream: str, first: int, scores, flags, rows=None, threshold: float = 1.0, model_round: int = 1,
           times=None, top=None):
    """New rows of a stream as the stream table hands them to its watchers (services/worker/watchers.Scored), for
    unit tests of the alarms, the live buffer and the drift tests: by default one-column rows, times 0, 1, 2, ...
    from the first row's number, a model of ``threshold`` and ``model_round``, no top sensors."""
    from services.worker.watchers import Scored

    scores, flags = np.asarray(scores), np.asarray(flags, dtype=bool)
    n = len(scores)
    return Scored(stream, np.zeros((n, 1), np.float32) if rows is None else rows,
                  [float(first + i) for i in range(n)] if times is None else times, scores, flags,
                  SimpleNamespace(threshold=threshold, model_round=model_round), first, top or [None] * n)


class Stack:
    """An aggregator and workers from the repository's config.yaml, on free ports, with overrides."""

    def __init__(self, tmp: Path, workers=WORKER_IDS, rounds: int = 2, epochs: int = 2, min_workers: int | None = None,
                 quorum: int | None = None, overrides: dict[str, str] | None = None):
        self.tmp = tmp
        self.workers = list(workers)
        self.agg_port = free_port()
        self.agg_url = f"http://127.0.0.1:{self.agg_port}"
        self.worker_ports = {w: free_port() for w in self.workers}
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDAD__")}
        env.update({
            "FEDAD__AGGREGATOR__PORT": str(self.agg_port),
            "FEDAD__AGGREGATOR__URL": self.agg_url,
            "FEDAD__AGGREGATOR__STATE_DIR": str(tmp / "aggregator"),
            "FEDAD__FEDERATION__ROUNDS": str(rounds),
            "FEDAD__FEDERATION__MIN_WORKERS": str(min_workers or len(self.workers)),
            "FEDAD__FEDERATION__QUORUM": str(quorum or min(2, len(self.workers))),
            "FEDAD__MODEL__LOCAL_EPOCHS": str(epochs),
            "PYTHONUNBUFFERED": "1",
        })
        for w in self.workers:
            env[f"FEDAD__WORKERS__{w.upper()}__PORT"] = str(self.worker_ports[w])
            env[f"FEDAD__WORKERS__{w.upper()}__STATE_DIR"] = str(tmp / w)
        env.update(overrides or {})
        self.env = env
        self.aggregator = Process("aggregator", [sys.executable, "-m", "services.aggregator"], env, tmp,
                                  self.agg_url)
        self.worker_services = {w: self._worker(w) for w in self.workers}

    def _worker(self, w: str) -> Process:
        return Process(w, [sys.executable, "-m", "services.worker", "--id", w], self.env, self.tmp, self.worker_url(w))

    def worker_url(self, w: str) -> str:
        return f"http://127.0.0.1:{self.worker_ports[w]}"

    def start(self) -> "Stack":
        self.aggregator.start()
        for s in self.worker_services.values():
            s.start()
        self.aggregator.wait_healthy()
        for s in self.worker_services.values():
            s.wait_healthy()
        return self

    def restart_worker(self, w: str) -> Process:
        self.worker_services[w] = self._worker(w).start().wait_healthy()
        return self.worker_services[w]

    def status(self) -> dict | None:
        return get_json(f"{self.agg_url}/v1/status")

    def worker_status(self, w: str) -> dict | None:
        return get_json(f"{self.worker_url(w)}/v1/status")

    def wait_done(self, timeout: float = 180) -> dict:
        """Until the first campaign is done and every worker installed its last model (served, or refused by its
        gate): the aggregator is then idle (continual rounds, the default) or done, and so is each worker."""
        def done():
            s = self.status()
            if not s or s["phase"] not in AFTER_CAMPAIGN or s["rounds_done"] < s["rounds_total"]:
                return None
            ws = [self.worker_status(w) for w in self.workers]
            return s if all(x and newest_round(x) == s["rounds_done"] and x["phase"] in AFTER_CAMPAIGN
                            for x in ws) else None
        try:
            return wait_until(done, timeout, "the federation to finish", interval=0.5)
        except TimeoutError:
            raise AssertionError("federation did not finish; logs:\n" + self.logs()) from None

    def logs(self) -> str:
        services = [self.aggregator, *self.worker_services.values()]
        return "\n".join(f"--- {s.name}\n{s.log()}" for s in services)

    @contextmanager
    def trained(self, timeout: float = 180) -> Iterator["Stack"]:
        """The stack started, its planned rounds done, and stopped on leaving: a module fixture's whole life."""
        self.start()
        try:
            self.wait_done(timeout)
            yield self
        finally:
            self.stop()

    def stop(self) -> None:
        for s in [*self.worker_services.values(), self.aggregator]:
            s.kill(signal.SIGTERM)


class RecordingProxy:
    """A reverse proxy on loopback that records every request body it forwards: what crosses the wire."""

    def __init__(self, target: str):
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[dict] = []
        self._server = uvicorn.Server(uvicorn.Config(self._app, host="127.0.0.1", port=self.port,
                                                     log_level="warning", lifespan="off", interface="asgi3"))

    async def _app(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k.decode() not in ("host",)}
        path = scope["path"] + (("?" + scope["query_string"].decode()) if scope["query_string"] else "")
        self.requests.append({"method": scope["method"], "path": scope["path"], "headers": headers, "body": body})
        async with httpx.AsyncClient(timeout=90) as client:
            r = await client.request(scope["method"], self.target + path, content=body, headers=headers)
        drop = {"content-length", "transfer-encoding", "content-encoding", "connection"}
        out = [(k.encode(), v.encode()) for k, v in r.headers.items() if k.lower() not in drop]
        out.append((b"content-length", str(len(r.content)).encode()))
        await send({"type": "http.response.start", "status": r.status_code, "headers": out})
        await send({"type": "http.response.body", "body": r.content})

    def start(self) -> "RecordingProxy":
        threading.Thread(target=self._server.run, daemon=True).start()
        wait_until(lambda: self._server.started, 10, "the recording proxy")
        return self

    def stop(self) -> None:
        self._server.should_exit = True


def partition_runs(settings, partition: list[str]):
    """The runs of any partition (folders or files under data.source.dir), read exactly as a worker reads its own."""
    from services.data.sources import load_node

    worker = settings.workers[0].model_copy(update={"partition": partition})
    return load_node(settings, worker).runs


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing_tool(message: str) -> None:
    """A test that needs a tool this machine lacks: skipped on a laptop, a failure in CI (.ci/run installs it)."""
    if in_ci():
        pytest.fail(f"{message} — CI=true, so this is a failure, not a skip (.ci/run must install it)", pytrace=False)
    pytest.skip(message)


def near_constant_device(folder: Path) -> Path:
    """A pump logging its state and power every 10 s, two distinct rows while it runs normally (off 20 W, on 800 W,
    50 rows each in turn), then 30-row faults at 400 W; a config of one worker reading it. Returns the config."""
    import yaml

    lines = ["time,state,power,label"]
    for i in range(1200):
        on = (i // 50) % 2 == 1
        fault = i >= 600 and i % 300 < 30
        lines.append(f"2024-05-01 {i // 360:02d}:{i // 6 % 60:02d}:{i % 6 * 10:02d},{'on' if on else 'off'},"
                     f"{400 if fault else 800 if on else 20},{int(fault)}")
    (folder / "pump.csv").write_text("\n".join(lines) + "\n")
    raw = {"data": {"source": {"dir": str(folder), "timestamp": "time", "label": {"column": "label"},
                               "categorical": {"state": {"levels": ["off", "on"]}}},
                    "features": ["state", "power"], "window": 10},
           "model": {"hidden": [4, 1, 4]},
           "federation": {"rounds": 2, "min_workers": 1, "quorum": 1},
           "workers": [{"id": "pump", "partition": ["pump.csv"], "state_dir": str(folder / "state"),
                        "token": "token-pump"}]}
    (folder / "config.yaml").write_text(yaml.safe_dump(raw))
    return folder / "config.yaml"
