"""Edge sizing: what one worker needs. RSS of the serving process idle (before a model, and with one), while the
federation runs and while serving /detect; peak RSS, wall and CPU time of each round's training process; training
time per local epoch; fp32 / int8 ONNX model sizes; bytes on the wire per round; the same for a 115-feature model
(the width of network-traffic IoT data sets such as N-BaIoT); image sizes; and the published comparison.

A real aggregator and one real worker on loopback; the worker reaches the aggregator through a byte-counting TCP
relay in this process, so the traffic figures are what crossed the socket (HTTP headers included). RSS is sampled
from /proc every 50 ms and tagged with the worker's phase from its /v1/status. The worker trains in a child process
per round (services/worker/trainer.py): the serving process never imports torch, and the training process's peak
(wait4's ru_maxrss) and times come from the worker's /v1/status. The serving load is wrk (or benchmarks/loadgen.py)
on batch-1 and batch-256 JSON bodies.

The 115-feature model (``--wide-features``, 0 to skip) has no public data set in this repository: its rows are
standard-normal (memory and time do not depend on the values). Its training round runs in the worker's training
process (the same Trainer, ``--wide-rows`` rows, 3 epochs); its serving footprint is a separate process that imports
what the worker imports, calibrates the model without torch (graph + int8) and scores 4096-row batches.

    python -m benchmarks.resources                           # 3 rounds of the configured local epochs (~1 min)
    python -m benchmarks.resources --worker valve2 --rounds 1 --epochs 1 --serve-seconds 1 --idle-seconds 0.5 \
        --epoch-repeat 1                                     # the smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import re
import threading
import time

from benchmarks.common import (
    AFTER_CAMPAIGN,
    LOOPBACK,
    Federation,
    cpu_seconds,
    emit_json,
    free_port,
    get_json,
    peak_rss_mib,
    print_header,
    rss_mib,
    workdir,
)
from benchmarks.detect import JSON, drive, held_out_rows, json_body, loadgen_kind

TRAINED = re.compile(r"round (\d+): trained (\d+) epochs on (\d+) windows in ([0-9.]+)s")
PUBLISHED_TRAINING_GB = 0.7  # the published comparison: federated edge training, mean memory (README: Results)
GOALS_MIB = {"serving": 100, "training": 300}
WIDE_HIDDEN = (86, 58, 38, 29, 38, 58, 86)  # 75 / 50 / 33 / 25 % of 115, as N-BaIoT's deep autoencoder
SERVE_WIDE = """
import sys, time, tempfile
from pathlib import Path
import numpy as np
import services.worker.app  # what the serving process imports
from services.config import ThresholdSettings
from services.data.windows import Preprocessing
from services.model.detector import AnomalyDetector, DetectorSpec
features, hidden = int(sys.argv[1]), tuple(int(h) for h in sys.argv[2].split(","))
status = lambda key: int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) / 1024
prep = Preprocessing(columns=tuple(range(features)), window=1, stats=(), baseline="federation")
spec = DetectorSpec(prep, hidden, ThresholdSettings())
rng = np.random.default_rng(0)
scaler_rows = rng.standard_normal((4096, features)).astype(np.float32)
from services.protocol.scaling import FeatureStats
reference = prep.reference(None, FeatureStats.from_rows(scaler_rows).scaler())
detector = AnomalyDetector(spec).calibrate(rng.standard_normal((2000, features)).astype(np.float32), reference)
idle = status("VmRSS")
rows = rng.standard_normal((4096, features)).astype(np.float32)
t = time.process_time()
for _ in range(50):
    detector.decision_function(rows)
cpu = (time.process_time() - t) / 50
print(idle, status("VmRSS"), status("VmHWM"), cpu, "torch" in sys.modules)
"""


def wide_model(features: int, rows: int, epochs: int, folder) -> dict:
    """Training round (in the worker's training process) and serving footprint (a process like the worker's) of a
    dense model over ``features`` inputs."""
    import subprocess
    import sys

    import numpy as np

    from services.model.layout import Architecture
    from services.protocol.messages import TrainingPlan
    from services.worker.trainer import Trainer

    architecture = Architecture.dense(features, WIDE_HIDDEN)
    inputs = np.random.default_rng(0).standard_normal((rows, features)).astype(np.float32)
    plan = TrainingPlan(local_epochs=epochs, batch_size=64, learning_rate=0.005, fedprox_mu=0.0)
    trained = Trainer(folder).train(architecture, architecture.initial_weights(0), inputs, plan, seed=0)
    out = subprocess.run([sys.executable, "-c", SERVE_WIDE, str(features), ",".join(map(str, WIDE_HIDDEN))],
                         capture_output=True, text=True, timeout=600, check=True).stdout.split()
    idle, loaded, peak, cpu = map(float, out[:4])
    return {"features": features, "hidden": list(WIDE_HIDDEN), "n_params": architecture.n_params,
            "rows": rows, "epochs": epochs, "training_seconds": trained.seconds,
            "training_cpu_seconds": trained.cpu_seconds, "training_peak_rss_mib": trained.peak_rss_bytes / 2**20,
            "serving_rss_idle_mib": idle, "serving_rss_loaded_mib": loaded, "serving_rss_peak_mib": peak,
            "serving_cpu_us_per_row_batch4096": cpu / 4096 * 1e6, "serving_imports_torch": out[4] == "True",
            "update_body_bytes": architecture.n_params * 4}


def image_sizes(tags: list[str]) -> dict:
    """Sizes of the images that are present (``docker image inspect``), MB."""
    import shutil
    import subprocess

    sizes = {}
    if shutil.which("docker") is None:
        return sizes
    for tag in tags:
        out = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", tag], capture_output=True,
                             text=True, check=False)
        if out.returncode == 0:
            sizes[tag] = int(out.stdout) / 1e6
    return sizes


class CountingRelay:
    """A TCP relay on 127.0.0.1 that counts the bytes in each direction (worker → aggregator, and back)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.up = 0  # worker → aggregator
        self.down = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()

    async def _pipe(self, reader, writer, direction: str):
        try:
            while data := await reader.read(65536):
                setattr(self, direction, getattr(self, direction) + len(data))
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(self._pipe(client_reader, server_writer, "up"),
                             self._pipe(server_reader, client_writer, "down"))

    def start(self) -> CountingRelay:
        def run():
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, LOOPBACK, self.port))
            self.ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        self.ready.wait(10)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


class Sampler:
    """RSS of a process every ``interval`` s, tagged with a phase from ``phase()``."""

    def __init__(self, pid: int, phase, interval: float = 0.05):
        self.pid, self.phase, self.interval = pid, phase, interval
        self.samples: list[tuple[str, float]] = []
        self.stop_event = threading.Event()

    def start(self) -> Sampler:
        def run():
            while not self.stop_event.is_set():
                try:
                    self.samples.append((self.phase(), rss_mib(self.pid)))
                except (OSError, ValueError):
                    return
                self.stop_event.wait(self.interval)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(5)

    def peak(self, *phases: str) -> float | None:
        values = [rss for phase, rss in self.samples if phase in phases]
        return max(values) if values else None


def epoch_cost(settings, worker_id: str, repeat: int = 3) -> dict:
    """One local epoch on the worker's own training windows, in this process (torch on one thread, as the worker):
    wall and CPU seconds, best of ``repeat``. CPU time is what an otherwise idle edge box would also need."""
    import torch

    from services.data.sources import load_node
    from services.model.detector import AnomalyDetector, DetectorSpec
    from services.protocol.messages import TrainingPlan
    from services.protocol.scaling import FeatureStats

    torch.set_num_threads(1)
    data = load_node(settings, settings.worker(worker_id))
    scaler = FeatureStats.from_rows(data.train_raw()).scaler()
    inputs = data.windows(scaler, "train")
    spec, plan = DetectorSpec.from_settings(settings), TrainingPlan.from_settings(settings)
    wall, cpu = [], []
    for i in range(repeat):
        detector = AnomalyDetector(spec)
        w0, c0 = time.perf_counter(), time.process_time()
        detector.partial_fit(inputs, plan, seed=i, epochs=1)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {"windows": len(inputs), "wall_s": min(wall), "cpu_s": min(cpu)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", default="valve1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="local epochs per round (default: config.yaml)")
    parser.add_argument("--serve-seconds", type=int, default=5, help="seconds of /detect load per batch size")
    parser.add_argument("--idle-seconds", type=float, default=2.0, help="settling time before each idle RSS reading")
    parser.add_argument("--epoch-repeat", type=int, default=3, help="in-process epoch timings (best of)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--workdir", help="keep state and logs here (default: a temporary folder)")
    parser.add_argument("--wide-features", type=int, default=115, help="features of the wide model (0: skip it)")
    parser.add_argument("--wide-rows", type=int, default=20000, help="training rows of the wide model")
    parser.add_argument("--images", default="fedad-worker:latest,fedad-worker-detect:latest,fedad-aggregator:latest",
                        help="image tags whose sizes to report, when present")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    machine = print_header("edge sizing: worker memory, training time, model sizes, bytes per round", argv)

    from services.config import load_settings
    from services.model.layout import count_parameters

    settings = load_settings()
    epochs = args.epochs or settings.model.local_epochs
    n_params = count_parameters(settings.input_width, settings.model.hidden)
    kind = loadgen_kind(args.loadgen)
    result: dict = {"machine": machine, "args": vars(args), "n_params": n_params, "epochs": epochs}
    with workdir(args.workdir) as wd:
        fed = Federation(wd, [args.worker], rounds=args.rounds, epochs=epochs)
        relay = CountingRelay(fed.agg_port).start()
        fed.env["FEDAD__AGGREGATOR__URL"] = f"http://{LOOPBACK}:{relay.port}"
        worker = fed.services[args.worker]
        phase = {"now": "starting"}
        sampler = None
        try:
            worker.start().wait_healthy()  # no aggregator yet: the worker idles (retrying to join)
            time.sleep(args.idle_seconds)
            result["rss_idle_no_model_mib"] = rss_mib(worker.pid)

            def worker_phase():
                return phase["now"]

            sampler = Sampler(worker.pid, worker_phase).start()

            trainings: dict[int, dict] = {}

            def follow():  # the worker's own phase, while the federation runs
                while phase["now"] not in ("done", "serving"):
                    status = get_json(f"{fed.worker_url(args.worker)}/v1/status", timeout=1)
                    if status and status.get("last_training"):
                        trainings[status["last_training"]["round"]] = status["last_training"]
                    if status:
                        phase["now"] = "training" if status["phase"] == "training" else (
                            "done" if status["phase"] in AFTER_CAMPAIGN else "federating")
                    time.sleep(0.05)

            threading.Thread(target=follow, daemon=True).start()
            cpu_before = cpu_seconds(worker.pid)
            started = time.time()
            fed.aggregator.start().wait_healthy()
            fed.wait_trained()
            result["federation_s"] = time.time() - started
            result["worker_cpu_s_federation"] = cpu_seconds(worker.pid) - cpu_before
            phase["now"] = "done"
            time.sleep(args.idle_seconds)
            result["rss_idle_with_model_mib"] = rss_mib(worker.pid)
            status = get_json(f"{fed.worker_url(args.worker)}/v1/status", timeout=5) or {}
            if status.get("last_training"):
                trainings[status["last_training"]["round"]] = status["last_training"]
            result["training_processes"] = [trainings[r] for r in sorted(trainings)]
            result["serving_imports_torch"] = status.get("torch_loaded")
            result["bytes_up_total"], result["bytes_down_total"] = relay.up, relay.down

            phase["now"] = "serving"
            rows = held_out_rows(settings, args.worker, 256)
            serving = {}
            for n in (1, 256):
                body = wd / f"rows{n}.json"
                body.write_bytes(json_body(rows[:n]))
                run = drive(kind, f"{fed.worker_url(args.worker)}/detect", body, JSON, 4 if n == 1 else 2,
                            args.serve_seconds, worker.pid)
                serving[n] = {"req_per_s": run["req_per_s"], "p99_us": run["latency_us"]["p99"],
                              "server_cpu_share": run["server_cpu_share"]}
            result["serving"] = serving
            sampler.stop()
            result["rss_training_peak_mib"] = sampler.peak("training")
            result["rss_federating_peak_mib"] = sampler.peak("training", "federating")
            result["rss_serving_peak_mib"] = sampler.peak("serving")
            result["rss_lifetime_peak_mib"] = peak_rss_mib(worker.pid)
        finally:
            if sampler:
                sampler.stop()
            fed.stop()
            relay.stop()
        log = worker.log_path.read_text(errors="replace")
        trained = [(int(r), int(e), int(w), float(s)) for r, e, w, s in TRAINED.findall(log)]
        state_files = {p.name: p.stat().st_size for p in (wd / args.worker).glob("model-*.onnx")}
    result["epoch_in_process"] = epoch_cost(settings, args.worker, args.epoch_repeat)
    if args.wide_features:
        with workdir(None) as wide_dir:
            result["wide"] = wide_model(args.wide_features, args.wide_rows, 3, wide_dir)
    result["images_mb"] = image_sizes([t for t in args.images.split(",") if t])
    result["training"] = [{"round": r, "epochs": e, "windows": w, "seconds": s} for r, e, w, s in trained]
    per_epoch = [s / e for _, e, _, s in trained]
    result["seconds_per_epoch"] = sorted(per_epoch)[len(per_epoch) // 2] if per_epoch else None
    result["onnx_bytes"] = {("int8" if ".int8." in k else "fp32"): v for k, v in state_files.items()}
    result["update_body_bytes"] = n_params * 4

    up_per_round = result["bytes_up_total"] / args.rounds
    down_per_round = result["bytes_down_total"] / args.rounds
    print()
    print(f"worker {args.worker}: model {settings.input_width} -> {settings.model.hidden} -> {settings.input_width}, "
          f"{n_params} parameters")
    print(f"  RSS idle, before a model            {result['rss_idle_no_model_mib']:8.0f} MiB")
    print(f"  RSS peak while a round trains       {result['rss_training_peak_mib'] or float('nan'):8.0f} MiB "
          f"(serving process; whole federation incl. graph/int8/evaluation: "
          f"{result['rss_federating_peak_mib'] or float('nan'):.0f} MiB; torch imported: "
          f"{result['serving_imports_torch']})")
    for t in result["training_processes"]:
        print(f"  training process, round {t['round']:<2}         {t['peak_rss_mib']:8.0f} MiB peak, "
              f"{t['seconds']:.1f} s wall, {t.get('cpu_seconds', float('nan')):.1f} s CPU")
    print(f"  RSS idle, serving its model         {result['rss_idle_with_model_mib']:8.0f} MiB")
    print(f"  RSS peak under /detect load         {result['rss_serving_peak_mib'] or float('nan'):8.0f} MiB "
          f"(process lifetime peak {result['rss_lifetime_peak_mib']:.0f} MiB)")
    if per_epoch:
        windows = trained[0][2]
        print(f"  training time per local epoch       {result['seconds_per_epoch']:8.3f} s wall in the worker "
              f"({windows} windows; "
              f"rounds: {', '.join(f'{s:.1f}s/{e} ep' for _, e, _, s in trained)})")
    e = result["epoch_in_process"]
    print(f"  one local epoch, in-process          {e['cpu_s']:8.3f} s CPU, {e['wall_s']:.3f} s wall "
          f"({e['windows']} windows, torch on one thread, best of {args.epoch_repeat})")
    print(f"  worker CPU for the whole federation {result['worker_cpu_s_federation']:8.1f} s over "
          f"{result['federation_s']:.1f} s wall ({args.rounds} rounds x {epochs} epochs, export, int8, evaluation)")
    for name, size in sorted(result["onnx_bytes"].items()):
        print(f"  ONNX model {name:<5}                   {size:8d} bytes")
    print(f"  update body (float32)               {result['update_body_bytes']:8d} bytes per round "
          f"(float16 would be {n_params * 2} bytes)")
    print(f"  bytes sent per round per worker     {up_per_round:8.0f} (received {down_per_round:.0f}), "
          f"HTTP included; whole run up {result['bytes_up_total']} / down {result['bytes_down_total']} bytes "
          f"over {args.rounds} rounds incl. join and long-polls")
    for n, s in result["serving"].items():
        print(f"  serving batch {n:<4}: {s['req_per_s']:7.0f} req/s, p99 {s['p99_us'] / 1e3:6.1f} ms, worker CPU "
              f"{s['server_cpu_share']:.0%} of one core")
    result["bytes_up_per_round"], result["bytes_down_per_round"] = up_per_round, down_per_round
    wide = result.get("wide")
    if wide:
        print(f"\n{wide['features']}-feature model {wide['features']} -> {wide['hidden']} -> {wide['features']}, "
              f"{wide['n_params']} parameters ({wide['rows']} standard-normal rows, {wide['epochs']} epochs per round)")
        print(f"  training process per round          {wide['training_peak_rss_mib']:8.0f} MiB peak, "
              f"{wide['training_seconds']:.1f} s wall, {wide['training_cpu_seconds']:.1f} s CPU")
        print(f"  serving process (graph + int8)      {wide['serving_rss_idle_mib']:8.0f} MiB idle, "
              f"{wide['serving_rss_loaded_mib']:.0f} MiB after 4096-row batches "
              f"(peak {wide['serving_rss_peak_mib']:.0f}), {wide['serving_cpu_us_per_row_batch4096']:.2f} µs CPU "
              f"per row; torch imported: "
              f"{wide['serving_imports_torch']}")
        print(f"  update body (float32)               {wide['update_body_bytes']:8d} bytes per round")
    for tag, size in result["images_mb"].items():
        print(f"  image {tag:<36} {size:6.0f} MB")
    serving = max(result["rss_idle_with_model_mib"], result["rss_serving_peak_mib"] or 0)
    training = max((t["peak_rss_mib"] for t in result["training_processes"]), default=float("nan"))
    print(f"\nagainst the published comparison (federated edge training, mean memory ~{PUBLISHED_TRAINING_GB} GB):")
    print(f"  {'':34} {'this worker':>12} {'goal':>8} {'published':>10}")
    print(f"  {'serving process, idle/under load':34} {serving:9.0f} MiB {GOALS_MIB['serving']:5d} MiB {'-':>10}")
    print(f"  {'training process peak (default)':34} {training:9.0f} MiB {GOALS_MIB['training']:5d} MiB "
          f"{PUBLISHED_TRAINING_GB * 1000:7.0f} MB")
    if wide:
        label = f"training process peak ({wide['features']} features)"
        print(f"  {label:34} "
              f"{wide['training_peak_rss_mib']:9.0f} MiB {'-':>8} {PUBLISHED_TRAINING_GB * 1000:7.0f} MB")
    result["published_training_gb"] = PUBLISHED_TRAINING_GB
    emit_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
