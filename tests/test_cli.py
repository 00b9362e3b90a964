"""`fedad run` (what `make run` calls) as a user runs it: the whole stack from config.yaml, on free loopback ports."""

from __future__ import annotations

import re
import subprocess
import sys
import time

from support import REPO, Stack


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


def test_a_worker_without_data_stops_the_run_with_its_reason(tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    stack = Stack(tmp_path, rounds=2, epochs=1, overrides={"FEDAD__DATA__DIR": str(empty)})
    started = time.monotonic()
    done = run_cli(stack.env, timeout=120)
    assert done.returncode != 0, done.stdout
    assert f"stopped: no skab/ folder in the configured data dir {empty}" in done.stderr, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert time.monotonic() - started < 60, "the run should stop as soon as a worker says why, not time out"
