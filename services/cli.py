"""Command line: ``fedad run`` starts the whole federation on this machine from config.yaml and serves it."""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from services.config import Settings, load_or_exit
from services.data.check import describe_training
from services.data.source import DataError
from services.data.sources import load_node
from services.replay import AlarmWatcher, Replayer, devices

POLL_S = 1.0
START_TIMEOUT_S = 60
_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None  # loaded before any fork


class Stack:
    """The aggregator and one worker per config entry as child processes, logs under <state>/logs/."""

    def __init__(self, settings: Settings, config: str | None):
        self.settings = settings
        self.config = ["--config", config] if config else []
        self.log_dir = settings.aggregator.state_dir.parent / "logs"
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._spawn("aggregator", [sys.executable, "-m", "services.aggregator", *self.config])
        for w in self.settings.workers:
            self._spawn(w.id, [sys.executable, "-m", "services.worker", "--id", w.id, *self.config])

    def _spawn(self, name: str, argv: list[str]) -> None:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                preexec_fn=_die_with_parent)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
                raise SystemExit(f"{name} exited with code {proc.returncode}; last lines of its log:\n  "
                                 + "\n  ".join(tail))

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when this CLI dies, even by SIGKILL, so no service outlives it holding
    its port (Linux; elsewhere the stop path below is all there is)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGINT (Ctrl-C), SIGTERM (kill, systemd) and SIGHUP (a closed terminal) stop alike


def _get(client: httpx.Client, url: str) -> dict | None:
    try:
        response = client.get(url, timeout=5)
        return response.json() if response.status_code == 200 else None
    except httpx.HTTPError:
        return None


def _worker_url(w) -> str:
    return f"http://{w.host}:{w.port}"


def follow_training(stack: Stack, settings: Settings, client: httpx.Client) -> None:
    """Print one line per closed round until every worker serves the final model."""
    agg = settings.aggregator.url
    started, printed, last_phase = time.time(), 0, None
    while True:
        stack.check_alive()
        stop_on_failed_worker(settings, client)
        status = _get(client, f"{agg}/v1/status")
        if status is None:
            if time.time() - started > START_TIMEOUT_S:
                raise SystemExit(f"aggregator did not answer at {agg} within {START_TIMEOUT_S}s; see {stack.log_dir}")
        else:
            if status["phase"] != last_phase and status["phase"] == "waiting":
                joined = [w for w, s in status["workers"].items() if s["joined"]]
                print(f"waiting for workers to join ({len(joined)}/{status['min_workers']}) ...", flush=True)
            last_phase = status["phase"]
            for record in status["history"][printed:]:
                losses = ", ".join(f"{w} {v['loss']:.5f}" for w, v in record["workers"].items())
                print(f"round {record['round']:>3}/{status['rounds_total']}: {len(record['workers'])} updates "
                      f"in {record['duration_s']:.1f}s, mean loss {record['mean_loss']:.5f}  ({losses})", flush=True)
            printed = len(status["history"])
            if status["phase"] in ("idle", "done") and status["rounds_done"] >= status["rounds_total"]:
                workers = [_get(client, f"{_worker_url(w)}/v1/status") for w in settings.workers]  # idle: continual
                if all(w and _newest_round(w) == status["rounds_done"] and w["evaluation"] for w in workers):
                    print(f"training done in {time.time() - started:.0f}s", flush=True)
                    return
        time.sleep(POLL_S)


def _newest_round(worker_status: dict) -> int | None:
    """The newest round a worker installed: served, or refused by its gate (then ``model_round`` stays older)."""
    latest = (worker_status.get("models") or {}).get("latest_round")
    return latest if latest is not None else worker_status.get("model_round")


class RoundPrinter:
    """After the first campaign: one line per continual round (what opened it), and one when what the workers serve
    changes (a newer round, or a round their gate refused)."""

    def __init__(self, settings: Settings, client: httpx.Client, status: dict | None = None):
        self.settings, self.client = settings, client
        status = status or _get(client, f"{settings.aggregator.url}/v1/status")
        self.printed = len(status["history"]) if status else 0
        self.serving = self._serving(status) if status else {}

    @staticmethod
    def _serving(status: dict) -> dict[str, tuple]:
        models = {w: s.get("model") or {} for w, s in status["workers"].items()}
        return {w: (m.get("served_round"), (m.get("last_refused") or {}).get("round")) for w, m in models.items()}

    def poll(self) -> list[str]:
        status = _get(self.client, f"{self.settings.aggregator.url}/v1/status")
        return [] if status is None else self.lines(status)

    def lines(self, status: dict) -> list[str]:
        """What changed since the last status document."""
        lines = []
        for record in status["history"][self.printed:]:
            samples = sum(w["sample_count"] for w in record["workers"].values())
            lines.append(f"round {record['round']:>3} ({record.get('trigger', 'campaign')}): "
                         f"{len(record['workers'])} updates on {samples} rows, mean loss {record['mean_loss']:.5f}")
        self.printed = len(status["history"])
        serving, before = self._serving(status), self.serving
        changed = {w: now for w, now in serving.items() if now != before.get(w) and now[0] is not None}
        refusals = {w: now[1] for w, now in changed.items() if now[1] != (before.get(w) or (None, None))[1]}
        self.serving = serving
        served = {now[0] for now in changed.values()}
        if changed and len(changed) == len(serving) and len(served) == 1 and not refusals:
            lines.append(f"            every worker serves round {served.pop()}")
        else:
            for w, (round_no, _) in sorted(changed.items()):
                reason = ((status["workers"][w].get("model") or {}).get("last_refused") or {}).get("reason", "")
                refused = refusals.get(w)
                lines.append(f"            {w} serves round {round_no}" +
                             (f"; its gate refused round {refused}: {reason[:160]}" if refused else ""))
        return lines


def stop_on_failed_worker(settings: Settings, client: httpx.Client) -> None:
    """A worker whose loop stopped for good (no data, refused by the aggregator) never finishes: say why, now."""
    for w in settings.workers:
        status = _get(client, f"{_worker_url(w)}/v1/status")
        if status and status.get("phase") == "failed":
            raise SystemExit(f"worker {w.id} stopped: {status.get('last_error')}")


def print_results(settings: Settings, client: httpx.Client) -> None:
    statuses = {w.id: _get(client, f"{_worker_url(w)}/v1/status") for w in settings.workers}
    if not all(s["evaluation"].get("labels", True) for s in statuses.values()):
        print("\nheld-out rows (no labels, so no F1: the share of rows each worker flags)")
        print(f"  {'worker':<10} {'rows':>6} {'alarms %':>9}  model  /detect")
        for w in settings.workers:
            s = statuses[w.id]
            e = s["evaluation"]
            print(f"  {w.id:<10} {e['rows']:>6} {e.get('alarm_rate', float('nan')):>9.2f}  {s['model']:<5}  "
                  f"{_worker_url(w)}/detect")
        return
    print("\nheld-out detection (the rows that do not train; training rows: "
          f"{describe_training(settings.data)})")
    print(f"  {'worker':<10} {'rows':>6} {'F1':>6} {'FAR %':>7} {'MAR %':>7} {'ROC-AUC':>8}  model  /detect")
    counts = []
    for w in settings.workers:
        status = statuses[w.id]
        e = status["evaluation"]
        counts.append(e["counts"])
        print(f"  {w.id:<10} {e['rows']:>6} {e['f1']:>6.3f} {e['far']:>7.2f} {e['mar']:>7.2f} "
              f"{e.get('roc_auc', float('nan')):>8.3f}  {status['model']:<5}  {_worker_url(w)}/detect")
    from services.model.metrics import pooled_metrics  # scikit-learn: 3 s of start-up `data check` skips

    p = pooled_metrics(counts)
    print(f"  {'pooled':<10} {p['rows']:>6} {p['f1']:>6.3f} {p['far']:>7.2f} {p['mar']:>7.2f}")


def print_verdict(settings: Settings) -> None:
    """The served detectors against a same-run IsolationForest on the same held-out rows, in one line
    (services/evaluation/verdict.py): the served versions read from the workers' state folders, the forest fitted
    here."""
    from services.evaluation.live import run_verdict

    try:
        nodes = {w.id: load_node(settings, w) for w in settings.workers}
        print(run_verdict(settings, nodes)["line"], flush=True)
    except (DataError, LookupError, OSError) as exc:
        print(f"verdict: not computed ({exc})", flush=True)


def curl_example(settings: Settings) -> str:
    w = settings.workers[0]
    try:
        node = load_node(settings, w)
        run, mask = node.runs[0], node.masks[0]
        rows = run.values[~mask][:2].tolist()
    except DataError:
        rows = [[0.0] * len(settings.data.columns)]
    body = json.dumps({"samples": [[round(v, 6) for v in row] for row in rows]})
    return f"curl -s -X POST {_worker_url(w)}/detect -H 'Content-Type: application/json' -d '{body}'"


def cmd_run(args) -> None:
    settings = load_or_exit(args.config)
    stack = Stack(settings, args.config)
    lock = _hold_run_lock(stack.log_dir)  # noqa: F841  (held until this process ends)
    if args.port_base is not None:
        _say_fixed_ports(settings)
    if args.fresh:
        for d in [settings.aggregator.state_dir, *(w.state_dir for w in settings.workers)]:
            shutil.rmtree(d, ignore_errors=True)
    print(f"starting aggregator on {settings.aggregator.url} and {len(settings.workers)} workers "
          f"({', '.join(f'{w.id} :{w.port}' for w in settings.workers)}); {settings.federation.rounds} rounds of "
          f"{settings.model.local_epochs} local epochs; logs in {stack.log_dir}", flush=True)
    replay: tuple[Replayer, threading.Thread] | None = None
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: a shell starts a background job
        signal.signal(signum, _interrupt)                            # (`fedad run &`, nohup) with it ignored
    try:
        stack.start()
        print(f"dashboard: {settings.aggregator.url}/  (live; each worker's page is at its own address, e.g. "
              f"{_worker_url(settings.workers[0])}/)", flush=True)
        with httpx.Client() as client:
            follow_training(stack, settings, client)
            print_results(settings, client)
            print_verdict(settings)
        print("\nserving: every worker answers POST /detect with the model in the table (int8 only where it ranks its "
              "held-out rows as fp32 does); try\n  " + curl_example(settings))
        print(f"dashboard: {settings.aggregator.url}/   metrics: {settings.aggregator.url}/metrics and "
              f"{_worker_url(settings.workers[0])}/metrics")
        print(f"status: {settings.aggregator.url}/v1/status   API docs: {settings.aggregator.url}/docs and "
              f"{_worker_url(settings.workers[0])}/docs\nCtrl-C stops.", flush=True)
        if not args.no_replay and (args.replay_for is not None or not args.exit_when_done):
            replay = start_replay(settings, args.speed, args.replay_for)
        if args.exit_when_done and replay is None:
            return
        watcher = AlarmWatcher({w.id: _worker_url(w) for w in settings.workers})
        rounds = RoundPrinter(settings, httpx.Client(timeout=5))  # the federation keeps learning from the live rows
        while True:
            stack.check_alive()
            for line in [*watcher.poll(), *rounds.poll()]:
                print(line, flush=True)
            if replay is not None and not replay[1].is_alive() and args.exit_when_done:
                for line in watcher.poll():
                    print(line, flush=True)
                return
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        print("\nstopping ...")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second kill must not cut the stop short
        if replay is not None:  # before the workers go: the replay must not knock at closed ports
            replay[0].stop()
            replay[1].join(5)
        stack.stop()


def _hold_run_lock(log_dir: Path):
    """One ``fedad run`` per state folder: a second one (another port base, the same config) would share its state
    dirs and logs, and ``--fresh`` would delete the running stack's state. The lock dies with the process."""
    log_dir.mkdir(parents=True, exist_ok=True)
    lock = open(log_dir / "run.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"another fedad run is using {log_dir.parent} (its services' state dirs and logs): give "
                         "this stack state dirs of its own (its own config file, or FEDAD__AGGREGATOR__STATE_DIR and "
                         "FEDAD__WORKERS__<id>__STATE_DIR) as well as its own ports") from None
    return lock


def _say_fixed_ports(settings: Settings) -> None:
    """``--port-base`` moves only the ports the config leaves out: name the ones it keeps."""
    base = settings.port_base
    fixed = [f"aggregator {settings.aggregator.port}"] if settings.aggregator.port != base else []
    fixed += [f"{w.id} {w.port}" for k, w in enumerate(settings.workers, start=1) if w.port != base + k]
    if fixed:
        print(f"--port-base {base}: the config gives these ports itself, and they win: {', '.join(fixed)}", flush=True)


def start_replay(settings: Settings, speed: float, duration: float | None) -> tuple[Replayer, threading.Thread]:
    """The held-out rows of every worker's data as live devices (services/replay.py), in a thread."""
    by_worker = devices(settings)
    count = sum(len(d) for d in by_worker.values())
    print(f"\nlive demo: replaying the held-out rows of {count} runs as devices ({speed:g}x real time, one device "
          f"per worker at a time) to each worker's /detect; alarms open and clear below and on the dashboard "
          f"(--no-replay skips this)", flush=True)
    replayer = Replayer(by_worker, speed=speed)
    thread = threading.Thread(target=replayer.run, args=(duration,), name="replay", daemon=True)
    thread.start()
    return replayer, thread


def cmd_replay(args) -> None:
    settings = load_or_exit(args.config)
    by_worker = devices(settings, args.worker)
    watcher = AlarmWatcher({w.id: _worker_url(w) for w in settings.workers if w.id in by_worker})
    replayer = Replayer(by_worker, speed=args.speed, lanes=args.lanes, repeat=not args.once)
    thread = threading.Thread(target=replayer.run, args=(args.duration,), name="replay", daemon=True)
    print(f"replaying {sum(len(d) for d in by_worker.values())} runs of {', '.join(by_worker)} at {args.speed:g}x; "
          "Ctrl-C stops", flush=True)
    thread.start()
    try:
        while thread.is_alive():
            for line in watcher.poll():
                print(line, flush=True)
            thread.join(POLL_S)
        for line in watcher.poll():
            print(line, flush=True)
    except KeyboardInterrupt:
        replayer.stop()
    print(f"{replayer.sent} rows sent, {replayer.failed} failed requests")


def cmd_evaluate(args) -> None:
    from services.evaluation.cli import evaluate_command

    evaluate_command(load_or_exit(args.config), args.out, args.modes, args.kinds, args.datasets)


def cmd_report(args) -> None:
    from services.evaluation.cli import report_command

    report_command(args.results, args.out)


def cmd_data_check(args) -> None:
    """Print every worker's data report; exit 1 when any node's data is unusable (every problem listed)."""
    from services.data.check import check, format_report

    settings = load_or_exit(args.config)
    reports = check(settings, args.worker or None)
    if args.worker and not reports:
        raise SystemExit(f"no worker {args.worker} in the config (known: {[w.id for w in settings.workers]})")
    for report in reports:
        print(format_report(report, settings), end="\n\n")
    bad = [r.worker for r in reports if not r.usable]
    if bad:
        print(f"data check FAILED for {', '.join(bad)}: fix the problems above (workers refuse to start on them)")
        raise SystemExit(1)
    warned = [r.worker for r in reports if r.warnings]
    print(f"data check passed: {len(reports)} node(s) usable"
          + (f"; read the warnings for {', '.join(warned)} above" if warned else ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fedad", description="Federated anomaly detection on IoT edge devices")
    parser.add_argument("--config", help="config file (default: $FEDAD_CONFIG or config.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train the federation on this machine from config.yaml, then serve /detect")
    run.add_argument("--fresh", action="store_true", help="discard persisted state and start a new run")
    run.add_argument("--exit-when-done", action="store_true", help="stop the services once results are printed")
    run.add_argument("--no-replay", action="store_true", help="do not replay the held-out rows as live devices "
                                                               "once trained")
    run.add_argument("--speed", type=float, default=20.0, help="replay speed, times real time (default 20)")
    run.add_argument("--replay-for", type=float, default=None, metavar="SECONDS",
                     help="stop the replay after this long (default: until Ctrl-C); with --exit-when-done the run "
                          "replays only when this is given, and exits after it")
    run.set_defaults(func=cmd_run)
    replay = commands.add_parser("replay", help="play the configured data set's held-out rows as live devices to the "
                                                "running workers' /detect; print the alarms they raise")
    replay.add_argument("--speed", type=float, default=20.0, help="times real time (default 20)")
    replay.add_argument("--worker", action="append", help="only this worker's data (repeatable)")
    replay.add_argument("--lanes", type=int, default=1, help="devices played at once per worker (default 1)")
    replay.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after this long")
    replay.add_argument("--once", action="store_true", help="play every run once, then stop (default: repeat)")
    replay.set_defaults(func=cmd_replay)
    for command in (run, replay):
        command.add_argument("--port-base", type=int, default=None, metavar="N",
                             help="the aggregator on port N, worker k on N + k, wherever the config leaves ports "
                                  "out (= FEDAD__PORT_BASE=N); a second stack beside another needs its own state "
                                  "dirs too")
    evaluate = commands.add_parser("evaluate", help="federated vs centralised vs local-only detection on SKAB's "
                                                    "protocol, fp32 and int8; writes reports/evaluation/")
    evaluate.add_argument("--out", default="reports/evaluation", help="results folder (default reports/evaluation)")
    evaluate.add_argument("--modes", default="federated,centralised,local",
                          help="comma-separated subset of federated,centralised,local")
    evaluate.add_argument("--kinds", default="dense,conv1d,lstm",
                          help="model kinds to compare, comma-separated subset of dense,conv1d,lstm")
    evaluate.add_argument("--datasets", default=None, help="comma-separated subset of skab,shuttle,synthetic,own-data "
                          "(skab: the config; each into its own folder under --out; default: the config's data only)")
    evaluate.set_defaults(func=cmd_evaluate)
    report = commands.add_parser("report", help="render the evaluation results as one self-contained HTML page")
    report.add_argument("--results", default="reports/evaluation", help="folder written by `fedad evaluate`")
    report.add_argument("--out", default="reports/report.html", help="the HTML file to write")
    report.set_defaults(func=cmd_report)
    data = commands.add_parser("data", help="inspect the configured data").add_subparsers(dest="data_command",
                                                                                         required=True)
    data_check = data.add_parser("check", help="read every worker's data as training will; print what it holds and "
                                               "every problem (exit 1 when any)")
    data_check.add_argument("--worker", action="append", help="only this worker (repeatable)")
    data_check.add_argument("--config", default=argparse.SUPPRESS, help="config file (default: $FEDAD_CONFIG or "
                                                                        "config.yaml)")
    data_check.set_defaults(func=cmd_data_check)
    # `fedad run --config x.yaml` as well as `fedad --config x.yaml run`
    for command in (run, replay, evaluate, report):
        command.add_argument("--config", default=argparse.SUPPRESS, help="config file (default: $FEDAD_CONFIG or "
                                                                          "config.yaml)")
    args = parser.parse_args(argv)
    if getattr(args, "port_base", None) is not None:  # the services read it as the one override mechanism
        os.environ["FEDAD__PORT_BASE"] = str(args.port_base)
    args.func(args)


if __name__ == "__main__":
    main()
