"""A fleet on loopback: N simulated nodes against the real aggregator, from enrollment to site aggregators.

Every node is a light client (real HTTP/1.1 over keep-alive loopback connections shared by ``--connections``
sockets; prepared float32 updates, no training), so the figures are the aggregator's. Phases, each on a fresh
aggregator process (``python -m services.aggregator``) with a generated config:

1. **enroll**: N nodes enroll with the fleet's bootstrap token (each its own token, sent as SHA-256), then join the
   run; seconds per 1,000 first and last (join cost must not grow with the fleet), aggregator RSS with N enrolled. A
   flood of bad enrollment credentials: every answer a 4xx, nothing stored. kill -9 of the aggregator in the middle
   of an enrollment storm: after its restart every acknowledged enrollment is on record.
2. **sampled rounds** (``clients_per_round``, sync): every node asks ``GET /v1/round`` whether it is sampled; the
   sampled ones post their update at once; time from the first upload to the published model (an observer
   long-polls ``GET /v1/model``).
3. **async** (``mode: async``, FedBuff): a share of the nodes is offline, a share are 10× stragglers, the rest train
   for ``--train-s`` (± 50 %) between a pull of the current model and their upload, all the time; versions published
   per second against the live nodes' update rate / buffer_size, the server's publish time per version, staleness,
   refusals. kill -9 of the aggregator mid-stream: every acknowledged update is in a published version or the buffer.
4. **sites**: a root and 3 site aggregators (``role: site``) with N/3 nodes each, sampled rounds at every site, each
   upstream round must close with all 3 sites; kill -9 of one site mid-round: its acknowledged updates reach the
   round all the same.

Same-run references (no HTTP, this process): the same enrollments and joins on the enrolled-node registry and the
members journal, the same sampled round's submits and the same async stream's submits on the ``Federation`` object,
each with its state on the same disk and the same concurrency (asyncio, so group commit applies alike).

    nice -n 10 python -m benchmarks.fleet                   # 10,000 nodes (~10 min on 2 cores)
    python -m benchmarks.fleet --nodes 300 --async-s 8 --site-nodes 60 --flood 50    # the smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import random
import signal
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
    Unreachable,
    base_env,
    cpu_seconds,
    emit_json,
    free_port,
    get_json,
    median,
    print_header,
    rss_mib,
    workdir,
)

ENROLL_TOKEN = "bench-fleet-enrollment-token"
ADMIN = "bench-fleet-admin-token"
TARGETS = {"enroll_10k_s": 60.0, "rss_10k_mib": 300.0, "sync_round_s": 1.0, "publish_s": 0.3}


# -- light HTTP --------------------------------------------------------------------------------------------------------
class Pool:
    """``size`` connections shared by any number of simulated nodes."""

    def __init__(self, port: int, size: int):
        self.free: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(size):
            self.free.put_nowait(Connection(port))
        self.connections = size

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"",
                      timeout: float = 120) -> tuple[int, dict, bytes]:
        connection = await self.free.get()
        try:
            return await connection.request(method, path, headers, body, timeout)
        finally:
            self.free.put_nowait(connection)

    async def retrying(self, method: str, path: str, headers: dict[str, str], body: bytes = b"",
                       give_up_s: float = 120) -> tuple[int, dict, bytes]:
        """Until the server answers (it may be restarting after kill -9); 5xx answers are retried too."""
        deadline = time.monotonic() + give_up_s
        delay = 0.2
        while True:
            try:
                status, headers_, body_ = await self.request(method, path, headers, body)
                if status < 500:
                    return status, headers_, body_
            except Unreachable:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method} {path}: no answer for {give_up_s:.0f}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def close(self) -> None:
        while not self.free.empty():
            self.free.get_nowait().close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def json_headers(token: str) -> dict[str, str]:
    return {**bearer(token), "Content-Type": "application/json"}


# -- the simulated fleet -----------------------------------------------------------------------------------------------
class Fleet:
    """N nodes: id, own token and its digest, a prepared join body and update."""

    def __init__(self, n: int, settings, prefix: str = "n", seed: int = 0):
        from services.protocol.scaling import FeatureStats

        self.ids = [f"{prefix}{i:05d}" for i in range(n)]
        self.tokens = {w: f"bench-node-token-{w}-{seed}" for w in self.ids}
        self.digests = {w: hashlib.sha256(t.encode()).hexdigest() for w, t in self.tokens.items()}
        rng = np.random.default_rng(seed)
        columns = len(settings.data.columns)
        stats = FeatureStats.from_rows(rng.standard_normal((50, columns))).model_dump()
        from services.model.layout import Architecture

        architecture = Architecture.from_settings(settings)
        self.join_body = orjson.dumps({"spec_hash": architecture.spec_hash, "sample_count": 400, "stats": stats})
        self.n_params = architecture.n_params
        base = rng.standard_normal(self.n_params).astype(np.float32) * 0.1
        self.updates = []
        for _ in range(min(n, 64)):  # a few distinct bodies, shared round-robin: bodies are not what is measured
            body = (base + rng.standard_normal(self.n_params).astype(np.float32) * 0.01).astype("<f4").tobytes()
            self.updates.append((body, hashlib.sha256(body).hexdigest()))

    def update_of(self, worker_id: str, round_no: int) -> tuple[bytes, str]:
        return self.updates[(hash(worker_id) + round_no) % len(self.updates)]


def write_config(path: Path, port: int, state_dir: Path, **federation) -> Path:
    """config.yaml for a fleet aggregator: no configured workers (they enroll), the bootstrap token, the admin
    token, and the federation keys given."""
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    role = federation.pop("role", "root")
    upstream = federation.pop("upstream", None)
    workers = federation.pop("workers", [])
    raw["federation"].update(round_deadline_s=600, **federation)
    raw["federation"]["continual"].update(min_new_rows=None, on_drift=False)
    raw["aggregator"].update(host=LOOPBACK, port=port, url=f"http://{LOOPBACK}:{port}", state_dir=str(state_dir),
                             role=role)
    if upstream:
        raw["aggregator"]["upstream"] = upstream
    raw["tls"] = {"enabled": False}
    raw["admin"] = {"token": ADMIN}
    raw["enrollment"] = {"token": ENROLL_TOKEN}
    raw["workers"] = workers
    raw["dashboard"] = {"telemetry_interval_s": 0}
    raw["logging"] = {"level": "WARNING"}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Aggregator:
    def __init__(self, name: str, wd: Path, **federation):
        from services.config import load_settings

        self.name, self.wd = name, wd
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.state_dir = wd / name / "aggregator"
        self.config = write_config(wd / f"{name}.yaml", self.port, self.state_dir, **federation)
        self.settings = load_settings(self.config, environ={})
        self.process = Process(name, [sys.executable, "-m", "services.aggregator"],
                               base_env(FEDAD_CONFIG=str(self.config)), wd, self.url)

    def start(self) -> Aggregator:
        self.process.start().wait_healthy(120)
        return self

    def kill(self) -> None:
        self.process.kill(signal.SIGKILL)

    def restart(self) -> float:
        started = time.perf_counter()
        self.process.start().wait_healthy(120)
        return time.perf_counter() - started

    def stop(self) -> None:
        self.process.stop()

    @property
    def pid(self) -> int:
        return self.process.pid

    def status(self) -> dict:
        return get_json(f"{self.url}/v1/status", timeout=30) or {}


async def gather_limited(jobs, limit: int):
    """Run coroutine factories with at most ``limit`` at a time (each simulated node takes a pool connection)."""
    queue = list(jobs)
    results = [None] * len(queue)

    async def lane(k: int):
        while True:
            try:
                i = next(counter)
            except StopIteration:
                return
            results[i] = await queue[i]()

    counter = iter(range(len(queue)))
    await asyncio.gather(*(lane(k) for k in range(limit)))
    return results


# -- 1. enrollment -----------------------------------------------------------------------------------------------------
async def enroll(pool: Pool, fleet: Fleet, ids: list[str], acked: set[str] | None = None) -> list[float]:
    """Enroll ``ids`` (each retried until answered); the time each 1,000th enrollment completed."""
    done_at: list[float] = []

    def job(worker_id: str):
        async def run():
            body = orjson.dumps({"token_sha256": fleet.digests[worker_id], "node_id": worker_id})
            status, _, text = await pool.retrying("POST", "/v1/enroll", json_headers(ENROLL_TOKEN), body)
            if status != 200:
                raise RuntimeError(f"enrollment of {worker_id} answered {status}: {text[:300]!r}")
            if acked is not None:
                acked.add(worker_id)
            done_at.append(time.perf_counter())
        return run

    await gather_limited([job(w) for w in ids], pool.connections)
    return sorted(done_at)


async def join(pool: Pool, fleet: Fleet, ids: list[str]) -> list[float]:
    done_at: list[float] = []

    def job(worker_id: str):
        async def run():
            status, _, text = await pool.retrying("POST", f"/v1/workers/{worker_id}/join",
                                                  json_headers(fleet.tokens[worker_id]), fleet.join_body)
            if status != 200:
                raise RuntimeError(f"join of {worker_id} answered {status}: {text[:300]!r}")
            done_at.append(time.perf_counter())
        return run

    await gather_limited([job(w) for w in ids], pool.connections)
    return sorted(done_at)


def per_thousand(started: float, done_at: list[float]) -> dict:
    """Seconds each 1,000 (or tenth) of the requests took, in order: flat if the cost does not grow with the fleet.
    ``first`` and ``last`` compare the second block with the second-last (the first holds the start-up, the last
    the drain of the concurrent requests)."""
    n = len(done_at)
    block = min(1000, max(1, n // 10))
    marks = [started, *done_at[block - 1::block]]
    blocks = [round(b - a, 3) for a, b in zip(marks, marks[1:])]
    inner = blocks[1:-1] if len(blocks) >= 4 else blocks
    return {"n": n, "total_s": round(done_at[-1] - started, 3), "block": block, "blocks_s": blocks,
            "first_block_s": inner[0], "last_block_s": inner[-1], "per_s": round(n / (done_at[-1] - started), 1)}


async def bad_credentials(pool: Pool, n: int) -> dict:
    """``n`` enrollments with wrong credentials of several kinds: all must be 4xx."""
    kinds = [bearer("not-the-fleet-token-" + "x" * 8), {}, bearer(""), bearer("a" * 3000),
             {"Authorization": "Basic Zm9vOmJhcg=="}]
    statuses: dict[int, int] = {}

    def job(k: int):
        async def run():
            body = orjson.dumps({"token_sha256": hashlib.sha256(f"bad{k}".encode()).hexdigest(), "node_id": f"bad{k}"})
            status, _, _ = await pool.request("POST", "/v1/enroll", {**kinds[k % len(kinds)],
                                                                      "Content-Type": "application/json"}, body)
            statuses[status] = statuses.get(status, 0) + 1
        return run

    await gather_limited([job(k) for k in range(n)], pool.connections)
    return statuses


def enrollment_phase(wd: Path, args) -> dict:
    n = args.nodes
    agg = Aggregator("enroll", wd, mode="sync", min_workers=n, quorum=1, rounds=1)
    fleet = Fleet(n, agg.settings)
    agg.start()
    out: dict = {"nodes": n, "connections": args.connections}
    try:
        async def run():
            pool = Pool(agg.port, args.connections)
            try:
                started = time.perf_counter()
                out["enroll"] = per_thousand(started, await enroll(pool, fleet, fleet.ids))
                out["rss_enrolled_mib"] = round(rss_mib(agg.pid), 1)
                log_size = (agg.state_dir / "nodes.log").stat().st_size
                statuses = await bad_credentials(pool, args.flood)
                out["bad_credentials"] = {"requests": args.flood, "statuses": statuses,
                                          "all_4xx": all(400 <= s < 500 for s in statuses),
                                          "stored_nothing": (agg.state_dir / "nodes.log").stat().st_size == log_size}
                started = time.perf_counter()
                out["join"] = per_thousand(started, await join(pool, fleet, fleet.ids))
                out["rss_joined_mib"] = round(rss_mib(agg.pid), 1)
            finally:
                pool.close()
        asyncio.run(run())
        status = agg.status()
        out["joined"] = status.get("workers_total")
        out["phase_after_joins"] = status.get("phase")
    finally:
        agg.stop()
    out["reference"] = in_process_enrollment(wd / "enroll-ref", fleet, agg.settings, args.connections)
    out["storm"] = enrollment_storm(wd, args, fleet)
    return out


def in_process_enrollment(state_dir: Path, fleet: Fleet, settings, concurrency: int) -> dict:
    """The same enrollments and joins on the registry and the federation in this process: no HTTP."""
    from services.aggregator.enrollment import NodeRegistry
    from services.aggregator.rounds import Federation
    from services.aggregator.store import AggregatorStore
    from services.protocol.messages import JoinRequest

    state_dir.mkdir(parents=True, exist_ok=True)
    settings = settings.model_copy(deep=True)
    settings.aggregator.state_dir = state_dir
    request = JoinRequest.model_validate_json(fleet.join_body)

    async def run():
        registry = NodeRegistry(state_dir)
        federation = Federation(settings, AggregatorStore(state_dir))

        async def one_enroll(w):
            _, write = registry.enroll(fleet.digests[w], w, None)
            await federation.synced(write)

        async def one_join(w):
            federation.join(w, request)
            await federation.synced()

        started = time.perf_counter()
        await gather_limited([lambda w=w: one_enroll(w) for w in fleet.ids], concurrency)
        enrolled = time.perf_counter() - started
        started = time.perf_counter()
        await gather_limited([lambda w=w: one_join(w) for w in fleet.ids], concurrency)
        return {"enroll_s": round(enrolled, 3), "join_s": round(time.perf_counter() - started, 3),
                "nodes_log_batches": registry.journal.batches, "nodes_log_records": registry.journal.records}

    return asyncio.run(run())


def enrollment_storm(wd: Path, args, fleet: Fleet) -> dict:
    """kill -9 of the aggregator while enrollments pour in; restarted, it must hold every acknowledged one."""
    n = min(args.nodes, args.storm_nodes)
    agg = Aggregator("storm", wd, mode="sync", min_workers=n, quorum=1, rounds=1)
    agg.start()
    acked: set[str] = set()
    ids = fleet.ids[:n]
    out: dict = {"nodes": n}
    try:
        async def run():
            pool = Pool(agg.port, args.connections)
            task = asyncio.ensure_future(enroll(pool, fleet, ids, acked))
            while len(acked) < n // 2:
                await asyncio.sleep(0.01)
            out["acked_at_kill"] = len(acked)
            agg.kill()
            killed = time.perf_counter()
            await asyncio.sleep(0.5)
            out["restart_s"] = round(await asyncio.to_thread(agg.restart), 2)
            await task
            out["storm_s_after_kill"] = round(time.perf_counter() - killed, 2)
            pool.close()
        asyncio.run(run())
        listed = _admin_nodes(agg)
        out["acked"] = len(acked)
        out["on_record"] = len(listed)
        out["lost"] = sorted(acked - listed)[:10]
        out["no_acknowledged_enrollment_lost"] = acked <= listed
        out["log"] = _damage_lines(agg)
    finally:
        agg.stop()
    return out


def _admin_nodes(agg: Aggregator) -> set[str]:
    import httpx

    found: set[str] = set()
    offset = 0
    while True:
        page = httpx.get(f"{agg.url}/v1/admin/nodes", params={"offset": offset, "limit": 1000},
                         headers=bearer(ADMIN), timeout=60).json()
        found |= {x["node_id"] for x in page["nodes"]}
        offset += len(page["nodes"])
        if not page["nodes"] or offset >= page["total"]:
            return found


def _damage_lines(agg: Aggregator) -> dict:
    text = agg.process.log()
    return {"damaged_lines": text.count("damaged line"), "torn_tails_cut": text.count("were cut off")}


# -- 2. sampled synchronous rounds -------------------------------------------------------------------------------------
async def announce(pool: Pool, fleet: Fleet, round_no: int) -> list[str]:
    """Every node asks whether it trains the open round; the sampled ones."""
    sampled: list[str] = []

    def job(worker_id: str):
        async def run():
            status, _, text = await pool.retrying("GET", f"/v1/round?after={round_no - 1}",
                                                  bearer(fleet.tokens[worker_id]))
            state = orjson.loads(text)
            if state["phase"] == "training" and state["open_round"] == round_no and state["sampled"] is not False:
                sampled.append(worker_id)
        return run

    await gather_limited([job(w) for w in fleet.ids], pool.connections)
    return sampled


async def push(pool: Pool, fleet: Fleet, worker_id: str, round_no: int, acked: list | None = None,
               give_up_s: float = 120) -> tuple[int, dict]:
    body, sha = fleet.update_of(worker_id, round_no)
    headers = {**bearer(fleet.tokens[worker_id]), "Content-Type": "application/octet-stream",
               "X-Sample-Count": "400", "X-Train-Loss": "0.01", "X-Content-SHA256": sha}
    status, _, text = await pool.retrying("POST", f"/v1/rounds/{round_no}/updates", headers, body, give_up_s)
    answer = orjson.loads(text) if text else {}
    if status == 200 and acked is not None:
        acked.append((worker_id, round_no, sha))
    return status, answer


async def sampled_round(pool: Pool, observer: Connection, fleet: Fleet, round_no: int, pid: int) -> dict:
    t0 = time.perf_counter()
    cpu0 = cpu_seconds(pid)
    sampled = await announce(pool, fleet, round_no)
    announced = time.perf_counter() - t0
    announce_cpu = cpu_seconds(pid) - cpu0
    poll = asyncio.ensure_future(observer.request("GET", f"/v1/model?after_round={round_no - 1}&wait=60",
                                                  bearer(fleet.tokens[fleet.ids[0]]), timeout=90))
    await asyncio.sleep(0.05)
    cpu0 = cpu_seconds(pid)
    started = time.perf_counter()
    results = await gather_limited([lambda w=w: push(pool, fleet, w, round_no) for w in sampled], pool.connections)
    status, headers, _ = await poll
    published = time.perf_counter()
    cpu = cpu_seconds(pid) - cpu0
    refused = [r for r in results if r[0] != 200]
    if status != 200 or int(headers.get("x-model-round", -1)) != round_no:
        raise RuntimeError(f"round {round_no}: the observer got {status}, model {headers.get('x-model-round')}")
    return {"round": round_no, "sampled": len(sampled), "announce_s": round(announced, 3),
            "announce_cpu_s": round(announce_cpu, 3), "upload_to_model_s": round(published - started, 3),
            "aggregator_cpu_s": round(cpu, 3), "refused": len(refused)}


def sampled_phase(wd: Path, args) -> dict:
    n, k = args.nodes, args.sample
    agg = Aggregator("sampled", wd, mode="sync", min_workers=n, quorum=1, rounds=args.rounds + 1,
                     clients_per_round=k, sample_seed=7)
    fleet = Fleet(n, agg.settings)
    agg.start()
    out: dict = {"nodes": n, "clients_per_round": k}
    try:
        async def run():
            pool = Pool(agg.port, args.connections)
            observer = Connection(agg.port)
            try:
                await enroll(pool, fleet, fleet.ids)
                await join(pool, fleet, fleet.ids)
                profile = Profile(agg.pid, Path(args.profile)) if args.profile else None
                try:
                    out["rounds"] = [await sampled_round(pool, observer, fleet, r, agg.pid)
                                     for r in range(1, args.rounds + 1)]
                finally:
                    if profile:
                        profile.stop()
                        out["profile"] = profile.top()
            finally:
                pool.close()
                observer.close()
        asyncio.run(run())
        fairness = get_json(f"{agg.url}/v1/fleet", timeout=30)["fairness"]
        out["fairness"] = fairness
        out["rss_mib"] = round(rss_mib(agg.pid), 1)
    finally:
        agg.stop()
    out["reference"] = in_process_round(wd / "sampled-ref", fleet, agg.settings, args)
    return out


async def joined_federation(state_dir: Path, fleet: Fleet, settings):
    """A Federation in this process, its state in ``state_dir`` on the same disk, with every node of ``fleet``
    joined and the joins synced: the in-process references start from it."""
    from services.aggregator.rounds import Federation
    from services.aggregator.store import AggregatorStore
    from services.protocol.messages import JoinRequest

    state_dir.mkdir(parents=True, exist_ok=True)
    settings = settings.model_copy(deep=True)
    settings.aggregator.state_dir = state_dir
    request = JoinRequest.model_validate_json(fleet.join_body)
    federation = Federation(settings, AggregatorStore(state_dir))
    for w in fleet.ids:
        federation.join(w, request)
    await federation.synced()
    return federation


async def submit_all(federation, fleet: Fleet, ids, round_no: int, connections: int) -> None:
    """Each node of ``ids`` submits its prepared update for ``round_no``, ``connections`` at a time."""
    async def one(w):
        body, sha = fleet.update_of(w, round_no)
        await federation.submit_async(w, round_no, body, 400, 0.01, sha)

    await gather_limited([lambda w=w: one(w) for w in ids], connections)


def in_process_round(state_dir: Path, fleet: Fleet, settings, args) -> dict:
    """The same sampled round's submits on the Federation object in this process (asyncio, same concurrency)."""
    async def run():
        federation = await joined_federation(state_dir, fleet, settings)
        times = []
        for r in range(1, args.rounds + 1):
            sampled = sorted(federation.sample or fleet.ids)
            started = time.perf_counter()
            await submit_all(federation, fleet, sampled, r, args.connections)
            if federation.rounds_done != r:
                raise RuntimeError(f"in-process round {r} did not close")
            times.append(time.perf_counter() - started)
        return {"upload_to_model_s": [round(t, 3) for t in times]}

    return asyncio.run(run())


# -- 3. asynchronous stream --------------------------------------------------------------------------------------------
class Stream:
    """Nodes that pull the current model, train (sleep) and send, over and over; offline ones never do."""

    def __init__(self, pool: Pool, fleet: Fleet, args, rng: random.Random):
        self.pool, self.fleet, self.args = pool, fleet, args
        ids = list(fleet.ids)
        rng.shuffle(ids)
        n_offline = int(len(ids) * args.offline)
        n_slow = int(len(ids) * args.stragglers)
        self.offline = set(ids[:n_offline])
        self.stragglers = set(ids[n_offline:n_offline + n_slow])
        self.live = [w for w in ids if w not in self.offline]
        self.train_s = {w: args.train_s * (10 if w in self.stragglers else 1) * rng.uniform(0.5, 1.5)
                        for w in self.live}
        self.acked: list[tuple[str, int, str]] = []
        self.refused: dict[str, int] = {}
        self.stop = False
        self.rng = rng

    def offered_rate(self) -> float:
        """Updates per second the live nodes would send if every one were taken."""
        return sum(1 / t for t in self.train_s.values())

    async def node(self, worker_id: str) -> None:
        token = self.fleet.tokens[worker_id]
        await asyncio.sleep(self.rng.uniform(0, self.train_s[worker_id]))  # not all in step
        while not self.stop:
            try:
                status, headers, _ = await self.pool.retrying("GET", "/v1/model", {**bearer(token),
                                                                                    "If-None-Match": "x"})
                base = int(headers.get("x-model-round", 0))
                await asyncio.sleep(self.train_s[worker_id])
                if self.stop:
                    return
                status, answer = await push(self.pool, self.fleet, worker_id, base + 1, self.acked)
            except (TimeoutError, Unreachable):
                continue
            if status != 200:
                code = answer.get("code", str(status))
                self.refused[code] = self.refused.get(code, 0) + 1


def async_phase(wd: Path, args) -> dict:
    n = args.nodes
    agg = Aggregator("async", wd, mode="async", min_workers=n, quorum=1, rounds=1_000_000,
                     buffer_size=args.buffer, max_staleness=args.max_staleness)
    fleet = Fleet(n, agg.settings)
    agg.start()
    out: dict = {"nodes": n, "buffer_size": args.buffer, "max_staleness": args.max_staleness,
                 "offline_share": args.offline, "straggler_share": args.stragglers, "train_s": args.train_s}
    windows: dict[str, list[float]] = {}
    try:
        async def versions_at() -> tuple[float, int]:
            status = await asyncio.to_thread(agg.status)
            return time.perf_counter(), status["rounds_done"]

        async def run():
            pool = Pool(agg.port, args.connections)
            try:
                await enroll(pool, fleet, fleet.ids)
                await join(pool, fleet, fleet.ids)
                stream = Stream(pool, fleet, args, random.Random(3))
                out["offered_updates_per_s"] = round(stream.offered_rate(), 1)
                tasks = [asyncio.ensure_future(stream.node(w)) for w in stream.live]
                started = time.perf_counter()
                await asyncio.sleep(args.train_s * 1.5)  # every live node is in its cycle by now
                windows["before kill"] = [*await versions_at()]
                await asyncio.sleep(max(args.async_s / 2 - args.train_s * 1.5, args.train_s / 2))
                windows["before kill"] += [*await versions_at()]
                out["publish_before_kill"] = (await asyncio.to_thread(get_json, f"{agg.url}/v1/fleet", 30) or
                                              {}).get("publish_s")
                agg.kill()
                killed = time.perf_counter()
                await asyncio.sleep(0.5)
                out["restart_s"] = round(await asyncio.to_thread(agg.restart), 2)
                out["down_s"] = round(time.perf_counter() - killed, 2)
                await asyncio.sleep(args.train_s / 2)  # the nodes that waited for it are back in step
                windows["after restart"] = [*await versions_at()]
                await asyncio.sleep(max(args.async_s / 2 - args.train_s / 2, args.train_s / 2))
                windows["after restart"] += [*await versions_at()]
                stream.stop = True
                await asyncio.sleep(2.0)  # requests in flight are answered (or not: then they were not acknowledged)
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                out["stream"] = {"seconds": round(time.perf_counter() - started, 2),
                                 "acked_updates": len(stream.acked), "refused": stream.refused,
                                 "live_nodes": len(stream.live), "stragglers": len(stream.stragglers),
                                 "offline": len(stream.offline)}
                return stream
            finally:
                pool.close()
        stream = asyncio.run(run())
        status = agg.status()
        fleet_status = get_json(f"{agg.url}/v1/fleet", timeout=30) or {}
        records = [get_json(f"{agg.url}/v1/rounds/{r}", timeout=30) for r in range(1, status["rounds_done"] + 1)]
        published = [r for r in records if r]
        expected = out["offered_updates_per_s"] / args.buffer
        out["expected_versions_per_s"] = round(expected, 3)
        out["windows"] = {name: {"seconds": round(t1 - t0, 1), "versions": v1 - v0,
                                 "versions_per_s": round((v1 - v0) / (t1 - t0), 3),
                                 "of_offered": round((v1 - v0) / (t1 - t0) / expected, 2)}
                          for name, (t0, v0, t1, v1) in windows.items()}
        out["versions"] = len(published)
        out["publish_s"] = {"before kill": out.pop("publish_before_kill"), "after restart": fleet_status.get(
            "publish_s")}
        staleness = [u["staleness"] for r in published for u in r["workers"].values()]
        out["staleness"] = {"mean": round(float(np.mean(staleness)), 2), "max": int(max(staleness))} if staleness \
            else None
        out["stragglers_taken"] = sum(1 for r in published for w in r["workers"] if w in stream.stragglers)
        pending = set(status["updates_in_open_round"])  # fewer than buffer_size <= 200: all of them
        taken = {(w, u["sha256"]) for r in published for w, u in r["workers"].items()}
        lost = [(w, rd) for w, rd, sha in stream.acked if (w, sha) not in taken and w not in pending]
        out["no_acknowledged_update_lost"] = not lost
        out["lost"] = lost[:10]
        out["log"] = _damage_lines(agg)
        out["rss_mib"] = round(rss_mib(agg.pid), 1)
    finally:
        agg.stop()
    out["reference"] = in_process_async(wd / "async-ref", fleet, agg.settings, args)
    return out


def in_process_async(state_dir: Path, fleet: Fleet, settings, args) -> dict:
    """Versions built from fresh updates on the Federation object in this process: the publish cost without HTTP."""
    async def run():
        federation = await joined_federation(state_dir, fleet, settings)
        started = time.perf_counter()
        versions = 5
        for v in range(1, versions + 1):
            await submit_all(federation, fleet, fleet.ids[:args.buffer], v, args.connections)
        elapsed = time.perf_counter() - started
        publish = list(federation.publish_times)
        return {"versions": federation.rounds_done, "updates_per_s": round(versions * args.buffer / elapsed, 1),
                "publish_s_median": round(median(publish), 4) if publish else None}

    return asyncio.run(run())


# -- 4. site aggregators -----------------------------------------------------------------------------------------------
def sites_phase(wd: Path, args) -> dict:
    per_site = args.site_nodes
    site_ids = ["site1", "site2", "site3"]
    site_tokens = {s: f"bench-site-token-{s}" for s in site_ids}
    root = Aggregator("root", wd, mode="sync", min_workers=3, quorum=3, rounds=args.rounds + 1,
                      workers=[{"id": s, "partition": ["x"], "port": 1, "state_dir": str(wd / s),
                                "token": site_tokens[s]} for s in site_ids])
    sites = {s: Aggregator(s, wd, mode="sync", min_workers=per_site, quorum=1, rounds=args.rounds + 1,
                           clients_per_round=args.site_share, sample_seed=11, role="site",
                           upstream={"url": root.url, "id": s, "token": site_tokens[s]}) for s in site_ids}
    fleets = {s: Fleet(per_site, root.settings, prefix=f"{s}-", seed=i) for i, s in enumerate(site_ids)}
    out: dict = {"sites": 3, "nodes_per_site": per_site, "site_clients_per_round": args.site_share}
    root.start()
    for agg in sites.values():
        agg.start()
    try:
        async def site_round(s: str, pool: Pool, r: int, acked: list, kill_midway: bool) -> dict:
            fleet = fleets[s]
            sampled = await announce(pool, fleet, r)
            started = time.perf_counter()
            half = len(sampled) // 2
            first = await gather_limited([lambda w=w: push(pool, fleet, w, r, acked) for w in sampled[:half]],
                                         pool.connections)
            restart = None
            if kill_midway:
                sites[s].kill()
                await asyncio.sleep(0.3)
                restart = round(await asyncio.to_thread(sites[s].restart), 2)
            rest = await gather_limited([lambda w=w: push(pool, fleet, w, r, acked) for w in sampled[half:]],
                                        pool.connections)
            refused = sum(1 for st, _ in first + rest if st != 200)
            return {"site": s, "sampled": len(sampled), "upload_s": round(time.perf_counter() - started, 3),
                    "refused": refused, "restart_s": restart}

        async def run():
            pools = {s: Pool(sites[s].port, max(8, args.connections // 3)) for s in site_ids}
            observer = Connection(root.port)
            acked: dict[str, list] = {s: [] for s in site_ids}
            try:
                started = time.perf_counter()
                await asyncio.gather(*(enroll(pools[s], fleets[s], fleets[s].ids) for s in site_ids))
                await asyncio.gather(*(join(pools[s], fleets[s], fleets[s].ids) for s in site_ids))
                out["enroll_and_join_s"] = round(time.perf_counter() - started, 2)
                rounds = []
                for r in range(1, args.rounds + 1):
                    await _until(lambda r=r: all((sites[s].status() or {}).get("phase") == "training"
                                                 and sites[s].status().get("round") == r for s in site_ids), 120)
                    poll = asyncio.ensure_future(observer.request(
                        "GET", f"/v1/model?after_round={r - 1}&wait=60", bearer(site_tokens["site1"]), timeout=90))
                    started = time.perf_counter()
                    kill = args.kill_site and r == 2
                    per_site_ = await asyncio.gather(*(site_round(s, pools[s], r, acked[s], kill and s == "site2")
                                                       for s in site_ids))
                    status, headers, _ = await poll
                    rounds.append({"round": r, "upload_to_root_model_s": round(time.perf_counter() - started, 3),
                                   "root_model": int(headers.get("x-model-round", -1)), "sites": per_site_})
                out["rounds"] = rounds
                return acked
            finally:
                for p in pools.values():
                    p.close()
                observer.close()
        acked = asyncio.run(run())
        history = root.status()["history"]
        out["root_rounds"] = [{"round": h["round"], "contributors": sorted(h["workers"]),
                               "sample_count": h["sample_count"], "duration_s": h["duration_s"]} for h in history]
        out["every_round_closed_with_all_3_sites"] = bool(history) and all(
            sorted(h["workers"]) == site_ids for h in history)
        lost = []
        records = {(s, r): get_json(f"{sites[s].url}/v1/rounds/{r}", timeout=30) or {}
                   for s in site_ids for r in {r for _, r, _ in acked[s]}}
        for s in site_ids:
            for w, r, sha in acked[s]:
                if records[s, r].get("workers", {}).get(w, {}).get("sha256") != sha:
                    lost.append((s, w, r))
        out["no_acknowledged_update_lost"] = not lost
        out["lost"] = lost[:10]
        out["rss_mib"] = {"root": round(rss_mib(root.pid), 1), **{s: round(rss_mib(a.pid), 1)
                                                                    for s, a in sites.items()}}
    finally:
        for agg in [*sites.values(), root]:
            agg.stop()
    return out


async def _until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise TimeoutError("timed out waiting for the sites to open the round")
        await asyncio.sleep(0.1)


# -- report ------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=10_000, help="simulated nodes (enrollment, sampled, async)")
    parser.add_argument("--sample", type=int, default=1000, help="clients_per_round in the sampled rounds")
    parser.add_argument("--rounds", type=int, default=3, help="sampled rounds (and upstream rounds with sites)")
    parser.add_argument("--connections", type=int, default=64, help="client connections to an aggregator")
    parser.add_argument("--flood", type=int, default=2000, help="enrollments with bad credentials")
    parser.add_argument("--storm-nodes", type=int, default=3000, help="enrollments in the kill -9 storm")
    parser.add_argument("--buffer", type=int, default=200, help="async buffer_size")
    parser.add_argument("--max-staleness", type=int, default=80, help="async max_staleness")
    parser.add_argument("--train-s", type=float, default=40.0, help="async: a live node's training time (± 50 %%)")
    parser.add_argument("--offline", type=float, default=0.2, help="async: share of nodes offline")
    parser.add_argument("--stragglers", type=float, default=0.1, help="async: share of nodes 10x slower")
    parser.add_argument("--async-s", type=float, default=240.0, help="async: seconds of the stream")
    parser.add_argument("--site-nodes", type=int, default=3000, help="nodes per site aggregator")
    parser.add_argument("--site-share", type=float, default=0.1, help="each site's clients_per_round")
    parser.add_argument("--no-kill-site", dest="kill_site", action="store_false")
    parser.add_argument("--phases", default="enroll,sampled,async,sites")
    parser.add_argument("--workdir", help="keep state and logs here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--profile", metavar="FILE", help="py-spy the aggregator during the sampled rounds; "
                                                         "collapsed stacks to FILE, summary printed")
    args = parser.parse_args(argv)
    machine = print_header(f"fleet: {args.nodes} light nodes over loopback HTTP against the real aggregator", argv)
    phases = args.phases.split(",")
    result: dict = {"machine": machine, "args": vars(args)}
    with workdir(args.workdir) as wd:
        for name, run in (("enroll", enrollment_phase), ("sampled", sampled_phase), ("async", async_phase),
                          ("sites", sites_phase)):
            if name in phases:
                started = time.perf_counter()
                result[name] = run(wd, args)
                result[name]["phase_s"] = round(time.perf_counter() - started, 1)
                result[name]["load_avg_after"] = [round(x, 2) for x in _load()]
                print(f"# {name} done in {result[name]['phase_s']} s", flush=True)
    report(result, args)
    emit_json(args.json, result)
    return result


def _load() -> tuple[float, float, float]:
    import os

    with contextlib.suppress(OSError):
        return os.getloadavg()
    return (float("nan"),) * 3


def report(r: dict, args) -> None:
    print()
    checks = []
    if "enroll" in r:
        e = r["enroll"]
        ref = e["reference"]
        print(f"enrollment, {e['nodes']} nodes over {e['connections']} connections:")
        for what in ("enroll", "join"):
            x = e[what]
            print(f"  {what:<7} {x['total_s']:>7.1f} s ({x['per_s']:.0f}/s); a block of {x['block']}: "
                  f"{x['first_block_s']:.2f} s early, {x['last_block_s']:.2f} s late; in-process reference "
                  f"{ref[what + '_s']:.2f} s "
                  f"(HTTP x{x['total_s'] / max(ref[what + '_s'], 1e-9):.1f})")
        print(f"  aggregator RSS: {e['rss_enrolled_mib']:.0f} MiB enrolled, {e['rss_joined_mib']:.0f} MiB joined; "
              f"nodes.log: {ref['nodes_log_records']} records in {ref['nodes_log_batches']} fsync batches "
              "(reference)")
        b = e["bad_credentials"]
        print(f"  {b['requests']} bad credentials: statuses {b['statuses']}, stored nothing: {b['stored_nothing']}")
        s = e["storm"]
        print(f"  kill -9 mid-storm ({s['nodes']} enrollments, {s['acked_at_kill']} acknowledged at the kill; restart "
              f"{s['restart_s']} s): {s['acked']} acknowledged, {s['on_record']} on record, lost {s['lost']}; "
              f"{s['log']}")
        checks += [("10,000 enrolled <= 60 s", e["nodes"] < 10_000 or e["enroll"]["total_s"] <= TARGETS["enroll_10k_s"],
                    f"{e['enroll']['total_s']:.1f} s for {e['nodes']}"),
                   ("RSS <= 300 MiB enrolled", e["rss_enrolled_mib"] <= TARGETS["rss_10k_mib"],
                    f"{e['rss_enrolled_mib']:.0f} MiB ({e['rss_joined_mib']:.0f} joined)"),
                   ("bad credentials: 4xx, nothing stored", b["all_4xx"] and b["stored_nothing"], str(b["statuses"])),
                   ("storm kill -9: no enrollment lost", s["no_acknowledged_enrollment_lost"] and
                    not s["log"]["damaged_lines"], f"{s['acked']} acknowledged")]
    if "sampled" in r:
        s = r["sampled"]
        print(f"\nsampled sync rounds, {s['clients_per_round']} of {s['nodes']}:")
        for x, ref in zip(s["rounds"], s["reference"]["upload_to_model_s"]):
            print(f"  round {x['round']}: {x['sampled']} sampled (asked by all in {x['announce_s']:.2f} s, aggregator "
                  f"CPU {x['announce_cpu_s']:.2f} s); first upload -> model {x['upload_to_model_s']:.3f} s (aggregator "
                  f"CPU {x['aggregator_cpu_s']:.3f} s); in-process {ref:.3f} s; refused {x['refused']}")
        f = s["fairness"]
        print(f"  fairness after {f['rounds_done']} rounds: rounds since trained {f['rounds_since_trained']}, "
              f"never {f['never_trained']}")
        if s.get("profile"):
            print("  profile of the aggregator during the rounds:\n" + "\n".join(s["profile"]))
        worst = max(x["upload_to_model_s"] for x in s["rounds"])
        checks.append((f"sync round of {s['clients_per_round']}/{s['nodes']} <= 1.0 s",
                       worst <= TARGETS["sync_round_s"], f"worst {worst:.3f} s"))
    if "async" in r:
        a = r["async"]
        st = a["stream"]
        print(f"\nasync (buffer {a['buffer_size']}, max_staleness {a['max_staleness']}), {a['nodes']} nodes: "
              f"{st['live_nodes']} live ({st['stragglers']} 10x stragglers), {st['offline']} offline; "
              f"{st['seconds']:.0f} s with a kill -9 at half time (down {a['down_s']} s):")
        print(f"  the live nodes offer {a['offered_updates_per_s']} updates/s = {a['expected_versions_per_s']} "
              f"versions/s; published {a['versions']} versions:")
        for name, w in a["windows"].items():
            print(f"    {name:<14} {w['versions']} versions in {w['seconds']} s: {w['versions_per_s']} per s "
                  f"({w['of_offered']:.2f} of the offered rate)")
        print(f"  full buffer -> published model (server): {a['publish_s']}; in-process reference "
              f"{a['reference']}")
        print(f"  staleness {a['staleness']}; stragglers' updates taken {a['stragglers_taken']}; refused "
              f"{st['refused']}; acknowledged {st['acked_updates']}, lost {a['lost']}; {a['log']}")
        publish = max((p or {}).get("max", float("inf")) for p in a["publish_s"].values())
        ratio = min(w["of_offered"] for w in a["windows"].values())
        p90 = max((p or {}).get("p90", float("inf")) for p in a["publish_s"].values())
        checks += [("async publish <= 0.3 s", publish <= TARGETS["publish_s"], f"max {publish}, p90 {p90}"),
                   ("async versions at the live nodes' rate", ratio >= 0.8, f"{ratio:.2f} of the offered rate"),
                   ("async kill -9: no update lost", a["no_acknowledged_update_lost"] and not a["log"]["damaged_lines"],
                    f"{st['acked_updates']} acknowledged")]
    if "sites" in r:
        s = r["sites"]
        print(f"\n3 site aggregators x {s['nodes_per_site']} nodes ({s['site_clients_per_round']} sampled per site "
              f"round); enroll + join {s['enroll_and_join_s']} s:")
        for x in s["rounds"]:
            per = ", ".join(f"{y['site']} {y['sampled']} sampled {y['upload_s']:.2f} s"
                            + (f" (kill -9, restart {y['restart_s']} s)" if y["restart_s"] else "") for y in x["sites"])
            print(f"  round {x['round']}: uploads -> root model {x['upload_to_root_model_s']:.2f} s; {per}")
        print(f"  root rounds: {[(h['round'], h['contributors']) for h in s['root_rounds']]}; RSS {s['rss_mib']}")
        checks += [("every upstream round with all 3 sites", s["every_round_closed_with_all_3_sites"], ""),
                   ("site kill -9: no update lost", s["no_acknowledged_update_lost"], str(s["lost"]))]
    print("\ntargets:")
    for name, ok, detail in checks:
        print(f"  {name}: {'met' if ok else 'NOT met'} ({detail})")


if __name__ == "__main__":
    main()
