"""A week of a device fleet, compressed in time: does the federation keep learning without losing a round?

A real aggregator and three workers on loopback, on the synthetic fleet (examples/synthetic.yaml) at one reading a
minute: the first day trains the first campaign, the next six days are played to the workers' /detect as live
device streams. Rounds keep opening on a schedule (skipped when no worker has new rows); each round trains on the
node's rows as they are now, its files plus the live rows its model scored normal (the live buffer). Midway the
aggregator and one worker are killed with SIGKILL and restarted.

At the end it checks that no round was lost: round numbers follow each other, every continual round closed with
every training worker's update, every worker installed every round, /detect answered every row. It prints a table
of the rounds and writes ``continual-week.json`` and ``continual-week.png`` (rounds over time, live rows, gate
decisions) into ``--out``.

  .venv/bin/python tests/reliability/continual_week.py --rounds 30          (make continual-week, ~7 min)
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]

from services.config import load_settings  # noqa: E402
from services.replay import Replayer, devices  # noqa: E402
from support import Stack, wait_until  # noqa: E402

ROOT = HERE.parents[1]
WORKERS = ["device0", "device1", "device2"]
DAY_S = 86_400.0
MINUTE = 60.0


def week_overrides(every_s: float, campaign_rounds: int, reading_s: float = MINUTE) -> dict[str, str]:
    """examples/synthetic.yaml as a week at one reading every ``reading_s`` (a minute: 1440 a day), anomalies the same
    share of its rows (20 a device at one a minute); continual rounds on a schedule."""
    day_rows = int(DAY_S // reading_s)
    return {
        "FEDAD_CONFIG": str(ROOT / "examples" / "synthetic.yaml"),
        "FEDAD__DATA__SOURCE__SYNTHETIC__ROWS": str(7 * day_rows),
        "FEDAD__DATA__SOURCE__SYNTHETIC__NORMAL_ROWS": str(day_rows),
        "FEDAD__DATA__SOURCE__SYNTHETIC__INTERVAL_S": str(reading_s),
        "FEDAD__DATA__SOURCE__SYNTHETIC__PERIOD_ROWS": str(day_rows),
        "FEDAD__DATA__SOURCE__SYNTHETIC__ANOMALIES": str(max(1, round(20 * MINUTE / reading_s))),
        "FEDAD__DATA__TRAINING__ROWS": str(day_rows),
        "FEDAD__FEDERATION__CONTINUAL__EVERY_S": str(every_s),
        "FEDAD__FEDERATION__CONTINUAL__MIN_NEW_ROWS": "null",  # the schedule alone opens rounds here
        "FEDAD__FEDERATION__CONTINUAL__ON_DRIFT": "false",
        "FEDAD__FEDERATION__ROUND_DEADLINE_S": "60",
        "FEDAD__DASHBOARD__TELEMETRY_INTERVAL_S": "2",
        "FEDAD__STREAMS__MAX_STREAMS": "100",
        "FEDAD__LOGGING__LEVEL": "INFO",
    }


def run_week(rounds: int, every_s: float, replay_s: float, workdir: Path, kill: bool = True,
             progress=print, reading_s: float = MINUTE) -> dict:
    """Run the compressed week until ``rounds`` continual rounds closed (and the replay ended). Returns a report.
    ``reading_s``: each device's reading interval; every row is played to a worker, so this sets the replay's
    length (one a minute: 25,920 live rows)."""
    overrides = week_overrides(every_s, campaign_rounds=2, reading_s=reading_s)
    stack = Stack(workdir, workers=WORKERS, rounds=2, epochs=1, overrides=overrides)
    settings = load_settings(overrides["FEDAD_CONFIG"], environ=stack.env)
    replay_rows = sum(len(d.rows) for devs in devices(settings, WORKERS).values() for d in devs)
    speed = 6 * DAY_S / replay_s
    started = time.time()
    stack.start()
    events: list[str] = []
    try:
        campaign = stack.wait_done(timeout=300)
        campaign_rounds = campaign["rounds_done"]
        progress(f"first campaign: {campaign_rounds} rounds in {time.time() - started:.0f}s; replaying six days "
                 f"({replay_rows} rows) at {speed:.0f}× over {replay_s:.0f}s, a round every {every_s:g}s")
        replayer = Replayer(devices(settings, WORKERS), speed=speed, repeat=False)
        replay = threading.Thread(target=replayer.run, daemon=True)
        replay.start()
        killed: set[str] = set()
        last_seen = campaign_rounds
        last_round_seen = [campaign_rounds, time.time()]  # rounds done, when that changed
        while True:
            status = stack.status() or {}
            done = status.get("rounds_done", last_seen)
            if done > last_seen:
                for record in status["history"][last_seen:done]:
                    progress(f"round {record['round']:>3} ({record.get('trigger', '?')}, closed by "
                             f"{record['closed_by']}): {len(record['workers'])} updates, mean loss "
                             f"{record['mean_loss']:.5f}, samples "
                             f"{sum(w['sample_count'] for w in record['workers'].values())}")
                last_seen = done
            continual_done = done - campaign_rounds
            if kill and "aggregator" not in killed and continual_done >= rounds // 3:
                killed.add("aggregator")
                events.append(_kill_and_restart(stack, "aggregator", continual_done, progress))
            if kill and "worker" not in killed and continual_done >= 2 * rounds // 3:
                killed.add("worker")
                events.append(_kill_and_restart(stack, WORKERS[1], continual_done, progress))
            if continual_done >= rounds and not replay.is_alive():
                break
            if done > last_round_seen[0]:
                last_round_seen[:] = [done, time.time()]
            if not replay.is_alive() and time.time() - last_round_seen[1] > max(60.0, 10 * every_s):
                raise AssertionError(f"the replay ended after {continual_done} of {rounds} continual rounds and no "
                                     "round opens without new rows: give it more time (--replay-seconds)")
            time.sleep(0.5)
        final = wait_until(lambda: _all_installed(stack), 120, "every worker to install the last round")
        return _report(stack, final, campaign_rounds, replayer, replay_rows, speed, events, time.time() - started)
    finally:
        stack.stop()


def _kill_and_restart(stack: Stack, who: str, at_round: int, progress) -> str:
    if who == "aggregator":
        stack.aggregator.kill(signal.SIGKILL)
        stack.aggregator.start().wait_healthy()
    else:
        stack.worker_services[who].kill(signal.SIGKILL)
        stack.restart_worker(who)
    event = f"SIGKILL and restart of {who} after continual round {at_round}"
    progress(event)
    return event


def _all_installed(stack: Stack) -> dict | None:
    status = stack.status()
    if not status or status["phase"] == "training":
        return None
    workers = {w: stack.worker_status(w) for w in WORKERS}
    if any(not s or s["models"]["latest_round"] != status["rounds_done"] for s in workers.values()):
        return None
    return {"aggregator": status, "workers": workers}


def _report(stack, final: dict, campaign_rounds: int, replayer: Replayer, replay_rows: int, speed: float,
            events: list[str], seconds: float) -> dict:
    status, workers = final["aggregator"], final["workers"]
    history = status["history"]
    continual = [h for h in history if h["round"] > campaign_rounds]
    problems = []
    if [h["round"] for h in history] != list(range(1, len(history) + 1)):
        problems.append(f"round numbers are not consecutive: {[h['round'] for h in history]}")
    for h in continual:
        if sorted(h["workers"]) != WORKERS:
            problems.append(f"round {h['round']} closed with {sorted(h['workers'])}, not every worker")
    if replayer.sent != replay_rows:  # a row that met a restarting worker is sent again; a refused one is not
        problems.append(f"{replay_rows - replayer.sent} of {replay_rows} replayed rows were refused")
    gate = {w: {"served": s["models"]["served"], "refused": [v["version"] for v in s["models"]["versions"]
                                                            if v["status"] == "refused"]}
            for w, s in workers.items()}
    return {
        "seconds": round(seconds, 1),
        "campaign_rounds": campaign_rounds,
        "continual_rounds": len(continual),
        "skipped_rounds": len(status.get("continual", {}).get("skipped", [])),
        "replayed_rows": replayer.sent, "replay_rows_planned": replay_rows, "replay_speed": round(speed),
        "replay_retries": replayer.failed,
        "events": events,
        "rounds": [{"round": h["round"], "trigger": h.get("trigger"), "closed_by": h["closed_by"],
                    "closed_at": h["closed_at"], "duration_s": h["duration_s"], "mean_loss": h["mean_loss"],
                    "samples": {w: u["sample_count"] for w, u in h["workers"].items()}} for h in history],
        "workers": {w: {"buffer_rows": (s.get("buffer") or {}).get("rows"),
                        "drift_events": (s.get("drift") or {}).get("events"),
                        "rounds_trained": s["continual"]["rounds_trained"], **gate[w]}
                    for w, s in workers.items()},
        "problems": problems,
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = report["rounds"]
    t0 = rounds[0]["closed_at"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for trigger, colour in (("campaign", "tab:grey"), ("schedule", "tab:blue"), ("admin", "tab:orange"),
                            ("new_data", "tab:green"), ("drift", "tab:red")):
        xs = [r["closed_at"] - t0 for r in rounds if r["trigger"] == trigger]
        ys = [r["mean_loss"] for r in rounds if r["trigger"] == trigger]
        if xs:
            top.scatter(xs, ys, s=18, color=colour, label=f"{trigger} ({len(xs)})")
    top.set_ylabel("mean training loss")
    top.set_yscale("log")
    top.legend(loc="upper right", fontsize=8)
    top.set_title(f"{report['continual_rounds']} continual rounds over a replayed week "
                  f"({report['replayed_rows']} live rows, {report['seconds']:.0f} s)")
    for w in sorted({w for r in rounds for w in r["samples"]}):
        xs = [r["closed_at"] - t0 for r in rounds if w in r["samples"]]
        bottom.plot(xs, [r["samples"][w] for r in rounds if w in r["samples"]], marker=".", label=w)
    bottom.set_ylabel("rows trained on")
    bottom.set_xlabel("seconds since the first round closed")
    bottom.legend(loc="upper left", fontsize=8)
    for event in report["events"]:
        n = int(event.rsplit(" ", 1)[-1])
        closed = [r["closed_at"] - t0 for r in rounds if r["round"] == report["campaign_rounds"] + n]
        for x in closed:
            for ax in (top, bottom):
                ax.axvline(x, color="tab:red", linestyle=":", linewidth=1)
            top.annotate(f"kill -9 {event.split(' of ')[1].split(' ')[0]}", (x, 1), xycoords=("data", "axes fraction"),
                         xytext=(3, -12), textcoords="offset points", fontsize=8, color="tab:red")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30, help="continual rounds to run (after the campaign)")
    parser.add_argument("--every", type=float, default=6.0, help="seconds between scheduled rounds")
    parser.add_argument("--replay-seconds", type=float, default=None,
                        help="wall time the six live days take (default: 12 s per round; a round opens only while "
                             "there are new rows)")
    parser.add_argument("--no-kill", action="store_true", help="do not kill and restart services midway")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "artifacts")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fedad-week-") as tmp:
        replay_s = args.replay_seconds or 12.0 * args.rounds
        report = run_week(args.rounds, args.every, replay_s, Path(tmp), kill=not args.no_kill,
                          progress=lambda line: print(line, flush=True))
    (args.out / "continual-week.json").write_text(json.dumps(report, indent=1))
    plot(report, args.out / "continual-week.png")
    print(f"\n{report['continual_rounds']} continual rounds after {report['campaign_rounds']} campaign rounds, "
          f"{report['skipped_rounds']} scheduled rounds skipped, {report['replayed_rows']} live rows in "
          f"{report['seconds']:.0f}s")
    for w, figures in report["workers"].items():
        print(f"  {w}: trained {figures['rounds_trained']} rounds, serves {figures['served']}, refused "
              f"{figures['refused'] or 'none'}, live buffer {figures['buffer_rows']} rows, drift events "
              f"{figures['drift_events']}")
    print("  events: " + ("; ".join(report["events"]) or "none"))
    print(f"  wrote {args.out / 'continual-week.json'} and {args.out / 'continual-week.png'}")
    if report["problems"]:
        print("LOST OR BROKEN ROUNDS:\n  " + "\n  ".join(report["problems"]))
        raise SystemExit(1)
    print("no round lost")


if __name__ == "__main__":
    main()
