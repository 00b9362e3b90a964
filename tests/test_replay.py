"""The live demo: `fedad run` replays the held-out rows as devices after training and prints the alarms they raise;
the workers' /detect stream answers carry the sensors behind each flagged row."""

import re
import subprocess
import sys

import httpx
import numpy as np

from services.config import load_settings
from services.data.sources import load_node
from services.replay import Replayer, devices, stream_name
from support import REPO, Stack

SETTINGS = load_settings(environ={})


def test_fedad_run_replays_and_prints_alarms_opened_from_the_replay(tmp_path):
    stack = Stack(tmp_path, rounds=2, epochs=1)
    done = subprocess.run([sys.executable, "-m", "services.cli", "run", "--fresh", "--exit-when-done",
                           "--replay-for", "60"], env=stack.env, cwd=REPO, capture_output=True, text=True,
                          timeout=400)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "live demo: replaying the held-out rows" in out, out
    opened = re.findall(r"alarm opened +(\S+) +(replay:\S+) +peak ([0-9.e+-]+) \(threshold ([0-9.e+-]+)\)  top: (.+)",
                        out)
    assert opened, out
    for worker, stream, peak, threshold, top in opened:
        assert float(peak) > float(threshold), out
        assert re.match(r"[A-Za-z0-9 ]+ \d+%", top), out  # the peak row's top sensor with its share


def test_a_replayed_fault_raises_an_alarm_with_its_sensors_and_detect_explains(trained_stack):
    """One valve1 run played at high speed to a real worker: the stream's flagged rows name their sensors, and the
    worker's alarm book (fed by HTTP streams) opens an alarm whose top sensor is the flow the closed valve cuts."""
    by_worker = devices(SETTINGS, ["valve1"])
    run_device = next(d for d in by_worker["valve1"] if d.stream == stream_name("valve1/5.csv"))
    run_device.url = f"{trained_stack.worker_url('valve1')}/detect"
    replayer = Replayer({"valve1": [run_device]}, speed=1e6, repeat=False)
    replayer.run()
    assert replayer.sent == len(run_device.rows) and replayer.failed == 0
    alarms = httpx.get(f"{trained_stack.worker_url('valve1')}/v1/status").json()["alarms"]
    mine = [a for a in alarms["open"] + alarms["recent"] if a["stream"] == run_device.stream]
    assert mine, alarms
    assert mine[0]["top_sensors"][0]["sensor"] == "Volume Flow RateRMS", mine[0]
    assert sum(t["share"] for t in mine[0]["top_sensors"]) <= 1.0001

    node = load_node(SETTINGS, SETTINGS.worker("valve1"))
    run, mask = next((r, m) for r, m in zip(node.runs, node.masks) if r.name == "valve1/5.csv")
    url = f"{trained_stack.worker_url('valve1')}/detect"
    body = {"baseline": run.values[mask].tolist(), "samples": run.values[~mask].tolist()}
    plain = httpx.post(url, json=body, timeout=60).json()
    assert "top_sensors" not in plain, "a stateless batch is explained only when asked (scoring stays fast)"
    answer = httpx.post(url, json={**body, "stream": "explained-valve1-5"}, timeout=60).json()
    flags, top = answer["is_anomaly"], answer["top_sensors"]
    assert len(top) == len(flags) and any(flags) and answer["scores"] == plain["scores"]
    assert [t is not None for t in top] == flags  # a stream's flagged rows are explained (its alarms name them)
    for entry in (t for t in top if t):
        assert [e["sensor"] for e in entry] != [] and len(entry) == 3
        assert {e["sensor"] for e in entry} <= set(SETTINGS.data.model_columns)
        assert entry[0]["share"] >= entry[1]["share"] >= entry[2]["share"]
    every = httpx.post(url, json={**body, "explain": True}, timeout=60).json()
    assert all(t is not None for t in every["top_sensors"]) and every["scores"] == plain["scores"]
    explained = np.array([t[0]["sensor"] == "Volume Flow RateRMS" for t in top if t])
    assert explained.mean() > 0.5, "most flagged rows of a closed outflow valve should point at the flow"


def test_fedad_replay_plays_to_running_workers_and_prints_their_alarms(trained_stack):
    done = subprocess.run([sys.executable, "-m", "services.cli", "replay", "--worker", "valve2", "--speed", "1000",
                           "--duration", "20"], env=trained_stack.env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "replaying 4 runs of valve2 at 1000x" in out, out
    sent = re.search(r"(\d+) rows sent, (\d+) failed requests", out)
    assert sent and int(sent.group(1)) > 100 and sent.group(2) == "0", out
    assert re.search(r"alarm opened +valve2 +replay:valve2-\S+ +peak", out), out
