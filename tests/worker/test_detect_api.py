"""POST /detect on a real worker: valid batches, rows as objects, a far-off row flagged, 503 before a first model,
OpenAPI docs. Bad inputs: tests/reliability/test_bad_inputs.py."""

import httpx
import numpy as np
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
    # three copies of a row make three equal windows, so equal scores: equal to the last bit of float32, not beyond,
    # because onnxruntime's int8 GEMM takes rows in pairs and may round the second of a pair one unit apart
    assert np.ptp(body["scores"]) <= 2 * np.spacing(np.float32(max(body["scores"]))), body["scores"]
    assert len(set(body["is_anomaly"])) == 1


def test_rows_as_objects_keyed_by_feature_name_score_the_same(client):
    as_lists = client.post("/detect", json={"samples": [ROW]}).json()
    as_objects = client.post("/detect", json={"samples": [dict(zip(reversed(FEATURES), reversed(ROW)))]}).json()
    assert as_objects["scores"] == as_lists["scores"]


def test_a_far_off_row_is_flagged(client):
    broken = list(ROW)
    broken[FEATURES.index("Current")] = 40.0  # the pump draws ~1–2 A
    body = client.post("/detect", json={"samples": [ROW, broken]}).json()
    assert body["is_anomaly"][1] is True and body["scores"][1] > 10 * body["scores"][0]


def test_503_before_a_first_model_then_ready_probes(tmp_path):
    """A worker whose aggregator is unreachable has no model: /detect says so, /readyz is 503, /healthz is 200."""
    stack = Stack(tmp_path, workers=["valve2"], overrides={"FEDAD__AGGREGATOR__URL": f"http://127.0.0.1:{free_port()}"})
    worker = stack.worker_services["valve2"].start().wait_healthy()
    try:
        url = stack.worker_url("valve2")
        r = httpx.post(f"{url}/detect", json={"samples": [ROW]})
        assert r.status_code == 503 and r.json()["code"] == "no_model"
        assert "no model to serve yet" in r.json()["detail"]
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and ready.json()["code"] == "no_model"
        streamed = httpx.post(f"{url}/detect", json={"stream": "pump-1", "samples": [ROW]})
        assert streamed.status_code == 503 and streamed.json()["code"] == "no_model"
        status = httpx.get(f"{url}/v1/status").json()
        assert status["model_round"] is None
    finally:
        worker.kill()


def test_unknown_routes_and_methods_answer_with_a_code(client):
    assert client.get("/nowhere").json() == {"code": "not_found", "detail": "Not Found"}
    wrong_method = client.get("/detect")
    assert wrong_method.status_code == 405 and wrong_method.json()["code"] == "method_not_allowed"
    bad_query = client.get("/v1/streams", params={"limit": -1})
    assert bad_query.status_code == 422 and bad_query.json()["code"] == "invalid_request"
    assert "limit" in bad_query.json()["detail"]


def test_openapi_docs_on_both_services(trained_stack):
    for url in (trained_stack.agg_url, trained_stack.worker_url("valve1")):
        spec = httpx.get(f"{url}/openapi.json").json()
        assert spec["paths"]
        assert httpx.get(f"{url}/docs").status_code == 200
    assert "/detect" in httpx.get(f"{trained_stack.worker_url('valve1')}/openapi.json").json()["paths"]
