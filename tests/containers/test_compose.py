"""The compose stack end to end on a real engine: train, serve /detect to the host, survive a killed worker, turn
the replayer's device data (KubeEdge messages through the stack's Mosquitto) into alarm events, clean up.

One stack per module run, with a unique compose project name, free 127.0.0.1 ports, per-run tokens in an env file
and a mounted config with fewer rounds. The tests run in file order: the kill test needs a federation in progress,
so it comes first; the /detect test needs a finished one, and the last test takes the stack down and checks that
nothing is left.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as paho
import pytest
import yaml

from support import wait_until

from .conftest import REPO, RUN_ID, TIMINGS, compose_command, free_loopback_ports, run

pytestmark = pytest.mark.docker

ROUNDS = 5
LOCAL_EPOCHS = 40  # a few seconds of training per round: long enough to kill a worker mid-round
SERVICES = ("aggregator", "valve1", "valve2", "other")
WORKERS = SERVICES[1:]
REPLAY_SPEED = 25  # SKAB's 1 s rows, 25 per second per device: the first faults come within a minute


def data_dir() -> Path:
    candidates = [os.environ.get("FEDAD_DATA_DIR"), REPO.parent / "shared" / "data"]
    for c in candidates:
        if c and (Path(c) / "skab").is_dir():
            return Path(c).resolve()
    message = f"no skab/ data in {[str(c) for c in candidates if c]}; set FEDAD_DATA_DIR"
    if "CI" in os.environ:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


class Stack:
    def __init__(self, workdir: Path, images):
        self.project = f"fedadtest{RUN_ID}"
        self.workdir = workdir
        self.settings = yaml.safe_load((REPO / "config.yaml").read_text())
        self.settings["federation"]["rounds"] = ROUNDS
        self.settings["federation"]["round_deadline_s"] = 60
        self.settings["model"]["local_epochs"] = LOCAL_EPOCHS
        config = workdir / "config.yaml"
        config.write_text(yaml.safe_dump(self.settings, sort_keys=False))
        config.chmod(0o644)  # read by the containers' non-root user
        self.ports = dict(zip((*SERVICES, "broker"), free_loopback_ports(len(SERVICES) + 1)))
        self.tokens = {w: secrets.token_hex(16) for w in WORKERS}
        env = {
            "FEDAD_AGGREGATOR_IMAGE": images.aggregator,
            "FEDAD_WORKER_IMAGE": images.worker,
            "FEDAD_BROKER_IMAGE": images.broker,
            "FEDAD_REPLAY_SPEED": str(REPLAY_SPEED),
            "FEDAD_DATA_DIR": str(data_dir()),
            "FEDAD_CONFIG_FILE": str(config),
            **{f"FEDAD_TOKEN_{w.upper()}": t for w, t in self.tokens.items()},
            **{f"FEDAD_{s.upper()}_PORT": str(p) for s, p in self.ports.items()},
        }
        self.env_file = workdir / "stack.env"
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        self.base = [*compose_command(), "--env-file", str(self.env_file), "-p", self.project,
                     "-f", str(REPO / "docker" / "compose.yaml")]
        # local HTTP only: no proxy from the environment, ever
        self.http = httpx.Client(timeout=10, trust_env=False)

    def compose(self, *args: str, timeout: float = 180, check: bool = True):
        # the env file carries every variable the compose file uses; the caller's environment must not override
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDAD_")}
        return run([*self.base, *args], timeout=timeout, check=check, cwd=REPO, env=env)

    def url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def get(self, service: str, path: str) -> httpx.Response | None:
        try:
            return self.http.get(self.url(service, path))
        except httpx.TransportError:
            return None

    def status(self, service: str) -> dict | None:
        r = self.get(service, "/v1/status")
        return r.json() if r is not None and r.status_code == 200 else None

    def container(self, service: str) -> str:
        cid = self.compose("ps", "-q", service).stdout.strip()
        assert cid, f"no container for {service}"
        return cid

    def inspect(self, service: str) -> dict:
        return json.loads(run(["docker", "inspect", self.container(service)]).stdout)[0]

    def logs(self, tail: int = 60) -> str:
        return self.compose("logs", "--no-color", "--tail", str(tail), check=False).stdout

    def save_logs(self) -> None:
        """All services' logs into the run's temporary folder (pytest keeps the last three), before `down`."""
        logs = self.logs(tail=100000)
        if len(logs.splitlines()) > 1:
            (self.workdir / "compose.log").write_text(logs)
            TIMINGS["compose logs"] = str(self.workdir / "compose.log")

    def wait_for(self, what: str, predicate, timeout: float, interval: float = 0.25):
        try:
            return wait_until(predicate, timeout, what, interval)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n--- logs ---\n{self.logs()}") from None

    def done(self) -> dict | None:
        s = self.status("aggregator")
        return s if s and s["rounds_done"] == s["rounds_total"] else None


@dataclass(frozen=True)
class StackImages:
    aggregator: str
    worker: str
    broker: str


@pytest.fixture(scope="module")
def stack_images(images):
    """The session's service images and the broker's, built from docker/broker.Dockerfile with a per-run tag."""
    broker = f"fedad-broker:test-{RUN_ID}"
    t0 = time.monotonic()
    run(["docker", "build", "--build-arg", f"BASE_IMAGE={images.base}", "-f", "broker.Dockerfile", "-t", broker,
         "."], cwd=REPO / "docker", timeout=600)
    TIMINGS["build broker"] = f"{time.monotonic() - t0:.1f} s"
    try:
        yield StackImages(images.aggregator, images.worker, broker)
    finally:
        subprocess.run(["docker", "rmi", "--no-prune", broker], capture_output=True, check=False)


@pytest.fixture(scope="module")
def stack(stack_images, tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("stack"), stack_images)
    t0 = time.monotonic()
    try:
        s.compose("up", "-d", "--no-build")
        TIMINGS["compose up returned"] = f"{time.monotonic() - t0:.1f} s"
        for w in WORKERS:
            s.wait_for(f"{w} /readyz 200",
                       lambda w=w: (r := s.get(w, "/readyz")) is not None and r.status_code == 200, timeout=240)
            TIMINGS.setdefault("compose up -> first worker serves /detect", f"{time.monotonic() - t0:.1f} s")
        TIMINGS["compose up -> all workers serve /detect"] = f"{time.monotonic() - t0:.1f} s"
        s.t_up = t0
        yield s
    finally:
        s.save_logs()
        s.compose("down", "--volumes", "--remove-orphans", check=False)
        s.http.close()


IN_CONTAINER_STATUS = (
    "import urllib.request; opener = urllib.request.build_opener(urllib.request.ProxyHandler({})); "
    "print(opener.open('http://127.0.0.1:{port}/v1/status', timeout=2).read().decode())"
)


def test_killed_worker_resumes_from_its_volume(stack):
    """`docker kill` valve1 early in a training round after its first model, start it again cut off from the
    network: it serves its persisted round at once (not reset), so that can only have come from its volume; then
    reconnected, it rejoins and the federation finishes."""
    cid = stack.container("valve1")  # looked up first: `compose ps` is slow, the kill must follow the check at once
    networks = json.loads(run(["docker", "inspect", cid]).stdout)[0]["NetworkSettings"]["Networks"]

    def early_in_training_after_first_model():
        s = stack.status("valve1")
        if not s or s["phase"] != "training" or (s["model_round"] or 0) < 1:
            return None
        progress = s.get("progress") or {}
        if "epoch" in progress and "epochs" in progress and progress["epoch"] > progress["epochs"] // 2:
            return None  # too close to the end of the round: it might push its update before the kill lands
        return s

    before = stack.wait_for("valve1 early in a training round, with a model", early_in_training_after_first_model,
                            timeout=180, interval=0.05)
    run(["docker", "kill", cid])
    state = json.loads(run(["docker", "inspect", cid]).stdout)[0]["State"]
    assert not state["Running"] and state["ExitCode"] == 137
    aggregator = stack.status("aggregator")
    assert aggregator["rounds_done"] < aggregator["rounds_total"], "killed after the federation finished"

    for name in networks:
        run(["docker", "network", "disconnect", name, cid])
    t0 = time.monotonic()
    run(["docker", "start", cid])
    probe = ["docker", "exec", cid, "python", "-c", IN_CONTAINER_STATUS.replace("{port}", "8081")]

    def offline_status():
        r = run(probe, check=False, timeout=30)
        return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None

    after = stack.wait_for("valve1's status after the restart (offline)", offline_status, timeout=120, interval=0.5)
    if after["model_round"] is None:  # its loop may restore a moment after the HTTP server is up
        after = stack.wait_for("valve1 serving its persisted model (offline)",
                               lambda: (s := offline_status()) and s["model_round"] is not None and s, timeout=30)
    TIMINGS["worker restart -> serving persisted model"] = f"{time.monotonic() - t0:.1f} s"
    assert after["model_round"] >= before["model_round"], (before, after)

    for name, net in networks.items():
        aliases = [a for a in (net.get("Aliases") or []) if not cid.startswith(a)]
        run(["docker", "network", "connect", *[f"--alias={a}" for a in aliases], name, cid])
    stack.wait_for("valve1 reachable from the host again",
                   lambda: (r := stack.get("valve1", "/readyz")) is not None and r.status_code == 200, timeout=60)
    stack.wait_for("valve1's next round after the restart",
                   lambda: (s := stack.status("valve1")) and s["model_round"] > before["model_round"], timeout=300)
    TIMINGS["worker restart -> its next round installed"] = f"{time.monotonic() - t0:.1f} s"
    final = stack.wait_for("the federation to finish", stack.done, timeout=300)
    assert final["phase"] in ("idle", "done")  # idle: continual rounds (the default) follow the first ones
    for w in WORKERS:
        stack.wait_for(f"{w} serving the last round",
                       lambda w=w: (s := stack.status(w)) and s["model_round"] == ROUNDS, timeout=60)


def test_stack_runs_as_configured(stack):
    """Healthy, non-root, read-only containers; ports on loopback only; the mounted config in force; the tokens
    from the env file (not the image's); each worker's data read-only and its state in its own named volume."""
    for service in SERVICES:
        info = stack.wait_for(f"{service} healthy", lambda service=service: (i := stack.inspect(service))["State"][
            "Health"]["Status"] == "healthy" and i, timeout=120)
        assert info["Config"]["User"] == "10001:10001"
        assert info["HostConfig"]["ReadonlyRootfs"] and info["HostConfig"]["CapDrop"] == ["ALL"]
        bindings = [b for bs in info["NetworkSettings"]["Ports"].values() if bs for b in bs]
        assert bindings and all(b["HostIp"] == "127.0.0.1" for b in bindings), bindings
    assert stack.status("aggregator")["rounds_total"] == ROUNDS  # from the mounted config, not the baked 10
    # the image's config carries only development tokens; the stack must refuse them and accept the run's own
    dev_token = stack.settings["workers"][0]["token"]
    refused = stack.http.get(stack.url("aggregator", "/v1/model"), headers={"Authorization": f"Bearer {dev_token}"})
    assert refused.status_code == 403, refused.text
    accepted = stack.http.get(stack.url("aggregator", "/v1/model"),
                              headers={"Authorization": f"Bearer {stack.tokens['valve1']}"})
    assert accepted.status_code == 200, accepted.text
    mounts = {m["Destination"]: m for m in stack.inspect("valve1")["Mounts"]}
    assert mounts["/data/skab/valve1"]["RW"] is False
    assert mounts["/state"]["Name"] == f"{stack.project}_valve1-state"


def _skab_rows(partition: str, features: list[str], n: int = 50) -> list[list[float]]:
    """n real rows from the first experiment of a partition, past its training rows (held-out, with faults)."""
    folder = data_dir() / "skab" / partition
    first = min(folder.glob("*.csv"), key=lambda p: (not p.stem.isdigit(), int(p.stem) if p.stem.isdigit() else 0))
    lines = first.read_text().splitlines()
    header = lines[0].split(";")
    cols = [header.index(f) for f in features]
    return [[float(line.split(";")[c]) for c in cols] for line in lines[401:401 + n]]


def test_each_worker_detects_from_the_host(stack):
    stack.wait_for("the federation to finish", stack.done, timeout=300)
    TIMINGS.setdefault("compose up -> federation done", f"{time.monotonic() - stack.t_up:.1f} s "
                       f"({ROUNDS} rounds x {LOCAL_EPOCHS} epochs, one worker killed)")
    features = stack.settings["data"]["features"]
    for worker in stack.settings["workers"]:
        w = worker["id"]
        rows = _skab_rows(worker["partition"][0], features)
        r = stack.http.post(stack.url(w, "/detect"), json={"samples": rows})
        assert r.status_code == 200, (w, r.text)
        body = r.json()
        assert len(body["scores"]) == len(rows) and len(body["is_anomaly"]) == len(rows)
        assert body["is_anomaly"] == [x > body["threshold"] for x in body["scores"]]
        assert body["model_round"] == ROUNDS and body["threshold"] > 0
        bad = stack.http.post(stack.url(w, "/detect"), json={"samples": [rows[0][:-1]]})
        assert bad.status_code == 422, (w, bad.text)
        wide = stack.http.post(stack.url(w, "/detect"), json={"samples": [rows[0] + [1.0]]})
        assert wide.status_code == 422, (w, wide.text)
    # the dashboard and /metrics ship in the images: pages and their data, and Prometheus text counting that traffic
    for path in ("/", "/static/uPlot.iife.min.js"):
        r = stack.http.get(stack.url("aggregator", path))
        assert r.status_code == 200 and len(r.content) > 1000, (path, r.status_code)
    workers = {w["id"]: w for w in stack.http.get(stack.url("aggregator", "/v1/dashboard")).json()["workers"]}
    assert set(workers) == {w["id"] for w in stack.settings["workers"]}
    for worker in stack.settings["workers"]:
        metrics = stack.http.get(stack.url(worker["id"], "/metrics")).text
        assert 'fedad_worker_detect_requests_total{status="422"} 2.0' in metrics, metrics[:2000]
    assert "fedad_aggregator_rounds_done " in stack.http.get(stack.url("aggregator", "/metrics")).text
    # onnxruntime's telemetry is off in the images (else, on a read-only root, it logs that it cannot persist
    # the device id it would send)
    assert "persist telemetry device id" not in stack.logs(tail=100000).lower()


def test_replayed_device_data_opens_alarms_on_the_alarm_topic(stack):
    """The replayer publishes SKAB's held-out rows as KubeEdge device data to the stack's broker; the workers,
    subscribed to it, score them and publish debounced alarm events, which the host receives through the broker's
    port on 127.0.0.1 (QoS 1, the topic each worker's config names). Every worker scores the replayed devices; how
    often each one's model opens an alarm differs (other's rarely), so the first 20 s of events after the first
    opened one are kept."""
    stack.wait_for("the federation to finish", stack.done, timeout=300)
    events: queue.Queue = queue.Queue()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"fedad-test-{RUN_ID}")
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("fedad/+/alarms", qos=1)
    client.on_message = lambda c, u, m: events.put((m.topic, orjson.loads(m.payload)))
    client.connect("127.0.0.1", stack.ports["broker"])
    client.loop_start()
    t0 = time.monotonic()
    try:
        got: dict[str, dict] = {}
        deadline = t0 + 240
        while len(got) < len(WORKERS) and time.monotonic() < deadline:
            try:
                topic, event = events.get(timeout=1)
            except queue.Empty:
                continue
            worker = topic.split("/")[1]
            assert topic == f"fedad/{worker}/alarms" and event["worker"] == worker, (topic, event)
            if event["event"] == "opened":
                if not got:
                    deadline = min(deadline, time.monotonic() + 20)
                got.setdefault(worker, event)
        assert got, f"no alarm opened within 240 s\n{stack.logs()}"
    finally:
        client.disconnect()
        client.loop_stop()
    TIMINGS["federation done -> an alarm from every worker"] = f"{time.monotonic() - t0:.1f} s"
    TIMINGS["alarm events seen from"] = ", ".join(sorted(got))
    for worker, event in got.items():
        assert event["stream"].startswith(("valve1-", "valve2-", "other-")), event   # a replayed device
        assert event["peak_score"] > event["threshold"] > 0 and event["model_round"] >= 1, event
        assert event["anomalous_rows"] >= stack.settings["alarms"]["open_after"]
        assert isinstance(event["top_sensors"], list) and event["start_time"] <= event["last_anomalous_time"], event
        assert stack.http.get(stack.url(worker, "/v1/ingest")).json()["alarm_outbox"]["delivered"] >= 1
    for worker in WORKERS:
        ingest = stack.http.get(stack.url(worker, "/v1/ingest")).json()
        assert ingest["mqtt"]["connected"] and "$ke/events/device/+/data/update" in ingest["mqtt"]["subscriptions"]
        # three replayed devices (one run of each partition), each past its baseline; only rows before the first
        # model are refused
        assert ingest["counts"]["rows_scored"] > 0 and set(ingest["refused"]) <= {"no_model"}, ingest
        assert ingest["counts"]["baseline_rows"] == 3 * ingest["baseline"]["rows"], ingest


def test_compose_down_leaves_nothing(stack):
    """Containers, the network and the state volumes: all gone (and no anonymous volume was ever made)."""
    containers = stack.compose("ps", "-q").stdout.split()
    volumes = {m["Name"] for c in containers for m in json.loads(run(["docker", "inspect", c]).stdout)[0]["Mounts"]
               if m["Type"] == "volume"}
    # /data is a tmpfs, not an anonymous volume
    assert volumes == {f"{stack.project}_{s}-state" for s in (*SERVICES, "broker")}
    stack.save_logs()
    stack.compose("down", "--volumes", "--remove-orphans")
    label = f"label=com.docker.compose.project={stack.project}"
    assert run(["docker", "ps", "-aq", "--filter", label]).stdout.split() == []
    assert run(["docker", "network", "ls", "-q", "--filter", f"name={stack.project}"]).stdout.split() == []
    assert run(["docker", "volume", "ls", "-q", "--filter", f"name={stack.project}"]).stdout.split() == []
    left = set(run(["docker", "volume", "ls", "-q"]).stdout.split()) & volumes
    assert not left, f"volumes left behind: {left}"
