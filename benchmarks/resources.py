"""Edge sizing: what one worker needs. RSS idle (before a model, and with one), while training, while serving
/detect; training time per local epoch; fp32 / int8 ONNX model sizes; bytes on the wire per round.

A real aggregator and one real worker on loopback; the worker reaches the aggregator through a byte-counting TCP
relay in this process, so the traffic figures are what crossed the socket (HTTP headers included). RSS is sampled
from /proc every 50 ms and tagged with the worker's phase from its /v1/status. The serving load is wrk (or
benchmarks/loadgen.py) on batch-1 and batch-256 JSON bodies.

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

from benchmarks.common import (LOOPBACK, Federation, cpu_seconds, emit_json, free_port, get_json, peak_rss_mib,
                               print_header, rss_mib, workdir)
from benchmarks.detect import JSON, drive, held_out_rows, json_body, loadgen_kind

TRAINED = re.compile(r"round (\d+): trained (\d+) epochs on (\d+) windows in ([0-9.]+)s")


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

    def start(self) -> "CountingRelay":
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

    def start(self) -> "Sampler":
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

    from services.data.scaling import FeatureStats
    from services.data.sources import load_node
    from services.model.detector import AnomalyDetector, DetectorSpec
    from services.protocol.messages import TrainingPlan

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

            def follow():  # the worker's own phase, while the federation runs
                while phase["now"] not in ("done", "serving"):
                    status = get_json(f"{fed.worker_url(args.worker)}/v1/status", timeout=1)
                    if status:
                        phase["now"] = "training" if status["phase"] == "training" else (
                            "done" if status["phase"] == "done" else "federating")
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
    print(f"  RSS peak while training             {result['rss_training_peak_mib'] or float('nan'):8.0f} MiB "
          f"(whole federation incl. export/quantise: {result['rss_federating_peak_mib'] or float('nan'):.0f} MiB)")
    print(f"  RSS idle, serving its model         {result['rss_idle_with_model_mib']:8.0f} MiB")
    print(f"  RSS peak under /detect load         {result['rss_serving_peak_mib'] or float('nan'):8.0f} MiB "
          f"(process lifetime peak {result['rss_lifetime_peak_mib']:.0f} MiB)")
    if per_epoch:
        windows = trained[0][2]
        print(f"  training time per local epoch       {result['seconds_per_epoch']:8.3f} s wall in the worker ({windows} windows; "
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
    emit_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
