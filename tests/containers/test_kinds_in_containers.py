"""Each raw-window model kind (conv1d, lstm) on a real engine under a training gateway's limits: the aggregator and
two training workers as containers from the session's images, workers under ``--memory=512m --cpus=1``, one round
of one local epoch on one SKAB file each. The round completes, both workers are ready and serve /detect with the
kind's model (conv1d int8, lstm fp32: int8 cannot serve an LSTM), nothing is OOM-killed, and each worker's cgroup
peak memory is listed in the terminal summary. The dense kind runs in test_constrained.py.
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
from .test_constrained import cgroup_memory

pytestmark = pytest.mark.docker

MEMORY, CPUS = "512m", "1"  # a training gateway (deploy/base/worker/worker.yaml)
PORTS = {"aggregator": 8080, "valve1": 8081, "valve2": 8082}
WORKERS = ("valve1", "valve2")
KINDS = {  # the keys each kind needs beyond model.kind (tests/model/test_kinds.py), and the model it serves (None:
    "conv1d": ({"data": {"window_stats": []}}, None),  # int8 or fp32, as the node's held-out rows chose: auto)
    "lstm": ({"data": {"window_stats": []}, "serving": {"model": "fp32"}}, "fp32"),
}


def kind_config(kind: str) -> dict:
    """config.yaml for one round of one epoch with ``kind``, the two valves on one SKAB file each, no later rounds."""
    settings = yaml.safe_load((REPO / "config.yaml").read_text())
    settings["model"].update(kind=kind, local_epochs=1)
    settings["federation"].update(rounds=1, min_workers=2, quorum=2, round_deadline_s=300)
    settings["federation"]["continual"]["enabled"] = False
    settings["workers"] = [w for w in settings["workers"] if w["id"] in WORKERS]
    for worker in settings["workers"]:
        worker["partition"] = [f"{worker['id']}/0.csv"]
    for section, keys in KINDS[kind][0].items():
        settings[section].update(keys)
    return settings


@pytest.mark.parametrize("kind", KINDS)
def test_the_kind_trains_and_serves_in_containers_under_gateway_limits(kind, images, tmp_path):
    settings = kind_config(kind)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    config.chmod(0o644)
    network = f"fedadkinds{RUN_ID}{kind}"
    host = dict(zip(PORTS, free_loopback_ports(len(PORTS))))
    names = {s: f"{network}-{s}" for s in PORTS}
    common = ["--network", network, "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
              "-v", f"{config}:/etc/fedad/config.yaml:ro"]
    run(["docker", "network", "create", network])
    try:
        t0 = time.monotonic()
        run(["docker", "run", "-d", "--name", names["aggregator"], "--network-alias", "aggregator", *common,
             "-p", f"127.0.0.1:{host['aggregator']}:8080", images.aggregator])
        for worker in WORKERS:
            run(["docker", "run", "-d", "--name", names[worker], *common, "--tmpfs", "/data",
                 f"--memory={MEMORY}", f"--memory-swap={MEMORY}", f"--cpus={CPUS}",
                 "-e", f"FEDAD_WORKER_ID={worker}", "-e", "FEDAD__AGGREGATOR__URL=http://aggregator:8080",
                 "-v", f"{data_dir()}/skab/{worker}:/data/skab/{worker}:ro",
                 "-p", f"127.0.0.1:{host[worker]}:{PORTS[worker]}", images.worker])

        def get(service: str, path: str) -> httpx.Response | None:
            try:
                return httpx.get(f"http://127.0.0.1:{host[service]}{path}", timeout=5, trust_env=False)
            except httpx.HTTPError:
                return None

        def finished():
            agg = get("aggregator", "/v1/status")
            ready = [get(w, "/readyz") for w in WORKERS]
            done = (agg is not None and agg.status_code == 200 and agg.json()["rounds_done"] == 1
                    and all(r is not None and r.status_code == 200 for r in ready))
            return agg.json() if done else None

        try:
            final = wait_until(finished, 600, f"the {kind} round to complete and both workers to be ready",
                               interval=0.5)
        except TimeoutError:
            tails = {s: run(["docker", "logs", "--tail", "40", n], check=False) for s, n in names.items()}
            logs = "\n".join(f"--- {s}\n{t.stdout}{t.stderr}" for s, t in tails.items())
            raise AssertionError(f"the {kind} federation did not finish in containers\n{logs}") from None
        TIMINGS[f"kind {kind}: start to ready"] = f"{time.monotonic() - t0:.1f} s (1 round x 1 epoch, 2 workers)"
        assert [sorted(h["workers"]) for h in final["history"]] == [list(WORKERS)]

        from services.config import load_settings
        from services.data.sources import load_node

        local = load_settings(environ={f"FEDAD__WORKERS__{w.upper()}__PARTITION": f"[{w}/0.csv]" for w in WORKERS})
        served = KINDS[kind][1]
        for worker in WORKERS:
            values = load_node(local, local.worker(worker)).runs[0].values
            baseline, samples = values[:400].tolist(), values[400:430].tolist()
            r = httpx.post(f"http://127.0.0.1:{host[worker]}/detect", json={"baseline": baseline, "samples": samples},
                           timeout=30, trust_env=False)
            assert r.status_code == 200, r.text
            answer = r.json()
            status = httpx.get(f"http://127.0.0.1:{host[worker]}/v1/status", timeout=30, trust_env=False).json()
            assert answer["model"] == status["precision"]["served"] == (served or answer["model"]), (answer, status)
            assert answer["model_round"] == 1, answer
            assert len(answer["scores"]) == len(samples) and all(s >= 0 for s in answer["scores"])

        for worker in WORKERS:
            state = json.loads(run(["docker", "inspect", names[worker]]).stdout)[0]["State"]
            cgroup = cgroup_memory(names[worker])
            status = get(worker, "/v1/status").json()
            training = status.get("last_training") or {}
            line = (f"--memory={MEMORY} --cpus={CPUS}: cgroup peak {cgroup['peak_bytes'] / 2**20:.0f} MiB, "
                    f"OOM kills {cgroup['oom_kills']}, training process peak {training.get('peak_rss_mib', '-')} MiB")
            print(f"{kind} {worker} {line}")
            TIMINGS[f"kind {kind}: memory {worker}"] = line
            assert state["Running"] and not state["OOMKilled"], f"{worker}: {state}"
            assert cgroup["oom_kills"] == 0, f"{worker}: a process in the container was OOM-killed"
            assert status["training_failures"] == 0 and status["torch_loaded"] is False
            assert 0 < cgroup["peak_bytes"] <= int(MEMORY[:-1]) * 2**20
    finally:
        for name in names.values():
            run(["docker", "rm", "-f", name], check=False)
        run(["docker", "network", "rm", network], check=False)
