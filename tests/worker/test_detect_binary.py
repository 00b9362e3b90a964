"""POST /detect with the binary body (application/octet-stream: rows of little-endian float32) on a real worker:
the same scores as JSON, the baseline header, and every bad binary body refused with a message."""

import numpy as np
import pytest

import httpx
from services.config import load_settings

SETTINGS = load_settings()
FEATURES = SETTINGS.data.features
ROW = [0.0265878, 0.0401113, 1.3302, 0.054711, 79.3366, 26.0199, 233.062, 32.0]
BINARY = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def client(trained_stack):
    with httpx.Client(base_url=trained_stack.worker_url("valve1"), timeout=30) as c:
        yield c


def rows(n: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    return (np.array(ROW) * (1 + 0.01 * rng.standard_normal((n, len(ROW))))).astype("<f4")


@pytest.mark.parametrize("n", [1, 3, 300])
def test_binary_body_scores_like_json(client, n):
    batch = rows(n)
    as_json = client.post("/detect", json={"samples": batch.tolist()})
    as_binary = client.post("/detect", content=batch.tobytes(), headers=BINARY)
    assert as_json.status_code == as_binary.status_code == 200, as_binary.text
    assert as_binary.json()["scores"] == as_json.json()["scores"]
    assert as_binary.json()["is_anomaly"] == as_json.json()["is_anomaly"]


def test_binary_baseline_rows_header_matches_json_baseline(client):
    batch = rows(40)
    as_json = client.post("/detect", json={"baseline": batch[:25].tolist(), "samples": batch[25:].tolist()})
    as_binary = client.post("/detect", content=batch.tobytes(), headers={**BINARY, "X-Baseline-Rows": "25"})
    assert as_json.status_code == as_binary.status_code == 200, as_binary.text
    assert len(as_binary.json()["scores"]) == 15
    np.testing.assert_allclose(as_binary.json()["scores"], as_json.json()["scores"], rtol=1e-6)


WIDTH = len(FEATURES) * 4
BAD_BINARY = [
    ("empty", b"", {}, 422, "empty_batch", "binary body is empty"),
    ("not whole rows", b"\0" * (WIDTH + 3), {}, 422, "partial_row", "not a whole number of rows"),
    ("NaN", np.array([ROW[:7] + [np.nan]], "<f4").tobytes(), {}, 422, "non_finite", "is not a finite number"),
    ("inf", np.array([[np.inf] + ROW[1:]], "<f4").tobytes(), {}, 422, "non_finite", "is not a finite number"),
    ("baseline header not a number", rows(30).tobytes(), {"X-Baseline-Rows": "many"}, 422, "bad_baseline",
     "whole number of rows"),
    ("baseline takes every row", rows(30).tobytes(), {"X-Baseline-Rows": "30"}, 422, "empty_batch",
     "no samples are left"),
    ("baseline too short", rows(30).tobytes(), {"X-Baseline-Rows": "1"}, 422, "bad_baseline", "at least"),
    ("too many rows", b"\0" * WIDTH * (SETTINGS.serving.max_batch_rows + 1), {}, 413, "too_large",
     "exceeds the limit"),
    ("bad stream id", rows(3).tobytes(), {"X-Stream": "a b"}, 422, "bad_stream_id", "stream id 'a b'"),
]


@pytest.mark.parametrize("name,body,headers,status,code,message", BAD_BINARY, ids=[b[0] for b in BAD_BINARY])
def test_bad_binary_body_gets_4xx_with_a_code_and_message(client, name, body, headers, status, code, message):
    r = client.post("/detect", content=body, headers={**BINARY, **headers})
    assert r.status_code == status, r.text
    assert r.json()["code"] == code and message in r.json()["detail"]


def test_binary_body_with_a_stream_header_scores_like_json_with_a_stream(client):
    batch = rows(40)
    as_json = client.post("/detect", json={"stream": "bin-json", "baseline": batch[:25].tolist(),
                                           "samples": batch[25:].tolist()}).json()
    as_binary = client.post("/detect", content=batch.tobytes(),
                            headers={**BINARY, "X-Baseline-Rows": "25", "X-Stream": "bin-raw"}).json()
    assert as_binary["stream"] == "bin-raw" and as_binary["stream_rows"] == 0
    np.testing.assert_allclose(as_binary["scores"], as_json["scores"], rtol=1e-6)
    more = client.post("/detect", content=batch[:2].tobytes(), headers={**BINARY, "X-Stream": "bin-raw"}).json()
    assert more["stream_rows"] == 15 and len(more["scores"]) == 2


def test_openapi_documents_the_binary_body(client):
    body = client.get("/openapi.json").json()["paths"]["/detect"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/octet-stream"} <= set(body)
