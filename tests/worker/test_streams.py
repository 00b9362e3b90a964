"""Per-stream state on a real worker process: whole SKAB files sent one row per request, in random chunks or in one
batch get the scores and flags of one stateless batch; the streams are bounded (LRU eviction, counted in /metrics);
bad stream ids are refused with a code; a graceful restart keeps the streams, a crash loses them and the client
rebuilds its stream by sending the baseline again."""

from __future__ import annotations

import signal
import threading

import httpx
import numpy as np
import pytest

from services.config import load_settings
from support import Stack, partition_runs, wait_until

SETTINGS = load_settings()
FEATURES = SETTINGS.data.features
WINDOW = SETTINGS.data.window
TRAIN_ROWS = SETTINGS.data.train_rows  # SKAB protocol: each file's first rows are its normal baseline
FILES = ["valve1/1.csv", "valve1/5.csv"]
MAX_STREAMS = 4
RTOL = 1e-5


def skab_run(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole SKAB file: its baseline (first 400 rows) and every row after it."""
    [run] = partition_runs(SETTINGS, [name])
    return run.values[:TRAIN_ROWS], run.values[TRAIN_ROWS:]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One trained worker (valve1, one short round) whose stream table holds at most MAX_STREAMS streams."""
    stack = Stack(tmp_path_factory.mktemp("streams"), workers=["valve1"], rounds=1, epochs=1, min_workers=1, quorum=1,
                  overrides={"FEDAD__STREAMS__MAX_STREAMS": str(MAX_STREAMS)})
    with stack.trained():
        yield stack


@pytest.fixture(scope="module")
def client(stack):
    with httpx.Client(base_url=stack.worker_url("valve1"), timeout=60) as c:
        yield c


def detect(client: httpx.Client, **body) -> dict:
    body = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in body.items()}
    r = client.post("/detect", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def stream_in_pieces(client, stream: str, rows: np.ndarray, sizes, baseline: np.ndarray | None = None,
                     start_rows: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Send ``rows`` as the next rows of ``stream`` in pieces of ``sizes``; the baseline with the first piece only.
    Checks every answer's ``stream_rows``; returns all scores and flags."""
    scores, flags, sent = [], [], 0
    for size in sizes:
        body = {"stream": stream, "samples": rows[sent:sent + size]}
        if sent == 0 and baseline is not None:
            body["baseline"] = baseline
        answer = detect(client, **body)
        assert answer["stream"] == stream and answer["stream_rows"] == start_rows + sent
        scores += answer["scores"]
        flags += answer["is_anomaly"]
        sent += size
    assert sent == len(rows)
    return np.array(scores), np.array(flags)


def random_sizes(n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < n:
        sizes.append(min(int(rng.integers(1, 3 * WINDOW)), n - sum(sizes)))
    return sizes


@pytest.mark.parametrize("name", FILES)
def test_any_split_of_a_whole_file_scores_like_one_batch(client, name):
    baseline, rows = skab_run(name)
    batch = detect(client, baseline=baseline, samples=rows)  # stateless, one batch: the reference
    expected, expected_flags = np.array(batch["scores"]), np.array(batch["is_anomaly"])
    assert expected_flags.any() and not expected_flags.all(), "the file should have flagged and normal rows"
    tag = name.replace("/", "-")
    splits = {"one row per request": [1] * len(rows), "random chunks": random_sizes(len(rows), seed=len(rows)),
              "one batch": [len(rows)]}
    for how, sizes in splits.items():
        scores, flags = stream_in_pieces(client, f"{tag}-{len(sizes)}", rows, sizes, baseline)
        np.testing.assert_allclose(scores, expected, rtol=RTOL, err_msg=f"{name}, {how}")
        assert np.array_equal(flags, expected_flags), f"{name}, {how}: flags differ"


def test_devices_sending_at_once_share_model_runs_and_each_keeps_its_answers(stack, client):
    """Four devices, each on its own connection, one row per request at once: requests that arrive together are
    scored in one model run (serving.batch_wait_ms, default 1 ms), and every device still gets the scores and flags
    of its own rows in one stateless batch."""
    devices = {f"{name.replace('/', '-')}-at-once-{k}": skab_run(name) for name in FILES for k in range(2)}
    rows_each = 150
    before = client.get("/v1/streams").json()
    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def device(stream: str) -> None:
        baseline, rows = devices[stream]
        with httpx.Client(base_url=stack.worker_url("valve1"), timeout=60) as own:
            results[stream] = stream_in_pieces(own, stream, rows[:rows_each], [1] * rows_each, baseline)

    threads = [threading.Thread(target=device, args=(stream,)) for stream in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted(devices)
    for stream, (scores, flags) in results.items():
        baseline, rows = devices[stream]
        batch = detect(client, baseline=baseline, samples=rows[:rows_each])
        np.testing.assert_allclose(scores, batch["scores"], rtol=RTOL, err_msg=stream)
        assert np.array_equal(flags, batch["is_anomaly"]), stream
    after = client.get("/v1/streams").json()
    requests, runs = after["requests"] - before["requests"], after["model_runs"] - before["model_runs"]
    assert requests == len(devices) * rows_each
    assert runs < requests, "requests that arrived together should have shared model runs"


def test_a_stream_without_baseline_is_scaled_by_the_worker_and_keeps_its_window(client):
    """No baseline: the served model's default reference, as stateless /detect without one; the window still
    reaches back across requests."""
    _, rows = skab_run(FILES[0])
    rows = rows[:120]
    expected = np.array(detect(client, samples=rows)["scores"])
    scores, _ = stream_in_pieces(client, "no-baseline", rows, [1] * len(rows))
    np.testing.assert_allclose(scores, expected, rtol=RTOL)
    alone = np.array(detect(client, samples=rows[-1:])["scores"])  # the last row without the rows before it
    assert not np.allclose(alone, scores[-1:], rtol=1e-3), "the stream's window should reach into earlier requests"


def metric(client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_streams_are_bounded_and_the_least_recently_used_is_evicted(client):
    for held in client.get("/v1/streams", params={"limit": 1000}).json()["recent"]:
        assert client.delete(f"/v1/streams/{held['stream']}").status_code == 200
    before = client.get("/v1/streams").json()
    assert before["streams"] == 0 and before["max_streams"] == MAX_STREAMS
    _, rows = skab_run(FILES[0])
    for i in range(MAX_STREAMS):
        detect(client, stream=f"dev-{i}", samples=rows[i:i + 1])
    detect(client, stream="dev-0", samples=rows[1:2])  # dev-0 used again: dev-1 is now the least recently used
    detect(client, stream="dev-4", samples=rows[:1])
    detect(client, stream="dev-5", samples=rows[:1])
    after = client.get("/v1/streams").json()
    assert after["streams"] == MAX_STREAMS and after["evicted"] == before["evicted"] + 2
    assert [s["stream"] for s in after["recent"]] == ["dev-5", "dev-4", "dev-0", "dev-3"]
    for evicted in ("dev-1", "dev-2"):
        r = client.get(f"/v1/streams/{evicted}")
        assert r.status_code == 404 and r.json()["code"] == "unknown_stream"
    assert client.get("/v1/streams/dev-0").json()["rows"] == 2
    assert metric(client, "fedad_worker_streams") == MAX_STREAMS
    assert metric(client, "fedad_worker_streams_evicted_total") == after["evicted"]
    assert detect(client, stream="dev-1", samples=rows[:1])["stream_rows"] == 0  # an evicted stream starts afresh


@pytest.mark.parametrize("stream", ["", "has space", "slash/ed", "x" * 129, 7, True, ["a"]])
def test_bad_stream_ids_are_refused_with_a_code(client, stream):
    r = client.post("/detect", json={"stream": stream, "samples": [[1.0] * len(FEATURES)]})
    assert r.status_code == 422 and r.json()["code"] == "bad_stream_id", r.text


def test_a_second_baseline_is_refused_until_the_stream_is_forgotten(client):
    baseline, rows = skab_run(FILES[0])
    detect(client, stream="rebased", baseline=baseline, samples=rows[:5])
    again = client.post("/detect", json={"stream": "rebased", "baseline": baseline.tolist(),
                                         "samples": rows[5:6].tolist()})
    assert again.status_code == 409 and again.json()["code"] == "baseline_already_set"
    assert client.get("/v1/streams/rebased").json()["rows"] == 5  # the refused request changed nothing
    assert client.delete("/v1/streams/rebased").json()["rows"] == 5
    assert detect(client, stream="rebased", baseline=baseline, samples=rows[5:6])["stream_rows"] == 0


def restart(stack, sig: int) -> None:
    stack.worker_services["valve1"].kill(sig)
    stack.restart_worker("valve1")
    wait_until(lambda: httpx.get(f"{stack.worker_url('valve1')}/readyz").status_code == 200, 60,
               "the restarted worker to serve its model")


def test_a_graceful_restart_keeps_the_streams_and_a_crash_needs_the_baseline_again(stack, client):
    baseline, rows = skab_run(FILES[1])
    expected = np.array(detect(client, baseline=baseline, samples=rows)["scores"])
    half = len(rows) // 2

    first, _ = stream_in_pieces(client, "restarted", rows[:half], random_sizes(half, seed=1), baseline)
    restart(stack, signal.SIGTERM)  # graceful: the streams are handed over to the next start
    second, _ = stream_in_pieces(client, "restarted", rows[half:], random_sizes(len(rows) - half, seed=2),
                                 start_rows=half)
    np.testing.assert_allclose(np.concatenate([first, second]), expected, rtol=RTOL)

    stream_in_pieces(client, "crashed", rows[:half], [half], baseline)
    restart(stack, signal.SIGKILL)  # a crash: the streams are gone, and no stale handover comes back later
    for lost in ("crashed", "restarted"):
        assert client.get(f"/v1/streams/{lost}").json()["code"] == "unknown_stream"
    # The client sees stream_rows 0, sends its baseline again with its last window - 1 rows (ignoring their
    # scores) and carries on: from then on, the scores are the batch's again.
    context = rows[half - (WINDOW - 1):half]
    rebuilt = detect(client, stream="crashed", baseline=baseline, samples=context)
    assert rebuilt["stream_rows"] == 0
    rest, _ = stream_in_pieces(client, "crashed", rows[half:], [1] * (len(rows) - half), start_rows=WINDOW - 1)
    np.testing.assert_allclose(rest, expected[half:], rtol=RTOL)
