"""A federation that keeps learning, with real processes on loopback: an aggregator and three SKAB workers finish
their campaign, then new experiment files land in two workers' partitions, the workers report the rows they have
not trained on, and that opens a round that changes the global model; a fourth worker started afterwards serves
/detect with the current global model at once and its update is in the next round (opened by an admin); a
detect-only worker follows every model throughout.

The data partitions are a copy in the test's folder, so files can be added as an edge node's would be. Unit tests
below: a node's data as its partition grows, extra (live) training runs, the trained-rows marks, the reporter's
rate limit."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from services.config import load_settings
from services.data.source import DataError, Run
from services.data.sources import NodeFeed, data_root, load_node
from services.protocol.messages import WorkerReport
from services.worker.buffer import LiveBuffer
from services.worker.marks import TrainedMarks
from services.worker.reporter import Reporter
from support import REPO, Process, Stack, free_port, get_json, scored, wait_until

SETTINGS = load_settings(environ={})
ADMIN_TOKEN = "dev-admin-token"
LATE = "late"
WATCHER = "watcher"  # detect-only: follows every model, trains never


def _config_with_a_late_worker(tmp: Path) -> Path:
    """config.yaml plus a fourth worker (the anomaly-free run), which the aggregator must know to accept it, and a
    detect-only one."""
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["workers"].append({"id": LATE, "partition": ["anomaly-free"], "source": {"label": None},  # unlabelled
                           "host": "127.0.0.1", "port": 8089, "state_dir": "state/late", "mode": "train",
                           "token": "dev-token-late-worker"})
    raw["workers"].append({"id": WATCHER, "partition": ["other/1.csv"], "host": "127.0.0.1", "port": 8090,
                           "state_dir": "state/watcher", "mode": "detect_only", "token": "dev-token-watcher"})
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _add_file(data: Path, source: str, partition: str, name: str) -> None:
    """Copy a SKAB file into a partition as an edge node receives one: whole, by rename."""
    temp = data / f".{name}.incoming"
    shutil.copyfile(data / source, temp)
    os.replace(temp, data / partition / name)


def _installed(status: dict) -> int | None:
    """The newest global round a worker installed (served, or kept because its gate refused it)."""
    return max((v["round"] for v in status["models"]["versions"]), default=None)


def _idle_after(stack: Stack, rounds_done: int, workers, timeout: float) -> dict:
    """The aggregator idle with ``rounds_done`` rounds, every worker idle with that round's model installed."""
    def idle():
        s = stack.status()
        if not s or s["phase"] != "idle" or s["rounds_done"] != rounds_done:
            return None
        ws = [get_json(f"{url}/v1/status") for url in workers]
        return s if all(w and _installed(w) == rounds_done and w["phase"] == "idle" for w in ws) else None
    try:
        return wait_until(idle, timeout, f"round {rounds_done} closed and installed", interval=0.5)
    except TimeoutError:
        raise AssertionError(f"round {rounds_done} did not complete; logs:\n{stack.logs()}") from None


def test_new_files_open_a_round_and_a_late_worker_serves_at_once_then_trains(tmp_path):
    data = tmp_path / "data"
    skab = data_root(SETTINGS.data)
    for folder in ("valve1", "valve2", "other", "anomaly-free"):
        shutil.copytree(skab / folder, data / folder)
    config = _config_with_a_late_worker(tmp_path)
    stack = Stack(tmp_path, rounds=2, epochs=1, overrides={
        "FEDAD_CONFIG": str(config),
        "FEDAD__DATA__SOURCE__DIR": str(data),
        "FEDAD__FEDERATION__CONTINUAL__ENABLED": "true",
        "FEDAD__FEDERATION__CONTINUAL__EVERY_S": "null",
        "FEDAD__FEDERATION__CONTINUAL__MIN_NEW_ROWS": "300",
        "FEDAD__FEDERATION__CONTINUAL__MIN_WORKERS_WITH_NEW_DATA": "2",
        "FEDAD__FEDERATION__CONTINUAL__ON_DRIFT": "false",
        "FEDAD__ADMIN__TOKEN": ADMIN_TOKEN,
        "FEDAD__DASHBOARD__TELEMETRY_INTERVAL_S": "0",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
    })
    late, watcher = (_extra_worker(stack, tmp_path, w) for w in (LATE, WATCHER))
    urls = [stack.worker_url(w) for w in stack.workers]
    stack.start()
    watcher.start()
    try:
        # -- the campaign: two rounds, then the federation stays open, every worker idle with nothing new
        campaign = _idle_after(stack, 2, urls, 300)
        assert [h["trigger"] for h in campaign["history"]] == ["campaign", "campaign"]
        for w in stack.workers:
            continual = stack.worker_status(w)["continual"]
            assert continual["new_rows"] == 0 and continual["last_round_trained"] == 2, (w, continual)
        before = campaign["model"]["sha256"]

        # -- new experiment files in two partitions: reported as new rows, they open round 3
        _add_file(data, "valve2/0.csv", "valve1", "valve1-new.csv")
        _add_file(data, "other/1.csv", "valve2", "valve2-new.csv")
        rows = SETTINGS.data.training.rows  # first_rows: each new run adds that many training rows
        third = _idle_after(stack, 3, urls, 300)
        record = third["history"][-1]
        assert record["trigger"] == "new_data", record
        assert set(record["workers"]) == {"valve1", "valve2", "other"}, record
        assert record["workers"]["valve1"]["sample_count"] == 16 * rows + rows  # the new file trained
        assert record["workers"]["valve2"]["sample_count"] == 4 * rows + rows
        assert third["model"]["sha256"] != before, "the new round changed the global model"
        for w in stack.workers:  # rows trained on are not new any more
            continual = stack.worker_status(w)["continual"]
            assert continual["new_rows"] == 0 and continual["last_round_trained"] == 3, (w, continual)
            assert continual["rounds_trained"] == 3
        wait_until(lambda: stack.status()["workers"]["valve1"]["new_rows"] == 0, 15, "the report after round 3")

        # -- a worker started now serves /detect with the current global model at once
        samples = [[float(v) for v in row] for row in _rows(data / "anomaly-free" / "anomaly-free.csv", 500)]
        started = time.monotonic()
        late.start()

        def detects():
            if late.proc.poll() is not None:
                raise AssertionError(f"the late worker exited:\n{late.log()}")
            try:
                r = httpx.post(f"{late.url}/detect", json={"samples": samples}, timeout=5)
            except httpx.HTTPError:
                return None
            return r.json() if r.status_code == 200 else None

        answer = wait_until(detects, 120, "the late worker's first /detect", interval=0.2)
        late_join_s = time.monotonic() - started
        print(f"\nlate join: process start → first 200 on /detect in {late_join_s:.1f} s "
              f"(model round {answer['model_round']})")
        assert answer["model_round"] == 3 and len(answer["scores"]) == len(samples)
        status = get_json(f"{late.url}/v1/status")
        assert status["threshold"] > 0 and status["threshold"] != stack.worker_status("other")["threshold"], \
            "its threshold is calibrated on its own rows"
        wait_until(lambda: (get_json(f"{late.url}/v1/status") or {}).get("phase") == "idle", 60,
                   "the late worker to wait for the next round")

        # -- the next round (an operator's) waits for it, and its update is in
        r = httpx.post(f"{stack.agg_url}/v1/admin/rounds", json={"reason": "late worker joined"},
                       headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
        assert r.status_code == 202, r.text
        assert r.json()["round"] == 4
        fourth = _idle_after(stack, 4, [*urls, late.url], 300)
        record = fourth["history"][-1]
        assert record["trigger"] == "admin" and set(record["workers"]) == {"valve1", "valve2", "other", LATE}, record
        assert record["workers"][LATE]["sample_count"] == rows
        late_status = get_json(f"{late.url}/v1/status")
        assert late_status["continual"]["last_round_trained"] == 4 and late_status["continual"]["new_rows"] == 0

        # -- the detect-only worker followed every model, continual ones too, and reports no new rows
        followed = wait_until(lambda: (lambda s: s if s and _installed(s) == 4 else None)(
            get_json(f"{watcher.url}/v1/status")), 30, "the detect-only worker to install round 4")
        assert followed["phase"] == "idle" and followed["continual"]["new_rows"] == 0
        assert {v["round"] for v in followed["models"]["versions"]} >= {3, 4}
        assert all(WATCHER not in h["workers"] for h in fourth["history"])
        assert fourth["workers"][WATCHER]["role"] == "detect_only"
    finally:
        late.stop()
        watcher.stop()
        stack.stop()


def _extra_worker(stack: Stack, tmp: Path, worker: str) -> Process:
    """A worker of the test's config outside the stack, on its own port and state folder."""
    port = free_port()
    env = {**stack.env, f"FEDAD__WORKERS__{worker.upper()}__PORT": str(port),
           f"FEDAD__WORKERS__{worker.upper()}__STATE_DIR": str(tmp / worker)}
    return Process(worker, [sys.executable, "-m", "services.worker", "--id", worker], env, tmp,
                   f"http://127.0.0.1:{port}")


def _rows(path: Path, n: int) -> list[list[float]]:
    """The first ``n`` rows of a SKAB file, in config's feature order."""
    lines = path.read_text().splitlines()
    header = lines[0].split(";")
    columns = [header.index(f) for f in SETTINGS.data.features]
    return [[float(line.split(";")[c]) for c in columns] for line in lines[1:n + 1]]


# -- units -------------------------------------------------------------------------------------------------------------

def test_a_node_feed_reads_its_partition_again_only_when_files_change(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data_root(SETTINGS.data) / "valve2", data / "valve2")
    settings = load_settings(environ={"FEDAD__DATA__SOURCE__DIR": str(data)})
    feed = NodeFeed(settings, settings.worker("valve2"))
    first = feed.current()
    trained = first.train_counts()
    assert feed.current() is first and feed.reloads == 0 and sum(trained.values()) == 4 * 400
    _add_file(data, "valve2/1.csv", "valve2", "9.csv")
    grown = feed.current()
    assert grown is not first and feed.reloads == 1 and len(grown.runs) == 5
    assert grown.rows_new_since(trained) == 400 and first.rows_new_since(trained) == 0
    (data / "valve2" / "10.csv").write_text("datetime;Accelerometer1RMS\n2020-01-01 00:00:00;oops\n")
    with pytest.raises(DataError):  # a bad file is the caller's to report; the feed reads it again next time
        feed.current()
    (data / "valve2" / "10.csv").unlink()
    assert len(feed.current().runs) == 5


def test_extra_runs_train_but_change_neither_held_out_rows_nor_the_default_scaling():
    node = load_node(SETTINGS, SETTINGS.worker("valve2"))
    live = Run("live:s:0", node.runs[0].values[:300])
    too_short = Run("live:t:0", node.runs[0].values[:SETTINGS.data.window - 1])  # not one window
    grown = node.with_extra([live, too_short])
    assert [r.name for r in grown.extra] == ["live:s:0"]
    assert len(grown.train_raw()) == len(node.train_raw()) + 300
    assert len(grown.windows(None, "train")) == len(node.windows(None, "train")) + 300
    np.testing.assert_array_equal(grown.windows(None, "held_out"), node.windows(None, "held_out"))
    np.testing.assert_array_equal(grown.held_out_labels(), node.held_out_labels())
    assert grown.labelled and grown.default_reference(None) == node.default_reference(None)
    assert grown.train_counts() == node.train_counts()  # live rows are counted by the buffer's mark


def test_marks_count_new_source_and_live_rows_until_a_round_trains_on_them(tmp_path):
    node = load_node(SETTINGS, SETTINGS.worker("valve2"))
    columns = SETTINGS.data.columns
    buffer = LiveBuffer(None, columns, max_rows=100, margin_rows=0, open_after=3, clear_after=10)

    def live(n: int, first: int) -> None:  # rows the served model scored normal
        buffer.observe(scored("s", first, np.full(n, 0.5), np.zeros(n, bool), np.ones((n, len(columns)), np.float32)))

    marks = TrainedMarks()
    assert marks.new_rows(node, None) == 4 * 400  # never trained: every training row is new
    live(50, 0)
    assert marks.new_rows(node, buffer) == 4 * 400 + 50
    marks.trained(3, node, buffer.mark())
    assert marks.new_rows(node, buffer) == 0 and marks.last_round == 3 and marks.rounds == 1
    live(150, 50)  # more than the buffer keeps: only the rows still held can be trained on
    assert marks.new_rows(node, buffer) == 100
    marks.save(tmp_path)
    assert TrainedMarks.load(tmp_path) == marks and TrainedMarks.load(tmp_path / "none") is None


def test_the_reporter_sends_changes_at_most_every_interval_and_again_after_a_round():
    now, current, rounds, delivered, accept = [0.0], [5], [0], [], [True]

    def send(report: WorkerReport) -> bool:
        if accept[0]:
            delivered.append(report.new_rows)
        return accept[0]

    joined = [False]
    reporter = Reporter(lambda: (WorkerReport(new_rows=current[0]), rounds[0]) if joined[0] else None, send,
                        min_interval_s=2.0, clock=lambda: now[0])
    assert not reporter.step() and delivered == [], "nothing to report before the worker joined"
    joined[0] = True
    assert reporter.step() and delivered == [5]
    now[0] = 3.0
    assert not reporter.step(), "unchanged: nothing to send"
    current[0], now[0] = 6, 3.5
    assert reporter.step() and delivered == [5, 6]
    current[0], now[0] = 7, 4.5
    assert not reporter.step(), "changed, but the last report is younger than the interval"
    now[0] = 5.5
    assert reporter.step() and delivered == [5, 6, 7]
    rounds[0], now[0] = 1, 7.5
    assert reporter.step() and delivered == [5, 6, 7, 7], "a round was trained: sent although unchanged"
    current[0], accept[0], now[0] = 9, False, 9.5
    assert not reporter.step() and reporter.last_sent.new_rows == 7
    accept[0], now[0] = True, 10.5
    assert reporter.step() and delivered == [5, 6, 7, 7, 9], "a failed send is tried again"
    assert reporter.sent == 5
