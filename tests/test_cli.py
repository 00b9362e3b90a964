"""`fedad run` (what `make run` calls) as a user runs it: the whole stack from config.yaml, on free loopback ports."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from support import REPO, WORKER_IDS, Stack


def run_cli(env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", "run", "--fresh", "--exit-when-done"], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_run_trains_prints_figures_and_the_dashboard_url(tmp_path):
    stack = Stack(tmp_path, rounds=2, epochs=1)  # only its environment: free ports, state under tmp_path
    done = run_cli(stack.env, timeout=300)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert f"dashboard: {stack.agg_url}/" in out, out
    assert re.search(r"round +2/2: 3 updates", out), out
    pooled = re.search(r"pooled +\d+ +([0-9.]+) +([0-9.]+) +([0-9.]+)", out)
    assert pooled, out
    f1, far, mar = map(float, pooled.groups())
    assert 0 < f1 <= 1 and 0 <= far <= 100 and 0 <= mar <= 100, out
    assert f"curl -s -X POST {stack.worker_url('valve1')}/detect" in out, out
    verdict = re.search(r"^verdict: the served detector \((?:int8|fp32|fp32/int8)\) ranks held-out faults (better than|"
                        r"as well as|WORSE than) the same-run IsolationForest: ROC-AUC ([0-9.]+) vs ([0-9.]+); at the "
                        r"same threshold rule F1 ([0-9.]+) vs ([0-9.]+)", out, re.M)
    assert verdict, out  # right after the table, before serving starts
    assert out.index("pooled") < verdict.start() < out.index("serving: every worker")
    assert abs(float(verdict.group(4)) - f1) <= 0.002, out  # /detect's flags are the ones the table counted


def test_a_worker_without_data_stops_the_run_with_its_reason(tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    stack = Stack(tmp_path, rounds=2, epochs=1, overrides={"FEDAD__DATA__SOURCE__DIR": str(empty)})
    started = time.monotonic()
    done = run_cli(stack.env, timeout=120)
    assert done.returncode != 0, done.stdout
    assert re.search(rf"stopped: partition entry '\w+': no such folder or file under {re.escape(str(empty))}",
                     done.stderr), done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert time.monotonic() - started < 60, "the run should stop as soon as a worker says why, not time out"


def start_serving(stack: Stack) -> subprocess.Popen:
    """`fedad run` in the background, returned once it serves (its services' pids are in their /v1/status)."""
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "run", "--fresh"], env=stack.env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("Ctrl-C stops."):
            return proc
    raise AssertionError(f"fedad run exited {proc.wait()} before serving")


def service_pids(stack: Stack) -> list[int]:
    out = subprocess.run(["pgrep", "-f", r"services\.(aggregator|worker)"], capture_output=True, text=True).stdout
    ours = []
    for pid in map(int, out.split()):
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read()
        except OSError:
            continue
        if f"FEDAD__AGGREGATOR__PORT={stack.agg_port}".encode() in environ:
            ours.append(pid)
    return ours


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if os.path.exists(f"/proc/{p}") and "Z" not in stat_state(p)]
        if not alive:
            return []
        time.sleep(0.2)
    return alive


def stat_state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_stopping_the_cli_any_way_stops_every_service(tmp_path, sig):
    """`kill`, a closed terminal or a kill -9 of `fedad run` must not leave services holding ports 8080–8083."""
    stack = Stack(tmp_path, rounds=1, epochs=1)
    proc = start_serving(stack)
    pids = service_pids(stack)
    assert len(pids) == 4, pids  # the aggregator and three workers
    proc.send_signal(sig)
    rest = proc.stdout.read()
    proc.wait(timeout=30)
    left = wait_gone(pids, 30)
    for pid in left:  # do not leak them into the rest of the suite
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"services still running after {sig.name} to fedad run"
    if sig != signal.SIGKILL:
        assert "stopping ..." in rest and "Traceback" not in rest, rest
    for port in [stack.agg_port, *stack.worker_ports.values()]:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no listener
            s.bind(("127.0.0.1", port))  # nobody listens there any more


def test_continual_rounds_and_gate_refusals_are_printed_once_each():
    from services.cli import RoundPrinter
    from services.config import load_settings

    def status(rounds: int, serving: dict[str, tuple]) -> dict:
        history = [{"round": r, "trigger": "campaign" if r <= 2 else "new_data", "mean_loss": 0.5,
                    "workers": {w: {"sample_count": 100} for w in serving}} for r in range(1, rounds + 1)]
        workers = {w: {"model": {"served_round": served, "last_refused":
                                 {"round": refused, "reason": "refused: held-out F1 0.5"} if refused else None}}
                   for w, (served, refused) in serving.items()}
        return {"history": history, "workers": workers}

    printer = RoundPrinter(load_settings(), httpx.Client(), status(2, {"a": (2, None), "b": (2, None)}))
    assert printer.lines(status(2, {"a": (2, None), "b": (2, None)})) == []
    assert printer.lines(status(3, {"a": (3, None), "b": (3, None)})) == [
        "round   3 (new_data): 2 updates on 200 rows, mean loss 0.50000", "            every worker serves round 3"]
    refused = printer.lines(status(4, {"a": (4, None), "b": (3, 4)}))
    assert refused[1:] == ["            a serves round 4",
                           "            b serves round 3; its gate refused round 4: refused: held-out F1 0.5"]
    assert printer.lines(status(5, {"a": (5, None), "b": (5, 4)}))[1:] == [
        "            every worker serves round 5"]  # the old refusal is not printed again


def free_port_block(size: int, avoid: range = range(0)) -> int:
    """A base port with ``size`` consecutive free ports on loopback (none of them in ``avoid``)."""
    for base in range(20000 + os.getpid() % 20000, 60000, 97):
        if any(p in avoid for p in range(base, base + size)):
            continue
        try:
            for port in range(base, base + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no block of free ports")


def serve_from(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, list[str]]:
    """`fedad run …` in the background, returned once it serves, with what it printed so far."""
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "run", "--fresh", "--no-replay", *argv], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith("Ctrl-C stops."):
            return proc, out
    raise AssertionError(f"fedad run exited {proc.wait()} before serving:\n{''.join(out)}")


def test_port_base_runs_a_second_stack_beside_the_first(tmp_path):
    """The shipped config, once as it is (its port_base, here moved off 8080 for the test machine's sake) and once
    with --port-base: two federations serving side by side, each its own aggregator and workers; a third run on the
    first's state dirs is refused before it touches them."""
    first = free_port_block(4)
    second = free_port_block(4, avoid=range(first, first + 4))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDAD__")}
    env.update(FEDAD__FEDERATION__ROUNDS="1", FEDAD__MODEL__LOCAL_EPOCHS="1", PYTHONUNBUFFERED="1")
    state = {"first": tmp_path / "first", "second": tmp_path / "second"}
    envs = {}
    for name, root in state.items():
        envs[name] = {**env, "FEDAD__AGGREGATOR__STATE_DIR": str(root / "aggregator"),
                      **{f"FEDAD__WORKERS__{w.upper()}__STATE_DIR": str(root / w) for w in WORKER_IDS}}
    envs["first"]["FEDAD__PORT_BASE"] = str(first)  # as config.yaml's port_base says 8080
    procs = []
    try:
        proc, _ = serve_from([], envs["first"])
        procs.append(proc)
        proc, out = serve_from(["--port-base", str(second)], envs["second"])
        procs.append(proc)
        assert out[0].startswith(f"starting aggregator on http://127.0.0.1:{second} and 3 workers (valve1 "
                                 f":{second + 1}, valve2 :{second + 2}, other :{second + 3})"), out
        for base in (first, second):
            status = httpx.get(f"http://127.0.0.1:{base}/v1/status", timeout=10).json()
            assert status["rounds_done"] == 1 and sorted(status["workers"]) == sorted(WORKER_IDS), status
            for k, w in enumerate(WORKER_IDS, start=1):
                worker = httpx.get(f"http://127.0.0.1:{base + k}/v1/status", timeout=10).json()
                assert worker["model_round"] == 1, worker
            answer = httpx.post(f"http://127.0.0.1:{base + 1}/detect", timeout=10,
                                json={"samples": [[0.0266, 0.0401, 1.33, 0.0547, 79.3, 26.0, 233.1, 32.0]]})
            assert answer.status_code == 200 and len(answer.json()["scores"]) == 1, answer.text
        third = subprocess.run([sys.executable, "-m", "services.cli", "run", "--fresh", "--port-base",
                                str(free_port_block(4, avoid=range(first, second + 4)))], env=envs["first"],
                               cwd=REPO, capture_output=True, text=True, timeout=60)
        assert third.returncode != 0 and f"another fedad run is using {state['first']}" in third.stderr, third
        assert (state["first"] / "aggregator").is_dir()  # --fresh deleted nothing
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            rest = proc.communicate(timeout=60)[0]
            assert proc.returncode == 0 and "stopping ..." in rest, rest
