"""The aggregator's routes in process (FastAPI's TestClient, no socket): every refusal is {"code", "detail"} with a
stable code whose status the OpenAPI documents, the telemetry route is the aggregator's, observability does not
import the aggregator. The real-process protocol tests are tests/aggregator/test_aggregator_api.py and the battery of bad
inputs, tests/reliability/test_bad_inputs.py."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.aggregator.app import create_app
from services.config import load_settings
from services.protocol.scaling import FeatureStats
from services.protocol.errors import CODES

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture()
def aggregator(tmp_path):
    settings = load_settings(environ={"FEDAD__AGGREGATOR__STATE_DIR": str(tmp_path / "aggregator"),
                                      "FEDAD__FEDERATION__MIN_WORKERS": "1", "FEDAD__FEDERATION__QUORUM": "1"})
    app = create_app(settings)
    with TestClient(app) as client:
        client.settings, client.state_dir = settings, tmp_path / "aggregator"
        client.federation = app.state.federation
        yield client


def auth(client, worker="valve1"):
    return {"Authorization": f"Bearer {client.settings.worker(worker).token}"}


def join_body(client, samples=50):
    rows = np.random.default_rng(0).normal(size=(samples, len(client.settings.data.features)))
    return {"spec_hash": client.federation.spec_hash, "sample_count": samples,
            "stats": FeatureStats.from_rows(rows).model_dump()}


def refused(response, status, code):
    assert response.status_code == status, response.text
    problem = response.json()
    assert set(problem) == {"code", "detail"} and problem["code"] == code, problem
    assert CODES[code].status == status
    return problem["detail"]


def test_unknown_routes_and_methods_answer_with_a_code(aggregator):
    refused(aggregator.get("/v1/nothing-here"), 404, "not_found")
    refused(aggregator.get("/static/nothing.js"), 404, "not_found")
    refused(aggregator.delete("/v1/model", headers=auth(aggregator)), 405, "method_not_allowed")


def test_telemetry_is_taken_by_the_aggregator_for_its_own_worker_only(aggregator):
    report = {"boot_id": "boot-1", "phase": "serving", "model_round": 2, "rows_scored": 10, "anomalies_flagged": 3}
    assert "belongs to worker valve1" in refused(
        aggregator.post("/v1/workers/valve2/telemetry", json=report, headers=auth(aggregator)), 403, "wrong_worker")
    refused(aggregator.post("/v1/workers/valve1/telemetry", json=report), 401, "missing_token")
    refused(aggregator.post("/v1/workers/valve1/telemetry", json={**report, "rows_scored": -1},
                            headers=auth(aggregator)), 422, "invalid_request")
    assert aggregator.get("/v1/status").json()["workers"] == {}, "refused reports leave no trace"

    assert aggregator.post("/v1/workers/valve1/telemetry", json=report, headers=auth(aggregator)).json() == {
        "accepted": True, "directive": None}
    assert aggregator.get("/v1/status").json()["workers"]["valve1"]["last_seen"] is not None
    shown = {w["id"]: w for w in aggregator.get("/v1/dashboard").json()["workers"]}["valve1"]
    assert (shown["phase"], shown["model_round"], shown["rows_scored"]) == ("serving", 2, 10)
    assert 'fedad_aggregator_telemetry_reports_total 1.0' in aggregator.get("/metrics").text


def test_a_refused_update_is_counted_by_its_code(aggregator):
    c = aggregator
    c.post("/v1/workers/valve1/join", json=join_body(c), headers=auth(c))
    refused(c.post("/v1/rounds/5/updates", content=b"\0" * 8, headers={
        **auth(c), "Content-Type": "application/octet-stream", "X-Sample-Count": "5", "X-Train-Loss": "0.1"}),
        409, "future_round")
    metrics = c.get("/metrics").text
    assert 'fedad_aggregator_updates_refused_total{reason="future_round"} 1.0' in metrics
    assert 'fedad_aggregator_requests_refused_total{endpoint="updates",status="409"} 1.0' in metrics


def test_a_state_dir_that_refuses_writes_is_storage_unavailable_on_join_and_readyz(aggregator):
    shutil.rmtree(aggregator.state_dir)
    aggregator.state_dir.write_text("not a directory")  # every write below it now fails, even as root
    detail = refused(aggregator.post("/v1/workers/valve1/join", json=join_body(aggregator), headers=auth(aggregator)),
                     503, "storage_unavailable")
    assert "retry later" in detail
    refused(aggregator.get("/readyz"), 503, "storage_unavailable")


def test_the_openapi_documents_every_refusal_with_its_codes(aggregator):
    spec = aggregator.get("/openapi.json").json()
    assert set(spec["components"]["schemas"]["Problem"]["required"]) == {"code", "detail"}
    documented = set()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                codes = re.findall(r"`([a-z_]+)`:", response["description"])
                assert codes, f"{method} {path} {status}: no code documented"
                assert all(CODES[c].status == int(status) for c in codes), f"{method} {path} {status}: {codes}"
                documented.update(codes)
    expected = {"missing_token", "bad_token", "wrong_worker", "spec_mismatch", "not_joined", "no_open_round",
                "stale_round", "future_round", "conflicting_update", "too_large", "bad_media_type", "invalid_update",
                "hash_mismatch", "non_finite", "too_many_samples", "invalid_request", "storage_unavailable",
                "client_disconnected", "unreadable_body"}
    assert expected <= documented, expected - documented


def test_the_readme_tables_every_registered_code_with_its_status(aggregator):
    """Every code of services/protocol/errors.py (the aggregator's, the workers' and device ingestion's) has its
    row, and every row is a registered code with its status; the aggregator documents none that is not registered."""
    spec = aggregator.get("/openapi.json").json()
    documented = set(re.findall(r"`([a-z_]+)`:", str(spec["paths"])))
    section = README.read_text().split("### REST protocol", 1)[1].split("\n### ", 1)[0]
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", section, re.M))
    assert documented <= set(CODES), f"documented but not registered: {documented - set(CODES)}"
    assert set(rows) == set(CODES), f"README's REST protocol table: missing {set(CODES) - set(rows)}, " \
                                    f"not registered {set(rows) - set(CODES)}"
    assert all(CODES[code].status == int(status) for code, status in rows.items()), rows


def test_observability_and_protocol_import_nothing_of_the_aggregator():
    """Layering: protocol at the bottom, observability above the aggregator; the aggregator pushes to it."""
    probe = ("import sys, services.observability.dashboard, services.observability.telemetry, "
             "services.protocol.errors, services.protocol.messages, services.protocol.codec; "
             "print(sorted(m for m in sys.modules if m.startswith('services.aggregator')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
