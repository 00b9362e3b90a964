"""The battery of bad inputs: every hostile or broken request the aggregator and /detect refuse, each with its
status and message, none answered 5xx, and none disturbing the open round.

One table, `BATTERY`: (id, service, request, status, message). The aggregator cases run against a real aggregator
with two joined workers and one accepted update in the open round; the /detect cases against a real trained worker.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Callable

import httpx
import numpy as np
import pytest

from services.config import load_settings
from services.protocol.scaling import FeatureStats
from services.model.layout import count_parameters, spec_hash
from services.protocol.codec import content_hash, decode_weights, encode_weights
from services.protocol.errors import CODES
from services.security.tokens import hash_token
from support import Stack

SETTINGS = load_settings()
N = count_parameters(SETTINGS.input_width, SETTINGS.model.hidden)
SPEC = spec_hash(SETTINGS.input_width, SETTINGS.model.hidden)
TOKENS = {w.id: w.token for w in SETTINGS.workers}
FEATURES = SETTINGS.data.features
ROW = [0.0265878, 0.0401113, 1.3302, 0.054711, 79.3366, 26.0199, 233.062, 32.0]
JOINED_SAMPLES = 400


def auth(worker: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[worker]}"}


def join_body(samples: int = JOINED_SAMPLES, width: int = len(FEATURES)) -> dict:
    rows = np.random.default_rng(0).normal(size=(samples, width))
    return {"spec_hash": SPEC, "sample_count": samples, "stats": FeatureStats.from_rows(rows).model_dump()}


def raw_request(port: int, head: bytes) -> tuple[int, str]:
    """Send request headers (and a body start) by hand; read the whole answer. httpx would check the length."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1].decode(errors="replace")


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


@dataclass
class Aggregator:
    stack: Stack
    client: httpx.Client
    initial: np.ndarray
    accepted: np.ndarray  # valve2's update in the open round

    def push(self, round_no: int = 1, weights: np.ndarray | None = None, worker: str = "other",
             body: bytes | None = None, **headers) -> httpx.Response:
        body = encode_weights(self.initial + 0.1 if weights is None else weights) if body is None else body
        h = {**auth(worker), "Content-Type": "application/octet-stream", "X-Sample-Count": "100",
             "X-Train-Loss": "0.1", "X-Content-SHA256": content_hash(body)}
        h.update({k.replace("_", "-"): v for k, v in headers.items()})
        h = {k: v for k, v in h.items() if v is not None}
        return self.client.post(f"/v1/rounds/{round_no}/updates", content=body, headers=h)


@pytest.fixture(scope="module")
def aggregator(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("battery"), workers=["valve2", "other"], rounds=3, min_workers=2, quorum=2)
    stack.aggregator.start().wait_healthy()
    try:
        with httpx.Client(base_url=stack.agg_url, timeout=30) as client:
            for w in ("valve2", "other"):
                assert client.post(f"/v1/workers/{w}/join", json=join_body(), headers=auth(w)).status_code == 200
            initial = decode_weights(client.get("/v1/model", headers=auth("valve2")).content, N)
            agg = Aggregator(stack, client, initial, initial + 0.5)
            assert agg.push(weights=agg.accepted, worker="valve2").status_code == 200
            yield agg
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def detect(trained_stack):
    with httpx.Client(base_url=trained_stack.worker_url("valve1"), timeout=30) as client:
        client.port = trained_stack.worker_ports["valve1"]
        yield client


def post_detect(payload) -> Callable:
    return lambda c: c.post("/detect", json=payload)


def post_detect_raw(raw: bytes) -> Callable:
    return lambda c: c.post("/detect", content=raw, headers={"Content-Type": "application/json"})


def with_nan(agg: Aggregator, value: float) -> httpx.Response:
    w = agg.initial.copy()
    w[3] = value
    return agg.push(weights=w)


def corrupted(agg: Aggregator) -> httpx.Response:
    body = bytearray(encode_weights(agg.initial + 0.1))
    honest_hash = content_hash(bytes(body))
    body[10] ^= 0xFF
    return agg.push(body=bytes(body), X_Content_SHA256=honest_hash)


A, D = "aggregator", "detect"
BATTERY = [
    # -- identity
    ("no token", A, lambda a: a.client.post("/v1/workers/valve2/join", json=join_body()), 401, "missing bearer token"),
    ("basic auth instead of bearer", A, lambda a: a.client.post(
        "/v1/workers/valve2/join", json=join_body(), headers={"Authorization": "Basic dmFsdmUyOng="}), 401,
     "missing bearer token"),
    ("unknown token", A, lambda a: a.client.post(
        "/v1/workers/valve2/join", json=join_body(), headers={"Authorization": "Bearer wrong-token"}), 403,
     "unknown worker token"),
    ("the stored hash used as token", A, lambda a: a.client.post(
        "/v1/workers/valve2/join", json=join_body(),
        headers={"Authorization": f"Bearer {hash_token(TOKENS['valve2'])}"}), 403, "unknown worker token"),
    ("join under another worker's id", A, lambda a: a.client.post(
        "/v1/workers/other/join", json=join_body(), headers=auth("valve2")), 403, "belongs to worker valve2"),
    ("join under an unknown id", A, lambda a: a.client.post(
        "/v1/workers/ghost/join", json=join_body(), headers=auth("valve2")), 403, "belongs to worker valve2"),
    ("model without token", A, lambda a: a.client.get("/v1/model"), 401, "missing bearer token"),
    # -- join
    ("join with another model spec", A, lambda a: a.client.post(
        "/v1/workers/valve2/join", json={**join_body(), "spec_hash": "0" * 16}, headers=auth("valve2")), 409,
     "model spec"),
    ("join with zero samples", A, lambda a: a.client.post(
        "/v1/workers/valve2/join", json={**join_body(), "sample_count": 0}, headers=auth("valve2")), 422,
     "sample_count: Input should be greater than 0"),
    ("join with stats of 3 features", A, lambda a: a.client.post(
        "/v1/workers/valve2/join", json=join_body(width=3), headers=auth("valve2")), 422, "stats have 3 features"),
    ("join with malformed JSON", A, lambda a: a.client.post(
        "/v1/workers/valve2/join", content=b'{"spec_hash": ', headers={**auth("valve2"),
                                                                      "Content-Type": "application/json"}), 422,
     "JSON decode error"),
    ("join without stats", A, lambda a: a.client.post(
        "/v1/workers/valve2/join", json={"spec_hash": SPEC, "sample_count": 5}, headers=auth("valve2")), 422,
     "body stats: Field required"),
    # -- updates: rounds and identity
    ("update for a future round", A, lambda a: a.push(round_no=2), 409, "round 2 is not open yet"),
    ("update for a closed round", A, lambda a: a.push(round_no=0), 409, "round 0 is already closed"),
    ("update from a worker that has not joined", A, lambda a: a.push(worker="valve1"), 409,
     "valve1 has not joined"),
    ("a different second update", A, lambda a: a.push(weights=a.accepted + 1, worker="valve2"), 409,
     "already sent a different update"),
    ("round is not a number", A, lambda a: a.client.post(
        "/v1/rounds/one/updates", content=b"", headers=auth("other")), 422, "path round_no"),
    # -- updates: body
    ("truncated body", A, lambda a: a.push(body=encode_weights(a.initial)[:-4]), 422,
     f"has {4 * N - 4} bytes, the model needs {4 * N}"),
    ("empty body", A, lambda a: a.push(body=b""), 422, "has 0 bytes"),
    ("float16 weights", A, lambda a: a.push(body=a.initial.astype("<f2").tobytes()), 422,
     f"has {2 * N} bytes, the model needs {4 * N}"),
    ("float64 weights", A, lambda a: a.push(body=a.initial.astype("<f8").tobytes()), 413,
     f"exceeds the model's {4 * N} bytes"),
    ("body twice the model", A, lambda a: a.push(body=encode_weights(np.concatenate([a.initial] * 2))), 413,
     "exceeds the model's"),
    ("corrupted body (hash mismatch)", A, corrupted, 422, "does not match its X-Content-SHA256"),
    ("NaN weight", A, lambda a: with_nan(a, np.nan), 422, "1 non-finite values"),
    ("infinite weight", A, lambda a: with_nan(a, np.inf), 422, "1 non-finite values"),
    ("JSON instead of float32", A, lambda a: a.push(body=json.dumps(a.initial.tolist()[:10]).encode(),
                                                    Content_Type="application/json"), 415,
     "must be raw little-endian float32"),
    # -- updates: headers
    ("zero sample count", A, lambda a: a.push(X_Sample_Count="0"), 422, "X-Sample-Count must be a positive"),
    ("sample count not a number", A, lambda a: a.push(X_Sample_Count="many"), 422,
     "header X-Sample-Count: Input should be a valid integer"),
    ("more samples than declared at join", A, lambda a: a.push(X_Sample_Count=str(JOINED_SAMPLES + 1)), 422,
     f"exceeds the {JOINED_SAMPLES} samples other declared"),
    ("missing sample count", A, lambda a: a.push(X_Sample_Count=None), 422, "header X-Sample-Count: Field required"),
    ("NaN training loss", A, lambda a: a.push(X_Train_Loss="nan"), 422, "X-Train-Loss must be a finite number"),
    ("announced gigabyte, refused before reading", A, lambda a: raw_request(
        a.stack.agg_port, b"POST /v1/rounds/1/updates HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + TOKENS["other"].encode() + b"\r\nContent-Type: application/octet-stream\r\nX-Sample-Count: 5\r\n"
        b"X-Train-Loss: 0.1\r\nContent-Length: 1000000000\r\n\r\n\x00\x00"), 413, "1000000000 bytes exceeds"),
    # -- model long-poll parameters
    ("long-poll before round -1", A, lambda a: a.client.get("/v1/model", params={"after_round": -5},
                                                            headers=auth("other")), 422, "query after_round"),
    ("long-poll wait above 60 s", A, lambda a: a.client.get("/v1/model", params={"wait": 1000},
                                                           headers=auth("other")), 422, "query wait"),
    # -- /detect
    ("wrong width", D, post_detect({"samples": [ROW[:5]]}), 422, "has 5 values, expected 8"),
    ("too wide", D, post_detect({"samples": [ROW + [1.0]]}), 422, "has 9 values, expected 8"),
    ("second row too short", D, post_detect({"samples": [ROW, ROW[:7]]}), 422, "row 1 has 7 values"),
    ("string value", D, post_detect({"samples": [ROW[:7] + ["32.0"]]}), 422, "is not a number"),
    ("boolean value", D, post_detect({"samples": [ROW[:7] + [True]]}), 422, "is not a number"),
    ("null value", D, post_detect({"samples": [ROW[:7] + [None]]}), 422, "is not a number"),
    ("nested list value", D, post_detect({"samples": [ROW[:7] + [[1.0]]]}), 422, "is not a number"),
    ("empty batch", D, post_detect({"samples": []}), 422, "empty"),
    ("missing field", D, post_detect({"rows": [ROW]}), 422, 'missing field "samples"'),
    ("samples not a list", D, post_detect({"samples": "1,2,3"}), 422, "must be a list"),
    ("row not a list", D, post_detect({"samples": [5]}), 422, "expected a list of 8 numbers"),
    ("object missing a feature", D, post_detect({"samples": [dict(zip(FEATURES[:-1], ROW))]}), 422,
     "missing feature"),
    ("object with a text value", D, post_detect({"samples": [{**dict(zip(FEATURES, ROW)), "Current": "high"}]}),
     422, "Current: 'high' is not a number"),
    ("body is a list", D, post_detect([ROW]), 422, 'missing field "samples"'),
    ("NaN", D, post_detect_raw(b'{"samples": [[NaN, 1, 1, 1, 1, 1, 1, 1]]}'), 422, "NaN and Infinity"),
    ("Infinity", D, post_detect_raw(b'{"samples": [[Infinity, 1, 1, 1, 1, 1, 1, 1]]}'), 422, "NaN and Infinity"),
    ("-Infinity", D, post_detect_raw(b'{"samples": [[1, 1, -Infinity, 1, 1, 1, 1, 1]]}'), 422, "NaN and Infinity"),
    ("too large for float32", D, post_detect_raw(b'{"samples": [[1e39, 1, 1, 1, 1, 1, 1, 1]]}'), 422,
     "too large for float32"),
    ("truncated JSON", D, post_detect_raw(b'{"samples": [[1, 2'), 422, "not valid JSON"),
    ("empty body", D, post_detect_raw(b""), 422, "not valid JSON"),
    ("oversize batch", D, post_detect({"samples": [ROW] * (SETTINGS.serving.max_batch_rows + 1)}), 413,
     f"{SETTINGS.serving.max_batch_rows + 1} rows exceeds the limit"),
    ("announced gigabyte, refused before reading", D, lambda c: raw_request(
        c.port, b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n{\"samples\": ["), 413, "exceeds the limit"),
    # -- /detect streams
    ("stream id not a string", D, post_detect({"stream": 5, "samples": [ROW]}), 422, "stream id 5 must be"),
    ("stream id with a slash", D, post_detect({"stream": "a/b", "samples": [ROW]}), 422, "'a/b' must be"),
    ("binary body, bad X-Stream", D, lambda c: c.post("/detect", content=np.array([ROW], "<f4").tobytes(), headers={
        "Content-Type": "application/octet-stream", "X-Stream": "two words"}), 422, "'two words' must be"),
    ("baseline for a stream that has one", D, lambda c: [c.post("/detect", json={"stream": "battery-known", **body})
                                                         for body in ({"samples": [ROW]}, {"samples": [ROW],
                                                                      "baseline": [ROW] * SETTINGS.data.window})][1],
     409, "already has its reference"),
    ("a stream the worker does not hold", D, lambda c: c.get("/v1/streams/never-seen"), 404,
     "no stream 'never-seen'"),
]
# The stable code of every /detect refusal above: clients branch on it, never on the wording.
DETECT_CODES = {
    "wrong width": "wrong_width", "too wide": "wrong_width", "second row too short": "wrong_width",
    "string value": "not_a_number", "boolean value": "not_a_number", "null value": "not_a_number",
    "nested list value": "not_a_number", "object with a text value": "not_a_number", "empty batch": "empty_batch",
    "missing field": "missing_field", "body is a list": "missing_field", "samples not a list": "bad_samples",
    "row not a list": "bad_row", "object missing a feature": "missing_feature", "NaN": "non_finite",
    "Infinity": "non_finite", "-Infinity": "non_finite", "too large for float32": "non_finite",
    "truncated JSON": "malformed_json", "empty body": "malformed_json", "oversize batch": "too_large",
    "announced gigabyte, refused before reading": "too_large", "stream id not a string": "bad_stream_id",
    "stream id with a slash": "bad_stream_id", "binary body, bad X-Stream": "bad_stream_id",
    "baseline for a stream that has one": "baseline_already_set", "a stream the worker does not hold": "unknown_stream",
}


@pytest.mark.parametrize("name,service,send,status,message", BATTERY, ids=[f"{b[1]}: {b[0]}" for b in BATTERY])
def test_bad_input_is_refused_with_status_and_message(request, name, service, send, status, message):
    answer = send(request.getfixturevalue(service))
    got, text = (answer.status_code, answer.text) if isinstance(answer, httpx.Response) else answer
    assert got == status, f"{name}: expected {status}, got {got}: {text}"
    detail = json.loads(text)["detail"]
    assert isinstance(detail, str) and message in detail, f"{name}: {detail!r} does not say {message!r}"


DETECT_CASES = [b for b in BATTERY if b[1] == D]


@pytest.mark.parametrize("name,send,status", [(b[0], b[2], b[3]) for b in DETECT_CASES],
                         ids=[b[0] for b in DETECT_CASES])
def test_detect_refusal_carries_its_stable_code(detect, name, send, status):
    answer = send(detect)
    got, text = (answer.status_code, answer.text) if isinstance(answer, httpx.Response) else answer
    assert got == status, f"{name}: expected {status}, got {got}: {text}"
    assert json.loads(text)["code"] == DETECT_CODES[name], text


def test_every_detect_case_has_a_code():
    assert {b[0] for b in DETECT_CASES} == set(DETECT_CODES)


# The stable code of every aggregator refusal above (services/protocol/errors.py): the worker branches on it.
AGGREGATOR_CODES = {
    "no token": "missing_token", "basic auth instead of bearer": "missing_token", "unknown token": "bad_token",
    "the stored hash used as token": "bad_token", "join under another worker's id": "wrong_worker",
    "join under an unknown id": "wrong_worker", "model without token": "missing_token",
    "join with another model spec": "spec_mismatch", "join with zero samples": "invalid_request",
    "join with stats of 3 features": "invalid_request", "join with malformed JSON": "invalid_request",
    "join without stats": "invalid_request", "update for a future round": "future_round",
    "update for a closed round": "stale_round", "update from a worker that has not joined": "not_joined",
    "a different second update": "conflicting_update", "round is not a number": "invalid_request",
    "truncated body": "invalid_update", "empty body": "invalid_update", "float16 weights": "invalid_update",
    "float64 weights": "too_large", "body twice the model": "too_large", "corrupted body (hash mismatch)":
    "hash_mismatch", "NaN weight": "non_finite", "infinite weight": "non_finite",
    "JSON instead of float32": "bad_media_type", "zero sample count": "invalid_request",
    "sample count not a number": "invalid_request", "more samples than declared at join": "too_many_samples",
    "missing sample count": "invalid_request", "NaN training loss": "non_finite",
    "announced gigabyte, refused before reading": "too_large", "long-poll before round -1": "invalid_request",
    "long-poll wait above 60 s": "invalid_request",
}
AGGREGATOR_CASES = [b for b in BATTERY if b[1] == A]


@pytest.mark.parametrize("name,send,status", [(b[0], b[2], b[3]) for b in AGGREGATOR_CASES],
                         ids=[b[0] for b in AGGREGATOR_CASES])
def test_aggregator_refusal_carries_its_stable_code(aggregator, name, send, status):
    answer = send(aggregator)
    got, text = (answer.status_code, answer.text) if isinstance(answer, httpx.Response) else answer
    assert got == status, f"{name}: expected {status}, got {got}: {text}"
    problem, code = json.loads(text), AGGREGATOR_CODES[name]
    assert set(problem) == {"code", "detail"} and problem["code"] == code, f"{name}: expected {code}: {text}"
    assert CODES[code].status == status, f"{name}: {code} is documented with status {CODES[code].status}"


def test_every_aggregator_case_has_a_code():
    assert {b[0] for b in AGGREGATOR_CASES} == set(AGGREGATOR_CODES)


def test_the_battery_is_large_and_distinct():
    assert len(BATTERY) >= 30
    assert len({(b[1], b[0]) for b in BATTERY}) == len(BATTERY)


def test_refusals_left_the_round_undisturbed_and_were_logged(aggregator):
    """After every bad input: the open round still holds exactly valve2's update, the next good update closes it with
    the FedAvg of the two, and each refusal left a log line."""
    status = aggregator.client.get("/v1/status").json()
    assert status["rounds_done"] == 0 and status["updates_in_open_round"] == ["valve2"]
    b = aggregator.initial - 0.25
    assert aggregator.push(weights=b, worker="other", X_Sample_Count="300").status_code == 200
    new = aggregator.client.get("/v1/model", params={"after_round": 0, "wait": 5}, headers=auth("other"))
    assert new.headers["x-model-round"] == "1"
    expected = (aggregator.accepted * 100 + b * 300) / 400
    np.testing.assert_allclose(decode_weights(new.content, N), expected, rtol=1e-6, atol=1e-7)
    refused = aggregator.stack.aggregator.log_path.read_text().count(" refused (")
    assert refused >= sum(1 for b in BATTERY if b[1] == A) - 1  # the hand-sent 413 may close before the log line
