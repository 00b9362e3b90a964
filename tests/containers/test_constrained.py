"""A federation under the limits of small gateways, on a real engine: two training workers under
``--memory=512m --cpus=1`` and a detect-only worker (docker/worker-detect.Dockerfile, no torch) under
``--memory=192m --cpus=0.5``, with the aggregator, on one Docker network. Every round completes, the detect-only
node serves /detect with the federated model, nothing is OOM-killed (neither a container nor a training process in
it), and each container's peak memory, read from its cgroup, is printed (and listed in the terminal summary).
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
import yaml

from support import wait_until

from .conftest import REPO, RUN_ID, TIMINGS, free_loopback_ports, run
from .test_compose import data_dir

pytestmark = pytest.mark.docker

ROUNDS = 2
LOCAL_EPOCHS = 3
LIMITS = {"valve1": ("512m", "1"), "valve2": ("512m", "1"), "other": ("192m", "0.5")}  # memory, CPUs
PORTS = {"aggregator": 8080, "valve1": 8081, "valve2": 8082, "other": 8083}


def cgroup_memory(container: str) -> dict:
    """Peak memory and OOM kills from the container's own cgroup (v2: memory.peak / memory.events; v1:
    memory.max_usage_in_bytes / memory.oom_control)."""
    script = ("import pathlib as p\n"
              "r = lambda f: p.Path(f).read_text() if p.Path(f).exists() else ''\n"
              "v2, v1 = '/sys/fs/cgroup/', '/sys/fs/cgroup/memory/'\n"
              "print(repr((r(v2 + 'memory.peak'), r(v2 + 'memory.events'), r(v1 + 'memory.max_usage_in_bytes'), "
              "r(v1 + 'memory.oom_control'))))")
    peak2, events, peak1, oom = eval(run(["docker", "exec", container, "python", "-c", script]).stdout)  # noqa: S307
    kills = [int(line.split()[1]) for line in (events + oom).splitlines() if line.startswith("oom_kill ")]
    return {"peak_bytes": int((peak2 or peak1).strip() or 0), "oom_kills": sum(kills)}


def test_a_federation_under_gateway_limits_finishes_without_an_oom_kill(images, detect_image, tmp_path):
    settings = yaml.safe_load((REPO / "config.yaml").read_text())
    settings["federation"].update(rounds=ROUNDS, min_workers=2, quorum=2, round_deadline_s=300)
    settings["model"]["local_epochs"] = LOCAL_EPOCHS
    for worker in settings["workers"]:
        if worker["id"] == "other":
            worker["mode"] = "detect_only"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    config.chmod(0o644)
    network = f"fedadlimits{RUN_ID}"
    host = dict(zip(PORTS, free_loopback_ports(len(PORTS))))
    names = {s: f"fedadlimits{RUN_ID}-{s}" for s in PORTS}
    common = ["--network", network, "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
              "-v", f"{config}:/etc/fedad/config.yaml:ro"]
    run(["docker", "network", "create", network])
    try:
        run(["docker", "run", "-d", "--name", names["aggregator"], "--network-alias", "aggregator", *common,
             "-p", f"127.0.0.1:{host['aggregator']}:8080", images.aggregator])
        for worker, (memory, cpus) in LIMITS.items():
            image = detect_image if worker == "other" else images.worker
            run(["docker", "run", "-d", "--name", names[worker], *common, "--tmpfs", "/data",
                 f"--memory={memory}", f"--memory-swap={memory}", f"--cpus={cpus}",
                 "-e", f"FEDAD_WORKER_ID={worker}", "-e", "FEDAD__AGGREGATOR__URL=http://aggregator:8080",
                 "-e", f"FEDAD__WORKERS__{worker.upper()}__PORT={PORTS[worker]}",
                 "-v", f"{data_dir()}/skab/{worker}:/data/skab/{worker}:ro",
                 "-p", f"127.0.0.1:{host[worker]}:{PORTS[worker]}", image])

        def status(service: str) -> dict | None:
            try:
                r = httpx.get(f"http://127.0.0.1:{host[service]}/v1/status", timeout=5, trust_env=False)
                return r.json() if r.status_code == 200 else None
            except httpx.HTTPError:
                return None

        def finished():
            s = status("aggregator")
            ws = [status(w) for w in LIMITS]
            done = s and s["rounds_done"] == ROUNDS and all(w and w["model_round"] == ROUNDS for w in ws)
            return (s, dict(zip(LIMITS, ws))) if done else None

        t0 = time.monotonic()
        try:
            final, workers = wait_until(finished, 900, "the constrained federation to finish", interval=1)
        except TimeoutError:
            logs = "\n".join(f"--- {s}\n" + run(["docker", "logs", "--tail", "40", n], check=False).stdout
                             + run(["docker", "logs", "--tail", "40", n], check=False).stderr for s, n in names.items())
            raise AssertionError(f"the federation did not finish under the limits\n{logs}") from None
        TIMINGS["constrained federation"] = f"{time.monotonic() - t0:.1f} s ({ROUNDS} rounds x {LOCAL_EPOCHS} epochs)"

        assert [sorted(h["workers"]) for h in final["history"]] == [["valve1", "valve2"]] * ROUNDS
        assert final["workers"]["other"]["role"] == "detect_only"
        from services.config import load_settings
        from services.data.sources import load_node

        local = load_settings(environ={})
        rows = load_node(local, local.worker("other")).runs[0].values[:300].tolist()  # its own SKAB rows
        r = httpx.post(f"http://127.0.0.1:{host['other']}/detect", json={"samples": rows}, timeout=30,
                       trust_env=False)
        assert r.status_code == 200 and r.json()["model_round"] == ROUNDS, r.text

        for worker, (memory, cpus) in LIMITS.items():
            state = json.loads(run(["docker", "inspect", names[worker]]).stdout)[0]["State"]
            cgroup = cgroup_memory(names[worker])
            training = workers[worker].get("last_training") or {}
            line = (f"{worker:<7} --memory={memory} --cpus={cpus}: cgroup peak {cgroup['peak_bytes'] / 2**20:.0f} "
                    f"MiB, OOM kills {cgroup['oom_kills']}, training process peak "
                    f"{training.get('peak_rss_mib', '-')} MiB")
            print(line)
            TIMINGS[f"memory {worker}"] = line.split(": ", 1)[1]
            assert state["Running"] and not state["OOMKilled"], f"{worker}: {state}"
            assert cgroup["oom_kills"] == 0, f"{worker}: a process in the container was OOM-killed"
            assert workers[worker]["training_failures"] == 0 and workers[worker]["torch_loaded"] is False
            assert 0 < cgroup["peak_bytes"] <= int(memory[:-1]) * 2**20
    finally:
        for name in names.values():
            run(["docker", "rm", "-f", name], check=False)
        run(["docker", "network", "rm", network], check=False)
