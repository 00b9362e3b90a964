"""The stream path of a real worker (trained for real, aggregator + one worker on loopback, a real Mosquitto), each
figure beside its reference measured in the same run:

  (1) HTTP, one row per request: POST /detect with ``"stream"`` (JSON, one held-out SKAB row of one of
      ``--streams`` streams per request, their baselines set first) vs the constant FastAPI handler
      (benchmarks/trivial_app.py) driven alike — wrk with benchmarks/stream.lua (post.lua for the constant);
  (2) MQTT ingestion: ``--mqtt-rows`` KubeEdge device-data messages (one row each, ``--devices`` devices) published
      as fast as QoS 1 allows; rows/s until the worker has scored them all vs a bare paho subscriber (its own
      process, QoS 1, counting messages) receiving the same messages on the same broker, one after the other;
  (3) publish → alarm latency: rows at a fixed rate (``--rates``, rows/s over all devices) whose pattern (3 spike
      rows, then normal ones) opens and clears an alarm every ``CYCLE`` rows per device; latency is from the
      publication of the row that opened or cleared an alarm (its timestamp) to the event's arrival on the alarm
      topic at a subscriber (through the worker's outbox: written to disk, published with QoS 1).

Everything stays on 127.0.0.1.

    python -m benchmarks.streams                                     # BENCHMARKS.md's figures (~3 min)
    python -m benchmarks.streams --duration 1 --repeat 1 --mqtt-rows 200 --rates 50 --latency-seconds 2 \
        --connections 2                                              # the smoke test

Figures are medians over ``--repeat`` rounds (latency: one run per rate).
"""

from __future__ import annotations

import argparse
import getpass
import itertools
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

from benchmarks.common import (
    LOOPBACK,
    REPO,
    Federation,
    Process,
    Profile,
    base_env,
    emit_json,
    free_port,
    get_json,
    median,
    print_header,
    wait_until,
    workdir,
)
from benchmarks.detect import JSON, drive, json_body, loadgen_kind, measure, summarise, verdict

TARGETS = {"stream_row_vs_constant": 0.60, "mqtt_worker_vs_bare": 0.60}
TOPIC = "$ke/events/device/{device}/data/update"
BARE_TOPIC = "bench/bare/{device}/data/update"  # the same messages where the worker does not listen
ALARMS = "fedad/{worker}/alarms"
SPIKE_ROWS, CYCLE = 3, 50  # per device: 3 spike rows open an alarm, 47 normal ones let the window clear and close it
BASELINE_ROWS = 100  # a device's first rows: its scaling reference (40 gave a shaky one: normal rows kept flagging)


# -- the broker --------------------------------------------------------------------------------------------------------
class Broker:
    """Debian's mosquitto on 127.0.0.1:<free port>, anonymous, no persistence (a benchmark's broker)."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.config = folder / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} {LOOPBACK}\nallow_anonymous true\nuser {getpass.getuser()}\n"
                               "max_queued_messages 1000000\nmax_inflight_messages 1000\n")
        self.log = folder / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if binary is None:
            raise SystemExit("mosquitto not found: apt-get install mosquitto")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT)

        def accepts():
            with socket.socket() as s:
                return s.connect_ex((LOOPBACK, self.port)) == 0
        wait_until(accepts, 10, f"mosquitto on port {self.port}", interval=0.05)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


_CLIENTS = itertools.count()  # a client id of its own for every connection: a reused id takes over a session


def client(port: int, name: str):
    import paho.mqtt.client as paho

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"{name}-{os.getpid()}-{next(_CLIENTS)}")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect(LOOPBACK, port, keepalive=30)
    c.loop_start()
    return c


def message(features: list[str], row: np.ndarray, stamp_ms: int) -> bytes:
    from services.replay_mqtt import kubeedge_message

    return kubeedge_message(features, row, stamp_ms)


class Clock:
    """Epoch ms, strictly increasing per device: a device's rows must not share a time (they would be one row).
    Per device, so that a burst of many devices' rows does not run ahead of the wall clock."""

    def __init__(self):
        self.last: dict[str, int] = {}

    def __call__(self, device: str) -> int:
        stamp = self.last[device] = max(int(time.time() * 1000), self.last.get(device, 0) + 1)
        return stamp


# -- (1) HTTP, one row per request -------------------------------------------------------------------------------------
def http_streams(kind: str, url: str, constant_url: str, worker_pid: int, constant_pid: int, baseline: np.ndarray,
                 rows: np.ndarray, streams: int, wd: Path, args) -> dict:
    with httpx.Client(timeout=30) as http:
        for s in range(streams):  # each stream's reference first (not timed)
            r = http.post(url, content=orjson.dumps({"stream": f"bench-{s}", "baseline": baseline.tolist(),
                                                     "samples": [rows[0].tolist()]}), headers={"Content-Type": JSON})
            if r.status_code != 200 or r.json().get("stream") != f"bench-{s}":
                raise RuntimeError(f"/detect with a stream answered {r.status_code}: {r.text[:300]}")
    bodies = wd / "stream-rows.jsonl"
    with open(bodies, "wb") as f:
        for i in range(streams * len(rows)):  # the streams in turn, each through the rows in order
            row = rows[i // streams]
            f.write(orjson.dumps({"stream": f"bench-{i % streams}", "samples": [[float(str(v)) for v in row]]}))
            f.write(b"\n")
    single = wd / "row1.json"
    single.write_bytes(json_body(rows[:1]))
    runs: dict[str, list[dict]] = {"constant": [], "stream 1 row": []}
    for i in range(args.repeat):
        runs["constant"].append(drive(kind, f"{constant_url}/detect", single, JSON, args.connections, args.duration,
                                      constant_pid))
        runs["stream 1 row"].append(drive_stream(kind, url, bodies, single, args.connections, args.duration,
                                                 worker_pid))
        print(f"# HTTP round {i + 1}/{args.repeat} done; load average {os.getloadavg()[0]:.2f}", flush=True)
    return {name: {**summarise(r), "connections": args.connections} for name, r in runs.items()}


def drive_stream(kind: str, url: str, bodies: Path, single: Path, connections: int, duration: int, pid: int) -> dict:
    """wrk with stream.lua (rows in turn); the Python load generator posts one stream row over and over."""
    if kind != "wrk":
        body = single.with_name("stream-row1.json")
        body.write_bytes(bodies.read_bytes().split(b"\n", 1)[0])
        return drive(kind, url, body, JSON, connections, duration, pid)
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s",
            str(REPO / "benchmarks" / "stream.lua"), url]
    return measure(argv, base_env(FEDAD_WRK_BODIES=str(bodies)), pid, duration)


# -- (2) MQTT rows/s: the worker vs a bare subscriber ------------------------------------------------------------------
def bare_subscriber(port: int, topic: str, count: int, timeout: float) -> None:
    """A separate process: subscribe with QoS 1, count messages; print first/last arrival times as JSON."""
    got = {"n": 0, "first": None, "last": None}
    done = threading.Event()

    def on_message(c, u, m):
        now = time.time()
        got["n"] += 1
        got["first"] = got["first"] or now
        got["last"] = now
        if got["n"] >= count:
            done.set()

    c = client(port, "bench-bare")
    c.on_message = on_message
    c.subscribe(topic, qos=1)
    time.sleep(0.3)  # the subscription is in place before the parent publishes
    print("READY", flush=True)
    done.wait(timeout)
    c.disconnect()
    c.loop_stop()
    print("FEDAD_RESULT " + orjson.dumps(got).decode(), flush=True)


def ingest_counts(worker_url: str) -> dict:
    doc = get_json(f"{worker_url}/v1/ingest")
    return doc["counts"] if doc else {}


# -- (3) publish -> alarm latency --------------------------------------------------------------------------------------
def alarm_latency(port: int, worker: str, worker_url: str, features: list[str], normal: np.ndarray,
                  spike: np.ndarray, rate: float, seconds: float, devices: int, clock: Clock) -> dict:
    """Rows at ``rate`` rows/s over ``devices`` devices (each already past its baseline), cycling 3 spike rows
    and CYCLE - 3 normal ones; each alarm event's latency is its arrival minus its row's publication."""
    events: queue.Queue = queue.Queue()
    sub = client(port, "bench-alarms")
    sub.on_message = lambda c, u, m: events.put((time.time(), orjson.loads(m.payload)))
    sub.subscribe(ALARMS.format(worker=worker), qos=1)
    pub = client(port, "bench-paced")
    time.sleep(0.3)
    total = int(rate * seconds)
    sent: dict[tuple[str, int], float] = {}  # (device, row timestamp) -> when it was published
    scored0 = ingest_counts(worker_url)["rows_scored"]
    start = time.monotonic()
    for i in range(total):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        d, k = i % devices, i // devices
        row = spike if k % CYCLE < SPIKE_ROWS else normal[k % len(normal)]
        device = f"lat-{d}"
        stamp = clock(device)
        pub.publish(TOPIC.format(device=device), message(features, row, stamp), qos=1)
        sent[(device, stamp)] = time.time()
    achieved = total / (time.monotonic() - start)
    # a worker slower than the rate works through its backlog: every row is waited for (and counts in the latency)
    backlog = wait_until(lambda: ingest_counts(worker_url)["rows_scored"] - scored0 >= total and
                         time.monotonic(), 300, f"the worker to score the {total} rows", interval=0.05) - start
    time.sleep(1.0)  # the last events leave the outbox
    pub.disconnect()
    pub.loop_stop()
    sub.disconnect()
    sub.loop_stop()
    latencies, kinds = [], {"opened": 0, "cleared": 0}
    while not events.empty():
        arrived, event = events.get()
        published = sent.get((event.get("stream"), round(event["time"] * 1000)))
        if published is not None:  # an event of a row of this run (its time is the row's timestamp)
            kinds[event["event"]] = kinds.get(event["event"], 0) + 1
            latencies.append((arrived - published) * 1e3)
    if not latencies:
        raise RuntimeError(f"no alarm event arrived at {rate} rows/s")
    lat = np.asarray(latencies)
    return {"rate": rate, "achieved_rows_per_s": achieved, "rows": total, "devices": devices, "events": kinds,
            "all_scored_after_s": backlog,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "max_ms": float(lat.max())}


def prime_devices(port: int, worker_url: str, features: list[str], baseline: np.ndarray, names: list[str],
                  clock: Clock) -> None:
    """Each device's baseline and one scored row, before anything is timed."""
    before = ingest_counts(worker_url).get("rows_scored", 0)
    warm = np.concatenate([baseline, baseline[-1:]])
    for name in names:
        publish_rows(port, TOPIC, features, warm, [name], clock)
    wait_until(lambda: ingest_counts(worker_url).get("rows_scored", 0) >= before + len(names), 120,
               "the latency devices' baselines")


# -- main --------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--bare-subscriber"]:
        bare_subscriber(int(argv[1]), argv[2], int(argv[3]), timeout=300)
        return {}
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", default="valve1", help="worker id from config.yaml (its SKAB partition)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--duration", type=int, default=5, help="seconds per HTTP load run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of HTTP and MQTT runs; figures are medians")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--streams", type=int, default=8, help="streams the HTTP rows go to, in turn")
    parser.add_argument("--mqtt-rows", type=int, default=5000, help="messages per MQTT throughput run")
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--rates", default="100,1000", help="rows/s of the latency runs, comma-separated")
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--workdir", help="keep state and logs here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--profile", metavar="FILE", help="after the measured runs, py-spy the worker during one more "
                        "HTTP run and one more MQTT run; collapsed stacks to FILE-http.txt, FILE-mqtt.txt, "
                        "summaries printed")
    args = parser.parse_args(argv)
    kind = loadgen_kind(args.loadgen)
    rates = [float(r) for r in args.rates.split(",")]
    machine = print_header("Streams: one row per /detect request, MQTT ingestion, publish -> alarm latency", argv)
    print(f"# load generator: {kind}; {args.duration}s per HTTP run, {args.repeat} rounds, {args.connections} "
          f"connections; {args.mqtt_rows} MQTT rows over {args.devices} devices; latency at {args.rates} rows/s "
          f"for {args.latency_seconds:g}s each")

    from services.config import load_settings
    from services.data.sources import load_node

    settings = load_settings()
    features = settings.data.features
    # one real run: its first rows are every device's baseline, its later training rows (normal) the traffic, so
    # rows score as a healthy device's would (a flagged row also pays for its explanation)
    node = load_node(settings, settings.worker(args.worker))
    run0 = node.runs[0].values[node.masks[0]].astype(np.float32)
    baseline, normal = run0[:BASELINE_ROWS], run0[BASELINE_ROWS:]
    spike = (run0.mean(axis=0) + 50 * run0.std(axis=0) + 1).astype(np.float32)
    result: dict = {"machine": machine, "args": vars(args), "loadgen": kind}
    clock = Clock()
    with workdir(args.workdir) as wd:
        broker = Broker(wd).start()
        fed = Federation(wd, [args.worker], rounds=args.rounds, epochs=args.epochs, **{
            "FEDAD__INGEST__MQTT__ENABLED": "true", "FEDAD__INGEST__MQTT__HOST": LOOPBACK,
            "FEDAD__INGEST__MQTT__PORT": str(broker.port), "FEDAD__INGEST__BASELINE_ROWS": str(BASELINE_ROWS),
            "FEDAD__INGEST__QUEUE_MESSAGES": str(max(10000, 2 * args.mqtt_rows)),
            "FEDAD__INGEST__MAX_DEVICES": "1000", "FEDAD__STREAMS__MAX_STREAMS": "1000"})
        constant = None
        try:
            started = time.time()
            fed.start()
            fed.wait_trained()
            fed.aggregator.stop()
            worker_url = fed.worker_url(args.worker)
            print(f"# trained {args.rounds} round(s) x {args.epochs} epoch(s) in {time.time() - started:.1f}s; "
                  f"serving {args.worker} at {worker_url}, broker on port {broker.port}", flush=True)
            wait_until(lambda: (get_json(f"{worker_url}/v1/ingest") or {}).get("mqtt", {}).get("connected"), 30,
                       "the worker's MQTT connection")
            port = free_port()
            constant = Process("constant", [sys.executable, "-m", "benchmarks.trivial_app", "--port", str(port)],
                               base_env(), wd, f"http://{LOOPBACK}:{port}").start().wait_healthy()
            worker_pid = fed.services[args.worker].pid

            http = http_streams(kind, f"{worker_url}/detect", constant.url, worker_pid, constant.pid, baseline,
                                normal, args.streams, wd, args)

            mqtt_rows = np.resize(normal, (args.mqtt_rows, normal.shape[1]))
            mqtt_runs = []
            for i in range(args.repeat):
                names = [f"dev{i}-{d}" for d in range(args.devices)]
                prime_devices(broker.port, worker_url, features, baseline, names, clock)
                mqtt_runs.append(mqtt_throughput_named(broker.port, worker_url, features, mqtt_rows, names, clock))
                print(f"# MQTT round {i + 1}/{args.repeat}: worker {mqtt_runs[-1]['worker_rows_per_s']:.0f} rows/s, "
                      f"bare subscriber {mqtt_runs[-1]['bare_rows_per_s']:.0f} rows/s", flush=True)

            prime_devices(broker.port, worker_url, features, baseline, [f"lat-{d}" for d in range(args.devices)],
                          clock)
            latency = [alarm_latency(broker.port, args.worker, worker_url, features, normal, spike, rate,
                                     args.latency_seconds, args.devices, clock) for rate in rates]
            ingest = get_json(f"{worker_url}/v1/ingest")
            profiles = {}
            if args.profile:  # separate runs: sampling slows the worker down, so none of the figures above has it
                base = Path(args.profile)
                prof = Profile(worker_pid, base.with_name(f"{base.stem}-http{base.suffix}"))
                try:
                    drive_stream(kind, f"{worker_url}/detect", wd / "stream-rows.jsonl", wd / "row1.json",
                                 args.connections, args.duration, worker_pid)
                finally:
                    prof.stop()
                profiles["http, stream 1 row"] = prof.top(12)
                names = [f"prof-{d}" for d in range(args.devices)]
                prime_devices(broker.port, worker_url, features, baseline, names, clock)
                prof = Profile(worker_pid, base.with_name(f"{base.stem}-mqtt{base.suffix}"))
                try:
                    mqtt_throughput_named(broker.port, worker_url, features, mqtt_rows, names, clock)
                finally:
                    prof.stop()
                profiles["mqtt ingestion"] = prof.top(12)
        finally:
            if constant:
                constant.stop()
            fed.stop()
            broker.stop()

    mqtt = {"worker_rows_per_s": median([r["worker_rows_per_s"] for r in mqtt_runs]),
            "bare_rows_per_s": median([r["bare_rows_per_s"] for r in mqtt_runs]),
            "rows": args.mqtt_rows, "devices": args.devices, "runs": mqtt_runs}
    result.update(http=http, mqtt=mqtt, latency=latency, ingest=ingest, profiles=profiles)
    report(result)
    emit_json(args.json, result)
    return result


def mqtt_throughput_named(port: int, worker_url: str, features: list[str], rows: np.ndarray, names: list[str],
                          clock: Clock) -> dict:
    """(2) with devices already primed: the bare subscriber's run, then the worker's, on the same messages."""
    n = len(rows)
    sub = subprocess.Popen([sys.executable, "-m", "benchmarks.streams", "--bare-subscriber", str(port),
                            BARE_TOPIC.replace("{device}", "+"), str(n)], cwd=REPO, env=base_env(),
                           stdout=subprocess.PIPE, text=True)
    if sub.stdout.readline().strip() != "READY":
        raise RuntimeError("the bare subscriber did not start")
    t0 = publish_rows(port, BARE_TOPIC, features, rows, names, clock)
    out, _ = sub.communicate(timeout=300)
    bare = orjson.loads(next(ln for ln in out.splitlines() if ln.startswith("FEDAD_RESULT ")).split(" ", 1)[1])
    if bare["n"] < n:
        raise RuntimeError(f"the bare subscriber got {bare['n']} of {n} messages")
    bare_s = bare["last"] - t0

    scored0 = ingest_counts(worker_url)["rows_scored"]
    t0 = publish_rows(port, TOPIC, features, rows, names, clock)
    done = wait_until(lambda: ingest_counts(worker_url)["rows_scored"] >= scored0 + n and time.time(), 600,
                      "the worker to score every row", interval=0.01)
    worker_s = done - t0
    return {"rows": n, "devices": len(names), "bare_rows_per_s": n / bare_s, "worker_rows_per_s": n / worker_s,
            "bare_s": bare_s, "worker_s": worker_s}


def publish_rows(port: int, topic: str, features: list[str], rows: np.ndarray, names: list[str], clock: Clock) -> float:
    """Every row as one message, the devices in turn, as fast as QoS 1 allows; the first publication's time."""
    c = client(port, "bench-pub")
    payloads = [(topic.format(device=names[i % len(names)]), message(features, row, clock(names[i % len(names)])))
                for i, row in enumerate(rows)]  # built before the clock starts: the publisher's JSON is not timed
    t0 = time.time()
    infos = [c.publish(t, p, qos=1) for t, p in payloads]
    for info in infos:
        info.wait_for_publish(120)
    c.disconnect()
    c.loop_stop()
    return t0


def report(result: dict) -> None:
    http, mqtt = result["http"], result["mqtt"]
    const = http["constant"]
    print()
    print("HTTP, one row per request (one uvicorn process each, load generator in its own process):")
    print(f"  {'config':<14} {'conns':>5} {'req/s':>9} {'p50 µs':>8} {'p99 µs':>8} {'srv CPU µs/req':>14} "
          f"{'vs const':>8}  req/s per round")
    for name, v in http.items():
        print(f"  {name:<14} {v['connections']:>5} {v['req_per_s']:>9.0f} {v['p50_us']:>8.0f} {v['p99_us']:>8.0f} "
              f"{v['server_cpu_us_per_req']:>14.1f} {v['req_per_s'] / const['req_per_s']:>8.2f}  {v['runs']}"
              + (f"  errors {v['errors']}" if v["errors"] else ""))
    print()
    print(f"MQTT ingestion, {mqtt['rows']} KubeEdge messages (one row each) over {mqtt['devices']} devices, QoS 1:")
    print(f"  worker (parse, assemble, score, alarms): {mqtt['worker_rows_per_s']:>9.0f} rows/s   per round "
          f"{[round(r['worker_rows_per_s']) for r in mqtt['runs']]}")
    print(f"  bare paho subscriber (count only):       {mqtt['bare_rows_per_s']:>9.0f} rows/s   per round "
          f"{[round(r['bare_rows_per_s']) for r in mqtt['runs']]}")
    print()
    print("publish -> alarm event latency (row published -> event received on the alarm topic):")
    print(f"  {'rows/s':>7} {'achieved':>9} {'devices':>7} {'opened':>6} {'cleared':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8}  all rows scored after")
    for v in result["latency"]:
        print(f"  {v['rate']:>7.0f} {v['achieved_rows_per_s']:>9.0f} {v['devices']:>7} {v['events']['opened']:>6} "
              f"{v['events']['cleared']:>7} {v['p50_ms']:>8.1f} {v['p99_ms']:>8.1f} {v['max_ms']:>8.1f}  "
              f"{v['all_scored_after_s']:.1f} s of {v['rows'] / v['rate']:.0f} s")
    for name, lines in result.get("profiles", {}).items():
        print(f"\nprofile of the worker, {name} (py-spy, separate run):")
        print("\n".join(lines))
    counts = (result.get("ingest") or {}).get("counts", {})
    if counts.get("rows_scored"):
        print(f"\nrows the worker flagged over the whole run: {counts['rows_anomalous']} of {counts['rows_scored']} "
              "(MQTT and HTTP traffic is a healthy run's rows; the latency runs add the spikes)")
    ratios = {"stream_row_vs_constant": http["stream 1 row"]["req_per_s"] / const["req_per_s"],
              "mqtt_worker_vs_bare": mqtt["worker_rows_per_s"] / mqtt["bare_rows_per_s"]}
    print("\ntargets:")
    print(f"  stream path, 1 row per request, req/s / constant handler: {ratios['stream_row_vs_constant']:.2f}  "
          f"{verdict(ratios['stream_row_vs_constant'], TARGETS['stream_row_vs_constant'])}")
    print(f"  MQTT rows/s, worker / bare subscriber: {ratios['mqtt_worker_vs_bare']:.2f}  "
          f"{verdict(ratios['mqtt_worker_vs_bare'], TARGETS['mqtt_worker_vs_bare'])}")
    result["ratios"] = ratios


if __name__ == "__main__":
    main()
