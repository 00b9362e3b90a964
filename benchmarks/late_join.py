"""How fast a node that joins late serves: a 4th worker started after the campaign, from its process start to its
first 200 on GET /readyz and on POST /detect.

A real aggregator and SKAB's three workers on loopback run a short campaign (``--rounds``); once the aggregator has
published every round of it (rounds_done >= rounds_total) and the three serve the last model, a 4th worker ``late``
starts, configured like the others with a copy of one partition (``--late-partition``). It joins (the aggregator
answers with the federation's frozen scaler), pulls the current global model, calibrates it on its own training rows
(threshold, int8 scales) and serves, without a round of its own. References measured in the same run:
- **campaign**: each original worker's time from its process start to its first /readyz and /detect 200, i.e.
  through join, the first round's training and install;
- **restart**: one original worker stopped (SIGTERM) and started again, serving from its persisted state.
/healthz says when the process answers at all (imports, app start). Probes poll every ``--interval`` s, so each
figure is at most that much late.

    python -m benchmarks.late_join                          # 3 rounds of the configured local epochs (~1 min)
    python -m benchmarks.late_join --rounds 1 --epochs 1    # the smoke test
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import httpx
import yaml

from benchmarks.common import (
    LOOPBACK,
    Federation,
    Process,
    emit_json,
    free_port,
    get_json,
    print_header,
    wait_until,
    workdir,
)
from benchmarks.detect import JSON, held_out_rows, json_body

WORKERS = ["valve1", "valve2", "other"]
LATE = "late"
PROBES = ("healthz", "readyz", "detect")


class FirstServed:
    """Polls each watched service's /healthz, /readyz and POST /detect; keeps the seconds from its process start to
    the first 200 of each."""

    def __init__(self, body: bytes, interval: float):
        self.body, self.interval = body, interval
        self.watched: dict[str, tuple[str, float]] = {}
        self.first: dict[str, dict[str, float]] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, name: str, url: str, started: float) -> None:
        with self.lock:
            self.watched[name] = (url, started)
            self.first[name] = {}

    def done(self, name: str) -> bool:
        with self.lock:
            return set(PROBES) <= set(self.first.get(name, {}))

    def _run(self) -> None:
        with httpx.Client(timeout=2.0) as client:
            while not self.stop_event.is_set():
                with self.lock:
                    pending = [(n, u, s) for n, (u, s) in self.watched.items() if len(self.first[n]) < len(PROBES)]
                for name, url, started in pending:
                    for probe in PROBES:
                        if probe in self.first[name]:
                            continue
                        try:
                            r = (client.post(f"{url}/detect", content=self.body, headers={"Content-Type": JSON})
                                 if probe == "detect" else client.get(f"{url}/{probe}"))
                        except httpx.HTTPError:
                            continue
                        if r.status_code == 200:
                            with self.lock:
                                self.first[name][probe] = time.time() - started
                self.stop_event.wait(self.interval)

    def __enter__(self) -> FirstServed:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)


def workers_list(late_port: int, late_state, partition: list[str]) -> str:
    """config.yaml's workers plus ``late`` (a copy of ``partition``), as one FEDAD__WORKERS value."""
    from services.config import load_settings

    settings = load_settings(environ={})
    listed = [{"id": w.id, "partition": w.partition, "port": w.port, "state_dir": str(w.state_dir), "token": w.token,
               "mode": w.mode} for w in settings.workers if w.id in WORKERS]
    listed.append({"id": LATE, "partition": partition, "host": LOOPBACK, "port": late_port,
                   "state_dir": str(late_state), "token": "dev-token-late", "mode": "train"})
    return yaml.safe_dump(listed, default_flow_style=True, width=10_000).strip()


def wait_campaign(fed: Federation, timeout: float) -> dict:
    """The aggregator has published every campaign round and every original worker serves the last one."""
    def finished():
        status = get_json(f"{fed.agg_url}/v1/status")
        if not status or status["rounds_done"] < status["rounds_total"]:
            return None
        ws = {w: get_json(f"{fed.worker_url(w)}/v1/status") for w in fed.workers}
        ok = all(s and s.get("model_round") == status["rounds_total"] for s in ws.values())
        return status if ok else None
    try:
        return wait_until(finished, timeout, "the campaign to finish", interval=0.25)
    except TimeoutError:
        raise RuntimeError("campaign did not finish; logs:\n" + "\n".join(
            f"--- {p.name}\n{p.log()}" for p in [fed.aggregator, *fed.services.values()])) from None


def wait_served(probe: FirstServed, name: str, process: Process, timeout: float) -> dict:
    def served():
        if process.proc.poll() is not None:
            raise RuntimeError(f"{name} exited {process.proc.returncode}:\n{process.log()}")
        return probe.done(name)
    try:
        wait_until(served, timeout, f"{name} to serve", interval=0.05)
    except TimeoutError:
        raise RuntimeError(f"{name} did not serve; log:\n{process.log()}") from None
    return dict(probe.first[name])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="campaign rounds before the late worker starts")
    parser.add_argument("--epochs", type=int, default=None, help="local epochs per round (default: config.yaml's)")
    parser.add_argument("--late-partition", default="valve2", help="partition the late worker reads (a copy)")
    parser.add_argument("--restart", default="valve2", help="original worker restarted from its state ('' to skip)")
    parser.add_argument("--interval", type=float, default=0.05, help="probe interval, s")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--keep", default=None, help="keep state and logs in this folder")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    machine = print_header("a late joiner: process start -> first /readyz and /detect 200", argv)

    from services.config import load_settings

    settings = load_settings(environ={})
    epochs = args.epochs or settings.model.local_epochs
    body = json_body(held_out_rows(settings, args.late_partition, 30))
    with workdir(args.keep) as wd, FirstServed(body, args.interval) as probe:
        while True:  # free_port may hand out one port twice: the late worker's must be its own
            late_port = free_port()
            fed = Federation(wd, WORKERS, args.rounds, epochs,
                             FEDAD__WORKERS=workers_list(late_port, wd / LATE, [args.late_partition]))
            if late_port not in (fed.agg_port, *fed.ports.values()):
                break
        late = Process(LATE, [sys.executable, "-m", "services.worker", "--id", LATE], fed.env, wd,
                       f"http://{LOOPBACK}:{late_port}")
        try:
            fed.aggregator.start()
            fed.aggregator.wait_healthy()
            for w, service in fed.services.items():
                probe.watch(w, fed.worker_url(w), time.time())
                service.start()
            campaign = {w: wait_served(probe, w, s, args.timeout) for w, s in fed.services.items()}
            campaign_started = min(probe.watched[w][1] for w in WORKERS)
            agg = wait_campaign(fed, args.timeout)
            campaign_s = time.time() - campaign_started
            print(f"# campaign: {agg['rounds_done']} rounds × {epochs} epochs in {campaign_s:.1f}s; aggregator "
                  f"phase {agg['phase']}", flush=True)

            probe.watch(LATE, late.url, time.time())
            late.start()
            late_first = wait_served(probe, LATE, late, args.timeout)
            late_status = get_json(f"{late.url}/v1/status") or {}
            if late.proc.poll() is not None or late_status.get("worker_id") != LATE:
                raise RuntimeError(f"another process answered on the late worker's port:\n{late.log()}")
            agg_after = get_json(f"{fed.agg_url}/v1/status") or {}

            restart = None
            if args.restart:
                service = fed.services[args.restart]
                service.stop()
                name = f"{args.restart} (restart)"
                probe.watch(name, fed.worker_url(args.restart), time.time())
                service.start()
                restart = wait_served(probe, name, service, args.timeout)
        finally:
            late.stop()
            fed.stop()

    reference = {w: v["detect"] for w, v in campaign.items()}
    slowest = max(reference.values())
    fastest = min(reference.values())
    result = {
        "machine": machine, "args": vars(args), "epochs": epochs, "rounds": agg["rounds_done"],
        "campaign_seconds": campaign_s, "campaign_first_served": campaign,
        "late": {**late_first, "model_round": late_status.get("model_round"), "phase": late_status.get("phase"),
                 "aggregator_rounds_done": agg_after.get("rounds_done"), "partition": args.late_partition},
        "restart": restart,
        "ratios": {"late_vs_fastest_campaign_worker": late_first["detect"] / fastest,
                   "late_vs_slowest_campaign_worker": late_first["detect"] / slowest},
    }
    if restart:
        result["ratios"]["late_vs_restart"] = late_first["detect"] / restart["detect"]

    print()
    print("seconds from process start to the first 200 (probes every "
          f"{args.interval * 1e3:.0f} ms):")
    print(f"  {'worker':<22} {'/healthz':>8} {'/readyz':>8} {'/detect':>8}  what it waited for")

    def line(name: str, v: dict, what: str) -> None:
        print(f"  {name:<22} {v['healthz']:>8.2f} {v['readyz']:>8.2f} {v['detect']:>8.2f}  {what}")
    for w, v in campaign.items():
        line(w, v, "campaign: join, round 1 (training), install")
    line(LATE, late_first, f"late join after round {agg['rounds_done']}: join, pull, calibrate (serves round "
                           f"{late_status.get('model_round')})")
    if restart:
        line(f"{args.restart} (restart)", restart, "restart: the persisted model")
    r = result["ratios"]
    print(f"  late / campaign worker: x{r['late_vs_fastest_campaign_worker']:.2f} (fastest) "
          f"x{r['late_vs_slowest_campaign_worker']:.2f} (slowest)"
          + (f"; late / restart: x{r['late_vs_restart']:.2f}" if restart else ""))
    print("\ntargets:")
    ok = late_first["detect"] < fastest and late_status.get("model_round") == agg["rounds_done"]
    print(f"  the late worker serves the last model ({late_status.get('model_round')} of {agg['rounds_done']}) "
          f"sooner than any campaign worker served its first: {'met' if ok else 'NOT met'}")
    emit_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
