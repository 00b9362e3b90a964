"""A real Mosquitto broker per test (Debian's package), and a trained worker connected to it.

Without the ``mosquitto`` binary the MQTT tests skip on a developer machine and FAIL under CI (``CI=true``): CI
installs it (.ci/run), so a missing broker there is a broken setup, not a reason to pass."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from support import Process, free_port, get_json, wait_until


class Mosquitto:
    """``mosquitto`` on 127.0.0.1:<free port>, anonymous. Persistent sessions survive ``stop``/``start`` (same
    port), as on an edge node whose broker restarts: a subscriber's QoS 1 messages wait for it."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                               f"persistence_location {folder}/\n"
                               f"user {getpass.getuser()}\n"  # as root it would switch to "mosquitto": no db
                               "max_queued_messages 100000\n")  # a test publishes in bursts faster than real devices
        self.log = folder / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Mosquitto":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([shutil.which("mosquitto"), "-c", str(self.config)], stdout=log,
                                         stderr=subprocess.STDOUT)
        wait_until(self._accepts, 10, f"mosquitto on port {self.port}", interval=0.05)
        return self

    def _accepts(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


def require_mosquitto() -> None:
    if shutil.which("mosquitto") is None:
        message = "mosquitto is not installed (apt-get install mosquitto)"
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail(message + ": CI must install it (.ci/run)")
        pytest.skip(message)


@pytest.fixture
def mosquitto(tmp_path):
    """A broker for one test (it may stop and start it)."""
    require_mosquitto()
    broker = Mosquitto(tmp_path / "broker").start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def module_mosquitto(tmp_path_factory):
    """A broker shared by a module's tests."""
    require_mosquitto()
    broker = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def mqtt_worker():
    """``mqtt_worker(stack, broker, folder, overrides=None)`` starts a trained worker on ``broker``."""
    return start_mqtt_worker


def start_mqtt_worker(stack, broker: Mosquitto, folder: Path, worker: str = "valve1",
                      overrides: dict[str, str] | None = None) -> Process:
    """The trained ``stack``'s worker, restarted on a copy of its state dir with MQTT ingestion on ``broker``.
    Its aggregator is unreachable on purpose: it serves the persisted model and trains no more, so every score in
    a test comes from one fixed model."""
    state = folder / "state"
    if not state.exists():
        shutil.copytree(stack.tmp / worker, state, ignore=shutil.ignore_patterns("streams.json"))
    port = free_port()
    env = dict(stack.env)
    env.update({
        f"FEDAD__WORKERS__{worker.upper()}__PORT": str(port),
        f"FEDAD__WORKERS__{worker.upper()}__STATE_DIR": str(state),
        "FEDAD__AGGREGATOR__URL": f"http://127.0.0.1:{free_port()}",
        "FEDAD__DASHBOARD__TELEMETRY_INTERVAL_S": "0",
        "FEDAD__INGEST__MQTT__ENABLED": "true",
        "FEDAD__INGEST__MQTT__PORT": str(broker.port),
        "FEDAD__INGEST__MQTT__CLIENT_ID": f"fedad-{worker}-{folder.parent.name}-{folder.name}",  # kept on restart
    })
    env.update(overrides or {})
    process = Process(f"{worker}-mqtt", [sys.executable, "-m", "services.worker", "--id", worker], env, folder,
                      f"http://127.0.0.1:{port}")
    process.start().wait_healthy()
    process.port = port
    wait_until(lambda: get_json(process.url + "/readyz"), 60, "the restored model")
    wait_until(lambda: (get_json(process.url + "/v1/ingest") or {}).get("mqtt", {}).get("connected"), 30,
               "the worker's MQTT connection")
    return process
