"""Round overhead of the real aggregator with many light clients: real HTTP on loopback, no training.

The aggregator runs as its own process (``python -m services.aggregator``) with a generated config of N workers
(``min_workers`` = ``quorum`` = N, the default model). N clients join once; then, for each measured round, every
client posts a prepared update (raw float32 body, SHA-256 and sample-count headers, each client on its own
keep-alive connection, all at once) and an observer long-polls ``GET /v1/model?after_round=r-1``.

  round overhead = from the moment the clients start sending round r's updates to the moment the observer receives
                   global model r (uploads received, checked and persisted, aggregated, the round persisted, the
                   model published)

The clients are plain asyncio streams with hand-written HTTP/1.1 (a few µs a request), so the figure is the
aggregator's, not a Python HTTP client's. Reference in the same run: the same N submits per round on the
``Federation`` object in this process, with its store on the same disk (no HTTP); the difference is what HTTP and
the ASGI stack add.

    python -m benchmarks.round                           # N = 10, 100, 300; 5 rounds each (~1 min)
    python -m benchmarks.round --clients 4 --rounds 2    # the smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import yaml

from benchmarks.common import (
    LOOPBACK,
    REPO,
    Connection,
    Process,
    Profile,
    base_env,
    cpu_seconds,
    emit_json,
    free_port,
    median,
    print_header,
    rss_mib,
    workdir,
)

TARGET_S = 0.5  # median round overhead with 100 clients


def write_config(path: Path, n: int, rounds: int, port: int, state_dir: Path) -> Path:
    """config.yaml with N generated workers (ids c0000…, tokens of their own) and the federation waiting for all."""
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["federation"].update(rounds=rounds, min_workers=n, quorum=n, round_deadline_s=600)
    raw["aggregator"].update(host=LOOPBACK, port=port, url=f"http://{LOOPBACK}:{port}", state_dir=str(state_dir))
    raw["tls"] = {"enabled": False}
    raw["workers"] = [{"id": f"c{i:04d}", "partition": ["valve1"], "host": LOOPBACK, "port": 1,
                       "state_dir": str(state_dir.parent / f"c{i:04d}"), "token": f"bench-token-c{i:04d}"}
                      for i in range(n)]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def auth(worker_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer bench-token-{worker_id}"}


def prepared_updates(n: int, n_params: int, seed: int = 0) -> list[tuple[bytes, str]]:
    from services.protocol.codec import content_hash, encode_weights

    rng = np.random.default_rng(seed)
    base = rng.standard_normal(n_params).astype(np.float32) * 0.1
    out = []
    for _ in range(n):
        body = encode_weights(base + rng.standard_normal(n_params).astype(np.float32) * 0.01)
        out.append((body, content_hash(body)))
    return out


def join_request(settings, seed: int) -> dict:
    from services.model.layout import spec_hash
    from services.protocol.scaling import FeatureStats

    rows = np.random.default_rng(seed).standard_normal((50, len(settings.data.features)))
    stats = FeatureStats.from_rows(rows)
    return {"spec_hash": spec_hash(settings.input_width, settings.model.hidden), "sample_count": 400,
            "stats": stats.model_dump()}


async def http_rounds(port: int, settings, ids: list[str], updates, rounds: int, before_rounds=None) -> list[dict]:
    conns = [await Connection(port).open() for _ in ids]
    observer = await Connection(port).open()
    try:
        for i, (worker_id, conn) in enumerate(zip(ids, conns, strict=True)):  # joins: set-up, not timed
            status, _, text = await conn.request("POST", f"/v1/workers/{worker_id}/join",
                                                 {**auth(worker_id), "Content-Type": "application/json"},
                                                 orjson.dumps(join_request(settings, i)))
            if status != 200:
                raise RuntimeError(f"join of {worker_id} answered {status}: {text[:300]!r}")
        for c in conns:  # fresh connections: the joins took a while and idle ones may have been closed
            c.close()
        conns = [await Connection(port).open() for _ in ids]
        if before_rounds:
            before_rounds()
        measured = []
        for r in range(1, rounds + 1):
            poll = asyncio.create_task(observer.request("GET", f"/v1/model?after_round={r - 1}&wait=60",
                                                        auth(ids[0])))
            await asyncio.sleep(0.05)  # the long-poll is parked before the first upload
            acks: list[float] = []

            async def push(k: int) -> int:
                body, sha = updates[k]
                status, _, text = await conns[k].request(
                    "POST", f"/v1/rounds/{r}/updates",
                    {**auth(ids[k]), "Content-Type": "application/octet-stream", "X-Sample-Count": "400",
                     "X-Train-Loss": "0.01", "X-Content-SHA256": sha}, body)
                acks.append(time.perf_counter())
                if status != 200:
                    raise RuntimeError(f"update of {ids[k]} for round {r} answered {status}: {text[:300]!r}")
                return status

            started = time.perf_counter()
            await asyncio.gather(*(push(k) for k in range(len(ids))))
            status, headers, _ = await poll
            published = time.perf_counter()
            if status != 200 or int(headers["x-model-round"]) != r:
                raise RuntimeError(f"observer got {status} round {headers.get('x-model-round')} for round {r}")
            measured.append({"round": r, "overhead_s": published - started, "last_ack_s": max(acks) - started,
                             "first_ack_s": min(acks) - started})
        return measured
    finally:
        for c in (*conns, observer):
            c.close()


def in_process_rounds(config: Path, state_dir: Path, ids: list[str], updates, rounds: int) -> list[float]:
    """The same submits on the Federation object, its store on the same disk: aggregator logic + persistence."""
    from services.aggregator.rounds import Federation
    from services.aggregator.store import AggregatorStore
    from services.config import load_settings
    from services.protocol.messages import JoinRequest

    settings = load_settings(config, environ={})
    settings.aggregator.state_dir = state_dir
    fed = Federation(settings, AggregatorStore(state_dir))
    for i, worker_id in enumerate(ids):
        fed.join(worker_id, JoinRequest.model_validate(join_request(settings, i)))
    times = []
    for r in range(1, rounds + 1):
        started = time.perf_counter()
        for k, worker_id in enumerate(ids):
            body, sha = updates[k]
            fed.submit(worker_id, r, body, 400, 0.01, sha)
        if fed.rounds_done != r:
            raise RuntimeError(f"in-process round {r} did not close")
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="10,100,300", help="numbers of clients, comma-separated")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per client count")
    parser.add_argument("--workdir", help="keep state and logs here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--profile", metavar="FILE", help="py-spy the aggregator during the largest N's rounds; "
                                                         "collapsed stacks to FILE, summary printed")
    args = parser.parse_args(argv)
    machine = print_header("round overhead: N light clients posting prepared updates to the real aggregator", argv)

    from services.config import load_settings
    from services.model.layout import count_parameters

    rows = []
    profile = None
    with workdir(args.workdir) as wd:
        counts = sorted({int(x) for x in args.clients.split(",")})
        for n in counts:
            port = free_port()
            config = write_config(wd / f"config-{n}.yaml", n, args.rounds, port, wd / f"agg-{n}" / "aggregator")
            settings = load_settings(config, environ={})
            n_params = count_parameters(settings.input_width, settings.model.hidden)
            ids = [w.id for w in settings.workers]
            updates = prepared_updates(n, n_params)
            env = base_env(FEDAD_CONFIG=str(config))
            agg = Process(f"aggregator-{n}", [sys.executable, "-m", "services.aggregator"], env, wd,
                          f"http://{LOOPBACK}:{port}").start()
            try:
                agg.wait_healthy()
                cpu = {}

                def before_rounds():  # joins are set-up: CPU and profile cover the measured rounds only
                    nonlocal profile
                    cpu["before"] = cpu_seconds(agg.pid)
                    if args.profile and n == counts[-1]:
                        profile = Profile(agg.pid, Path(args.profile))

                measured = asyncio.run(http_rounds(port, settings, ids, updates, args.rounds, before_rounds))
                cpu_total = cpu_seconds(agg.pid) - cpu["before"]
                rss = rss_mib(agg.pid)
            finally:
                if profile:
                    profile.stop()
                agg.stop()
            local = in_process_rounds(config, wd / f"local-{n}" / "aggregator", ids, updates, args.rounds)
            overheads = [m["overhead_s"] for m in measured]
            row = {"clients": n, "n_params": n_params, "rounds": measured, "overhead_median_s": median(overheads),
                   "overhead_min_s": min(overheads), "overhead_max_s": max(overheads),
                   "last_ack_median_s": median([m["last_ack_s"] for m in measured]),
                   "in_process_median_s": median(local), "aggregator_rss_mib": rss,
                   "aggregator_cpu_s_per_round": cpu_total / args.rounds}
            rows.append(row)
            print(f"# N={n}: rounds {[round(x, 3) for x in overheads]} s", flush=True)

    print()
    print(f"round overhead (open -> all {rows[0]['n_params']}-parameter updates in -> model published), "
          f"{args.rounds} rounds each:")
    print(f"  {'clients':>7} {'median s':>9} {'min s':>7} {'max s':>7} {'ms/update':>9} {'last ack s':>10} "
          f"{'in-process s':>12} {'HTTP share':>10} {'agg CPU s':>9} {'agg RSS MiB':>11}")
    for r in rows:
        share = 1 - r["in_process_median_s"] / r["overhead_median_s"] if r["overhead_median_s"] else 0
        print(f"  {r['clients']:>7} {r['overhead_median_s']:>9.3f} {r['overhead_min_s']:>7.3f} "
              f"{r['overhead_max_s']:>7.3f} {r['overhead_median_s'] / r['clients'] * 1e3:>9.2f} "
              f"{r['last_ack_median_s']:>10.3f} {r['in_process_median_s']:>12.3f} {share:>10.0%} "
              f"{r['aggregator_cpu_s_per_round']:>9.3f} {r['aggregator_rss_mib']:>11.0f}")
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        growth = (last["overhead_median_s"] / first["overhead_median_s"]) / (last["clients"] / first["clients"])
        shape = "linear" if 0.5 < growth < 1.5 else "sub-linear" if growth <= 0.5 else "super-linear"
        print(f"  growth {first['clients']} -> {last['clients']} clients: "
              f"x{last['overhead_median_s'] / first['overhead_median_s']:.1f} "
              f"for x{last['clients'] / first['clients']:.0f} clients ({shape})")
    if profile:
        print(f"\nprofile of the aggregator, {counts[-1]} clients ({args.profile}):")
        print("\n".join(profile.top()))
    print("\ntargets:")
    hundred = [r for r in rows if r["clients"] == 100]
    if hundred:
        m = hundred[0]["overhead_median_s"]
        print(f"  100 clients, median round overhead {m:.3f} s: {'met' if m < TARGET_S else 'NOT met'} "
              f"(target < {TARGET_S} s)")
    result = {"machine": machine, "args": vars(args), "rows": rows}
    emit_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
