"""POST /detect on a real worker: valid batches, every bad input of the contract, 503 before a first model."""

import socket

import httpx
import pytest

from services.config import load_settings
from support import Stack, free_port

SETTINGS = load_settings()
FEATURES = SETTINGS.data.features
ROW = [0.0265878, 0.0401113, 1.3302, 0.054711, 79.3366, 26.0199, 233.062, 32.0]


@pytest.fixture(scope="module")
def client(trained_stack):
    with httpx.Client(base_url=trained_stack.worker_url("valve1"), timeout=30) as c:
        yield c


def test_valid_batch_gets_one_score_per_row(client):
    r = client.post("/detect", json={"samples": [ROW, ROW, ROW]})
    assert r.status_code == 200
    body = r.json()
    assert len(body["scores"]) == len(body["is_anomaly"]) == 3
    assert body["model_round"] == 2 and body["threshold"] > 0
    assert all(s >= 0 for s in body["scores"])


def test_rows_as_objects_keyed_by_feature_name_score_the_same(client):
    as_lists = client.post("/detect", json={"samples": [ROW]}).json()
    as_objects = client.post("/detect", json={"samples": [dict(zip(reversed(FEATURES), reversed(ROW)))]}).json()
    assert as_objects["scores"] == as_lists["scores"]


def test_a_far_off_row_is_flagged(client):
    broken = list(ROW)
    broken[FEATURES.index("Current")] = 40.0  # the pump draws ~1–2 A
    body = client.post("/detect", json={"samples": [ROW, broken]}).json()
    assert body["is_anomaly"][1] is True and body["scores"][1] > 10 * body["scores"][0]


BAD_INPUTS = [
    ("wrong width", {"samples": [ROW[:5]]}, 422, "has 5 values, expected 8"),
    ("too wide", {"samples": [ROW + [1.0]]}, 422, "has 9 values, expected 8"),
    ("string value", {"samples": [ROW[:7] + ["32.0"]]}, 422, "is not a number"),
    ("boolean value", {"samples": [ROW[:7] + [True]]}, 422, "is not a number"),
    ("null value", {"samples": [ROW[:7] + [None]]}, 422, "is not a number"),
    ("empty batch", {"samples": []}, 422, "empty"),
    ("missing field", {"rows": [ROW]}, 422, 'missing field "samples"'),
    ("samples not a list", {"samples": "1,2,3"}, 422, "must be a list"),
    ("row not a list", {"samples": [5]}, 422, "expected a list of 8 numbers"),
    ("object missing a feature", {"samples": [dict(zip(FEATURES[:-1], ROW))]}, 422, "missing feature"),
    ("body is a list", [ROW], 422, 'missing field "samples"'),
]


@pytest.mark.parametrize("name,payload,status,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_4xx_with_a_message(client, name, payload, status, message):
    r = client.post("/detect", json=payload)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


@pytest.mark.parametrize("raw,message", [
    (b'{"samples": [[NaN, 1, 1, 1, 1, 1, 1, 1]]}', "NaN and Infinity are not allowed"),
    (b'{"samples": [[Infinity, 1, 1, 1, 1, 1, 1, 1]]}', "NaN and Infinity are not allowed"),
    (b'{"samples": [[1e39, 1, 1, 1, 1, 1, 1, 1]]}', "too large for float32"),
    (b'{"samples": [[1, 2', "not valid JSON"),
    (b"", "not valid JSON"),
])
def test_non_finite_and_malformed_json_get_422(client, raw, message):
    r = client.post("/detect", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]


def test_oversize_batch_gets_413(client):
    rows = SETTINGS.serving.max_batch_rows + 1
    r = client.post("/detect", json={"samples": [ROW] * rows})
    assert r.status_code == 413 and f"{rows} rows exceeds the limit" in r.json()["detail"]


def test_oversize_body_is_refused_before_reading_it(trained_stack):
    """A client announcing a gigabyte gets 413 at once, from the headers alone (sent by hand: httpx checks lengths)."""
    port = trained_stack.worker_ports["valve1"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000000000\r\n\r\n{\"samples\": [")
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "exceeds the limit" in answer


def test_503_before_a_first_model_then_ready_probes(tmp_path):
    """A worker whose aggregator is unreachable has no model: /detect says so, /readyz is 503, /healthz is 200."""
    stack = Stack(tmp_path, workers=["valve2"], overrides={"FEDAD__AGGREGATOR__URL": f"http://127.0.0.1:{free_port()}"})
    worker = stack.worker_services["valve2"].start().wait_healthy()
    try:
        url = stack.worker_url("valve2")
        r = httpx.post(f"{url}/detect", json={"samples": [ROW]})
        assert r.status_code == 503 and "no model to serve yet" in r.json()["detail"]
        assert httpx.get(f"{url}/readyz").status_code == 503
        status = httpx.get(f"{url}/v1/status").json()
        assert status["model_round"] is None
    finally:
        worker.kill()


def test_openapi_docs_on_both_services(trained_stack):
    for url in (trained_stack.agg_url, trained_stack.worker_url("valve1")):
        spec = httpx.get(f"{url}/openapi.json").json()
        assert spec["paths"]
        assert httpx.get(f"{url}/docs").status_code == 200
    assert "/detect" in httpx.get(f"{trained_stack.worker_url('valve1')}/openapi.json").json()["paths"]
