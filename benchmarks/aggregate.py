"""Aggregation of N updates as the aggregator does it, for the default model and a large one: time and peak memory.

Each update arrives as the wire body (raw float32 + its SHA-256) and goes through ``decode_weights`` (size, hash and
finiteness checks) and the strategy's ``add``, one at a time; ``result`` then gives the new global model. FedAvg
keeps a running weighted sum, so its memory must stay O(model size) whatever N is. Reference in the same run: the
non-streaming weighted mean over all N updates stacked in memory (``strategies.weighted_mean``), the O(N × model)
way, skipped where it would need more than ``--max-stack-gib``. The robust rules (median, trimmed mean) need all
updates of a round by nature; they are timed for the default model as a third figure.

Peak memory is tracemalloc's peak of what the aggregation allocated (numpy reports its buffers to tracemalloc), not
counting the pool of prepared update bodies the updates are drawn from.

    python -m benchmarks.aggregate                                      # N = 10, 100, 1000 (~1 min)
    python -m benchmarks.aggregate --n 10 --large-width 64 --large-hidden 32   # the smoke test
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from benchmarks.common import emit_json, print_header

POOL = 4  # distinct prepared update bodies the N updates cycle through
TARGET_S = 1.0  # 1000 updates of the default model


def model_size(width: int, hidden: list[int]) -> int:
    from services.model.layout import count_parameters

    return count_parameters(width, hidden)


def make_pool(n_params: int, seed: int = 0) -> list[tuple[bytes, str, np.ndarray]]:
    """Update bodies as workers send them: float32 bytes with their SHA-256, around one common model."""
    from services.protocol.codec import content_hash, encode_weights

    rng = np.random.default_rng(seed)
    base = rng.standard_normal(n_params).astype(np.float32) * 0.1
    pool = []
    for _ in range(POOL):
        w = base + rng.standard_normal(n_params).astype(np.float32) * 0.01
        body = encode_weights(w)
        pool.append((body, content_hash(body), w))
    return pool


def measure(fn, timed: bool) -> float:
    """Seconds ``fn`` takes (``timed``), or the peak MiB it allocates (tracemalloc, which slows allocation down, so
    never both in one run)."""
    if timed:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak / 2**20


def streaming(strategy_name: str, pool, n: int, n_params: int, decode: bool, timed: bool):
    """The aggregator's path for one round: each update decoded from its body (``decode``) and added on arrival."""
    from services.aggregator.strategies import make_strategy
    from services.protocol.codec import decode_weights

    global_weights = pool[0][2]

    def run():
        strategy = make_strategy(strategy_name)
        strategy.begin(global_weights)
        for i in range(n):
            body, sha, weights = pool[i % POOL]
            if decode:
                weights = decode_weights(body, n_params, sha)
            strategy.add(weights, 100 + i % 7)
        run.result = strategy.result()

    figure = measure(run, timed)
    return figure, run.result


def stacked(pool, n: int, timed: bool):
    from services.aggregator.strategies import weighted_mean

    def run():
        updates = np.stack([pool[i % POOL][2] for i in range(n)])
        run.result = weighted_mean(updates, np.array([100 + i % 7 for i in range(n)])).astype(np.float32)

    figure = measure(run, timed)
    return figure, run.result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="10,100,1000", help="numbers of updates, comma-separated")
    parser.add_argument("--large-width", type=int, default=1024, help="input width of the large autoencoder")
    parser.add_argument("--large-hidden", default="512,256,512", help="hidden layers of the large autoencoder")
    parser.add_argument("--max-stack-gib", type=float, default=1.0, help="skip the stacked reference above this")
    parser.add_argument("--repeat", type=int, default=3, help="timings are the best of this many runs")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    machine = print_header("aggregation of N updates: FedAvg streaming vs all updates stacked", argv)

    from services.config import load_settings

    settings = load_settings()
    ns = sorted({int(x) for x in args.n.split(",")})
    large_hidden = [int(x) for x in args.large_hidden.split(",")]
    models = {
        "default": (settings.input_width, settings.model.hidden),
        "large": (args.large_width, large_hidden),
    }
    rows = []
    for label, (width, hidden) in models.items():
        n_params = model_size(width, hidden)
        model_mib = n_params * 4 / 2**20
        pool = make_pool(n_params)
        print(f"# {label} model: {width} -> {hidden} -> {width}, {n_params:,} parameters, "
              f"{model_mib:.2f} MiB as float32", flush=True)
        for n in ns:
            def best(fn):  # best time of the repeats, then one run under tracemalloc for the peak
                seconds = min(fn(True)[0] for _ in range(args.repeat))
                peak, result = fn(False)
                return seconds, peak, result

            fed_s, fed_peak, fed_result = best(lambda t: streaming("fedavg", pool, n, n_params, False, t))
            arr_s, arr_peak, arr_result = best(lambda t: streaming("fedavg", pool, n, n_params, True, t))
            row = {"model": label, "n_params": n_params, "n": n, "model_mib": model_mib,
                   "fedavg_s": fed_s, "fedavg_peak_mib": fed_peak,
                   "fedavg_with_decode_s": arr_s, "fedavg_with_decode_peak_mib": arr_peak}
            need_gib = n * n_params * 20 / 2**30  # float32 stack + float64 copy + float64 products
            if need_gib <= args.max_stack_gib:
                st_s, st_peak, st_result = best(lambda t: stacked(pool, n, t))
                row.update(stacked_s=st_s, stacked_peak_mib=st_peak,
                           max_abs_diff=float(np.abs(st_result - fed_result).max()))
            else:
                row.update(stacked_s=None, stacked_peak_mib=None, stacked_skipped_gib=need_gib)
            if label == "default":
                for rule in ("median", "trimmed_mean"):
                    s, p, _ = best(lambda t: streaming(rule, pool, n, n_params, False, t))
                    row[f"{rule}_s"], row[f"{rule}_peak_mib"] = s, p
            rows.append(row)
            print(f"#   N={n} done", flush=True)

    print()
    print("FedAvg, streaming (running float64 weighted sum), best of repeats; peak = extra memory while aggregating")
    print(f"  {'model':<8} {'params':>10} {'N':>5} {'add+result':>11} {'per update':>11} {'peak MiB':>9} "
          f"{'x model':>8} {'decode+add':>11} {'per update':>11} {'peak MiB':>9} | {'stacked':>9} {'peak MiB':>9} "
          f"{'max|diff|':>9}")
    for r in rows:
        if r["stacked_s"] is not None:
            stacked_txt = f"{r['stacked_s'] * 1e3:>7.1f}ms {r['stacked_peak_mib']:>9.1f} {r['max_abs_diff']:>9.1e}"
        else:
            needs = f"(needs {r['stacked_skipped_gib']:.1f} GiB)"
            stacked_txt = f"{'skipped':>9} {needs:>19}"
        print(f"  {r['model']:<8} {r['n_params']:>10,} {r['n']:>5} {r['fedavg_s'] * 1e3:>9.1f}ms "
              f"{r['fedavg_s'] / r['n'] * 1e6:>9.1f}µs {r['fedavg_peak_mib']:>9.2f} "
              f"{r['fedavg_peak_mib'] / r['model_mib']:>8.1f} {r['fedavg_with_decode_s'] * 1e3:>9.1f}ms "
              f"{r['fedavg_with_decode_s'] / r['n'] * 1e6:>9.1f}µs {r['fedavg_with_decode_peak_mib']:>9.2f} | "
              + stacked_txt)
    robust = [r for r in rows if "median_s" in r]
    if robust:
        print("\nrobust rules, default model (they keep every update of the round by design):")
        for r in robust:
            print(f"  N={r['n']:>5}: median {r['median_s'] * 1e3:.1f} ms, peak {r['median_peak_mib']:.2f} MiB; "
                  f"trimmed mean {r['trimmed_mean_s'] * 1e3:.1f} ms, peak {r['trimmed_mean_peak_mib']:.2f} MiB")

    print("\ntargets:")
    default_1000 = [r for r in rows if r["model"] == "default" and r["n"] == 1000]
    if default_1000:
        r = default_1000[0]
        print(f"  1000 updates of the default model, decode + FedAvg: {r['fedavg_with_decode_s']:.3f} s "
              f"{'met' if r['fedavg_with_decode_s'] < TARGET_S else 'NOT met'} (target < {TARGET_S:g} s)")
    for label in models:
        peaks = [r["fedavg_with_decode_peak_mib"] / r["model_mib"] for r in rows if r["model"] == label]
        flat = max(peaks) <= 1.25 * min(peaks) + 0.5  # the same few model-sized buffers for every N
        print(f"  {label}: decode + FedAvg peak memory {min(peaks):.1f}-{max(peaks):.1f} x one float32 model for "
              f"N = {ns[0]}..{ns[-1]}: {'O(model size), not O(N x model): met' if flat else 'grows with N: NOT met'}")
    result = {"machine": machine, "args": vars(args), "rows": rows}
    emit_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
