"""The manifests executed: each overlay, rendered with its site layer by the real render play, runs under Debian's
podman 4.3 (`podman kube play`) from the images the container tests build; the aggregator and two workers start from
the very Deployments, ConfigMaps and Secrets, federate a round and answer /detect.

podman cannot take every field as is: tests/containers/kube_play.py translates (and says why, field by field), and
test_translation_* below pins each step. Everything runs in a network namespace of the run's own, with only its
loopback: the config.yaml ports are free there whatever else runs on this machine, and nothing can leave it.
The GCP + KubeEdge overlay also gets the edge node's broker (Debian's Mosquitto on 127.0.0.1:1883 in that namespace),
which its workers subscribe to.
"""

from __future__ import annotations

import base64
import getpass
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from deploy.conftest import ansible_env, playbook, run, tool
from services.config import load_settings
from support import missing_tool

from .conftest import REPO, RUN_ID
from .kube_play import translate
from .test_compose import data_dir

pytestmark = pytest.mark.docker

RUN = ("aggregator", "worker-valve1", "worker-valve2")  # two of the three workers: the round needs min_workers 2
SAMPLE = [[0.026517, 0.040316, 0.439802, 0.382638, 78.930397, 25.982201, 224.464005, 32.0]]
# This kind of host (cgroup v1 with a unified hierarchy; no raising of RLIMIT_NOFILE) needs runc and podman's
# default ulimits off; neither changes what the manifests ask for.
CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n'


def tools() -> None:
    for name, package in (("podman", "podman"), ("runc", "runc"), ("nsenter", "util-linux"), ("ip", "iproute2"),
                          ("curl", "curl"), ("mosquitto", "mosquitto")):
        if shutil.which(name) is None:
            missing_tool(f"{name} not found: apt-get install {package}")


def sh(cmd: list[str], timeout: float = 300, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}: {' '.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


class Played:
    """One overlay played in its own network namespace."""

    def __init__(self, overlay: str, tmp: Path, image_tag: str):
        self.overlay, self.tmp = overlay, tmp
        self.netns = f"fedad-kp-{RUN_ID}-{overlay[:3]}"
        self.env = {**ansible_env(), "CONTAINERS_CONF": str(tmp / "containers.conf")}
        (tmp / "containers.conf").write_text(CONTAINERS_CONF)
        settings = yaml.safe_load((REPO / "config.yaml").read_text())
        settings["federation"].update(rounds=1, min_workers=2, quorum=2, round_deadline_s=300)
        settings["federation"]["continual"]["enabled"] = False
        settings["model"]["local_epochs"] = 1
        (tmp / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
        extra = {"fedad_overlay": overlay, "fedad_build_dir": str(tmp / "build"), "fedad_image_tag": image_tag}
        (tmp / "extra.json").write_text(json.dumps(extra))
        playbook("render.yml", "-e", f"@{tmp / 'extra.json'}", env=ansible_env(FEDAD_CONFIG=str(tmp / "config.yaml")))
        self.docs = [d for d in yaml.safe_load_all((tmp / "build" / overlay / "manifests.yaml").read_text()) if d]
        self.root = tmp / "root"
        self.played, self.secrets = translate(self.docs, str(self.root), keep=set(RUN))
        self.file = tmp / "played.yaml"
        self.file.write_text(yaml.safe_dump_all(self.played, sort_keys=False))
        self.broker: subprocess.Popen | None = None

    def port(self, name: str) -> int:
        settings = load_settings(self.tmp / "config.yaml", environ={})
        return settings.aggregator.port if name == "aggregator" else settings.worker(name.removeprefix("worker-")).port

    def start(self) -> Played:
        (self.root / "state").mkdir(parents=True)
        for name in ("aggregator", "valve1", "valve2"):
            state = self.root / "state" / name
            state.mkdir()
            shutil.chown(state, 10001, 10001)
            state.chmod(0o700)
        (self.root / "data").symlink_to(data_dir())  # holds skab/<partition>, mounted read-only at /data
        sh(["ip", "netns", "add", self.netns])
        sh(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        if self.overlay == "gcp-kubeedge":  # the edge node's broker, where the workers' settings point
            self.broker = subprocess.Popen(self.inside(["mosquitto", "-c", str(self.broker_config())]),
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name, content in self.secrets.items():
            (self.tmp / f"secret-{name}.json").write_text(content)
            sh(["podman", "secret", "create", name, str(self.tmp / f"secret-{name}.json")], env=self.env)
        sh(self.inside(["podman", "kube", "play", str(self.file)]), env=self.env)
        return self

    def broker_config(self) -> Path:
        """The edge node's broker as ansible's kubeedge_edge role configures it (its room for 100,000 queued QoS 1
        messages also takes the mapper simulation, which publishes a SKAB run a thousand times faster than a
        mapper would)."""
        tasks = (REPO / "ansible" / "roles" / "kubeedge_edge" / "tasks" / "main.yml").read_text()
        assert "max_queued_messages 100000" in tasks and "allow_anonymous true" in tasks
        path = self.tmp / "mosquitto.conf"
        path.write_text(f"listener 1883 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"
                        f"user {getpass.getuser()}\n")
        return path

    def inside(self, cmd: list[str]) -> list[str]:
        """``cmd`` in the namespace's network only (``ip netns exec`` would also remount /sys, hiding cgroups)."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", *cmd]

    def http(self, name: str, path: str, body: dict | None = None) -> tuple[int, str]:
        cmd = ["curl", "-s", "-m", "10", "-w", "\n%{http_code}", f"http://127.0.0.1:{self.port(name)}{path}"]
        if body is not None:
            cmd += ["-X", "POST", "-H", "content-type: application/json", "--data-binary", json.dumps(body)]
        out = sh(self.inside(cmd), check=False).stdout
        text, _, code = out.rpartition("\n")
        return int(code or 0), text

    def json(self, name: str, path: str) -> dict | None:
        status, text = self.http(name, path)
        return json.loads(text) if status == 200 else None

    def logs(self) -> str:
        out = []
        for name in RUN:
            container = f"{name}-pod-0-{'aggregator' if name == 'aggregator' else 'worker'}"
            out.append(f"--- {container}\n" + sh(["podman", "logs", "--tail", "40", container], check=False).stderr)
        return "\n".join(out)

    def stop(self) -> None:
        sh(["podman", "kube", "play", "--down", str(self.file)], env=self.env, check=False)
        for name in self.secrets:
            sh(["podman", "secret", "rm", name], check=False)
        if self.broker is not None:
            self.broker.terminate()
            self.broker.wait(10)
        sh(["ip", "netns", "del", self.netns], check=False)


@pytest.fixture(scope="module")
def podman_images(images):
    """The container tests' images, loaded into podman's store under the same names."""
    tools()
    t0 = time.monotonic()
    for image in (images.aggregator, images.worker):
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        sh(["podman", "load"], stdin=save.stdout, timeout=600)
        assert save.wait() == 0
    print(f"docker save | podman load: {time.monotonic() - t0:.0f} s")
    yield images.aggregator.split(":", 1)[1]
    for image in (images.aggregator, images.worker):
        sh(["podman", "rmi", f"localhost/{image}"], check=False)


@pytest.mark.parametrize("overlay", ["k3s", "gcp-kubeedge"])
def test_overlay_runs_under_podman_kube_play_federates_and_serves(podman_images, overlay, tmp_path):
    played = Played(overlay, tmp_path, podman_images)
    t0 = time.monotonic()
    try:
        played.start()
        deadline = time.monotonic() + 420
        status = None
        while time.monotonic() < deadline:
            status = played.json("aggregator", "/v1/status")
            if status and status["rounds_done"] >= 1 and all(
                    played.http(w, "/readyz")[0] == 200 for w in RUN[1:]):
                break
            time.sleep(2)
        else:
            raise AssertionError(f"{overlay}: no finished round within 420 s ({status}); logs:\n{played.logs()}")
        assert sorted(status["history"][0]["workers"]) == ["valve1", "valve2"], status["history"]
        for worker in RUN[1:]:
            code, text = played.http(worker, "/detect", {"samples": SAMPLE * 30})
            assert code == 200, f"{worker}: {code} {text}\n{played.logs()}"
            answer = json.loads(text)
            assert answer["model_round"] == 1 and len(answer["scores"]) == 30, answer
            assert played.http(worker, "/healthz")[0] == 200
        if overlay == "gcp-kubeedge":  # the workers subscribed to the node's broker, as on an edge node
            for worker in RUN[1:]:
                ingest = played.json(worker, "/v1/ingest")
                assert ingest["mqtt"]["enabled"] and ingest["mqtt"]["connected"] and ingest["twin"]["enabled"], ingest
            device_to_twin(played)
        print(f"{overlay}: round done and /detect answered {time.monotonic() - t0:.0f} s after kube play")
    finally:
        played.stop()


def device_to_twin(played: Played) -> None:
    """deploy/devices/pump-valve1.yaml's mapper publishes a SKAB run (its normal start, then its fault) to the
    topics of its pushMethod on the node's broker; the worker the manifests started scores it and reports the
    verdict into the device's twin topic, where EdgeCore would take it to `kubectl get device`."""
    rows = 1000  # 400 baseline rows, then 600 scored: the fault starts at row 572 of valve1/1.csv
    out = sh(played.inside([sys.executable, str(REPO / "tests" / "containers" / "mapper_sim.py"),
                            str(REPO / "deploy" / "devices" / "pump-valve1.yaml"),
                            str(data_dir() / "skab" / "valve1" / "1.csv"), "--rows-to-send", str(rows),
                            "--wait", "120"]), timeout=400)
    twins = [json.loads(line) for line in out.stdout.splitlines()]
    alarm = [t["twin"]["alarm"]["actual"]["value"] for t in twins if "alarm" in t["twin"]]
    assert alarm[:1] == ["clear"] and "open" in alarm, f"twin reports {alarm}; {out.stderr}\n{played.logs()}"
    opened = next(t for t in twins if t["twin"].get("alarm", {}).get("actual", {}).get("value") == "open")
    assert opened["twin"]["top_sensor"]["actual"]["value"] != "none"
    ingest = played.json("worker-valve1", "/v1/ingest")
    assert ingest["counts"]["rows_scored"] > 0 and ingest["refused"] == {}, ingest
    alarms = played.json("worker-valve1", "/v1/alarms")
    assert {a["stream"] for a in alarms["open"] + alarms["recent"]} == {"pump-valve1"}


# --- the translation, step by step -----------------------------------------------------------------------------

def _rendered_overlay(overlay: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(run([tool("kubectl"), "kustomize", f"deploy/overlays/{overlay}"]).stdout) if d]


def test_translation_moves_secrets_out_and_keeps_configmaps():
    docs = _rendered_overlay("k3s") + [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "fedad-token-x"},
                                         "data": {"token": base64.b64encode(b"abc").decode()}}]
    played, secrets = translate(docs, "/tmp/root")
    assert {d["kind"] for d in played} == {"ConfigMap", "Deployment"}
    assert json.loads(secrets["fedad-token-x"]) == {"token": base64.b64encode(b"abc").decode()}
    site = next(d for d in played if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("fedad-site"))
    assert site["data"]["aggregator_url"] == "http://127.0.0.1:8080", "no cluster DNS: the aggregator on loopback"


@pytest.mark.parametrize("overlay", ["k3s", "gcp-kubeedge"])
def test_translation_puts_pods_on_the_host_network_without_ports_scheduling_or_cluster_paths(overlay):
    docs = _rendered_overlay(overlay)
    played, _ = translate(docs, "/tmp/root", keep={"aggregator", "worker-valve1"})
    deployments = {d["metadata"]["name"]: d for d in played if d["kind"] == "Deployment"}
    assert set(deployments) == {"aggregator", "worker-valve1"}
    original = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for name, d in deployments.items():
        spec = d["spec"]["template"]["spec"]
        assert spec["hostNetwork"] is True and not {"nodeSelector", "affinity", "tolerations"} & set(spec)
        c = spec["containers"][0]
        port = original[name]["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
        assert "ports" not in c and c["readinessProbe"]["httpGet"]["port"] == port
        assert all(v["hostPath"]["path"].startswith("/tmp/root/") for v in spec["volumes"] if "hostPath" in v)
        # what the container runs with is untouched
        before = original[name]["spec"]["template"]["spec"]["containers"][0]
        for key in ("image", "env", "volumeMounts", "resources", "securityContext"):
            assert c[key] == before[key], key
