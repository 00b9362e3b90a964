"""Enrollment, real processes on loopback: a node that is in no config enrolls with the fleet's bootstrap token (or
its certificate from the federation's CA), gets its own identity, trains beside a configured worker, and is revoked
for good; bad credentials get a 4xx and store nothing."""

from __future__ import annotations

import hashlib
import json
import signal
import sys

import httpx
import pytest

from benchmarks.common import Process, free_port, newest_round, wait_until
from services.config import TlsSettings, load_settings
from services.security.certs import make_certs
from services.security.tls import client_context
from services.worker.enrollment import IDENTITY, enrolled_worker
from support import Stack

FLEET_TOKEN = "fleet-bootstrap-token-0123456789"
ADMIN = {"Authorization": "Bearer dev-admin-token"}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_a_node_enrolls_with_the_fleet_token_trains_and_once_revoked_is_refused_for_good(tmp_path):
    node_port = free_port()
    stack = Stack(tmp_path, workers=["valve1"], rounds=2, epochs=1, min_workers=2, quorum=2, overrides={
        "FEDAD__ENROLLMENT__TOKEN": FLEET_TOKEN,
        "FEDAD__ENROLLMENT__NODE__PARTITION": "[valve2]",  # what every enrolled node reads (here: one node)
        "FEDAD__ENROLLMENT__NODE__PORT": str(node_port),
        "FEDAD__ENROLLMENT__NODE__STATE_DIR": str(tmp_path / "{id}")})
    node_url = f"http://127.0.0.1:{node_port}"
    node = Process("pump-7", [sys.executable, "-m", "services.worker", "--id", "pump-7"], stack.env, tmp_path,
                   node_url)
    stack.start()
    node.start().wait_healthy(120)
    agg = stack.agg_url
    try:
        def trained():
            s, w = stack.status(), httpx.get(f"{node_url}/v1/status", timeout=10).json()
            return s if s and s["rounds_done"] >= 2 and newest_round(w) == 2 else None
        status = wait_until(trained, 240, "two rounds with the enrolled node")
        assert all(set(h["workers"]) == {"valve1", "pump-7"} for h in status["history"]), status["history"]
        identity = (tmp_path / "pump-7" / IDENTITY).read_text()
        assert '"enrolled": true' in identity and "pump-7" in identity
        listed = httpx.get(f"{agg}/v1/admin/nodes", headers=ADMIN).json()
        assert [(n["node_id"], n["via"], n["revoked_at"]) for n in listed["nodes"]] == [("pump-7", "token", None)]
        assert FLEET_TOKEN not in (tmp_path / "aggregator" / "nodes.log").read_text(), "only digests are kept"

        # a flood of bad credentials: 4xx each, nothing stored
        log_size = (tmp_path / "aggregator" / "nodes.log").stat().st_size
        body = {"token_sha256": digest("x" * 20), "node_id": "intruder"}
        for headers, status_code, code in (
                (bearer("not-the-fleet-token-at-all"), 403, "bad_enrollment_credential"),
                ({}, 401, "missing_token"), ({"Authorization": "Basic Zm9vOmJhcg=="}, 401, "missing_token"),
                (bearer("dev-token-valve1"), 403, "bad_enrollment_credential"),  # a worker's token is no credential
                (bearer(FLEET_TOKEN), None, None)):  # the right token, a body of the wrong shape
            if status_code is None:
                for bad in ({"token_sha256": "nope"}, {"token_sha256": digest("y"), "node_id": "../etc"},
                            {"token_sha256": digest("y"), "extra": 1}):
                    answer = httpx.post(f"{agg}/v1/enroll", json=bad, headers=headers)
                    assert (answer.status_code, answer.json()["code"]) == (422, "invalid_request"), answer.text
                continue
            for _ in range(20):
                answer = httpx.post(f"{agg}/v1/enroll", json=body, headers=headers)
                assert (answer.status_code, answer.json()["code"]) == (status_code, code)
        huge = httpx.post(f"{agg}/v1/enroll", content=b"{" + b" " * 5000 + b"}", headers=bearer(FLEET_TOKEN))
        assert (huge.status_code, huge.json()["code"]) == (413, "too_large")
        assert (tmp_path / "aggregator" / "nodes.log").stat().st_size == log_size
        assert httpx.get(f"{agg}/v1/admin/nodes", headers=ADMIN).json()["total"] == 1
        metrics = httpx.get(f"{agg}/metrics").text
        assert 'fedad_aggregator_enrollments_refused_total{reason="bad_enrollment_credential"} 40.0' in metrics
        assert "fedad_aggregator_nodes_enrolled 1.0" in metrics

        # the same id with another token is someone else; the worker's own token is no enrollment
        taken = httpx.post(f"{agg}/v1/enroll", json={"token_sha256": digest("z" * 20), "node_id": "pump-7"},
                           headers=bearer(FLEET_TOKEN))
        assert (taken.status_code, taken.json()["code"]) == (409, "already_enrolled")
        configured = httpx.post(f"{agg}/v1/enroll", json={"token_sha256": digest("z" * 20), "node_id": "valve1"},
                                headers=bearer(FLEET_TOKEN))
        assert (configured.status_code, configured.json()["code"]) == (409, "already_enrolled")

        # revocation: durable, refused on every route, and the worker stops federating (still serving)
        refused = httpx.delete(f"{agg}/v1/admin/nodes/valve1", headers=ADMIN)
        assert (refused.status_code, refused.json()["code"]) == (409, "configured_worker")
        assert httpx.delete(f"{agg}/v1/admin/nodes/ghost", headers=ADMIN).status_code == 404
        assert httpx.delete(f"{agg}/v1/admin/nodes/pump-7", headers=bearer("dev-token-valve1")).status_code == 403
        revoked = httpx.delete(f"{agg}/v1/admin/nodes/pump-7", headers=ADMIN)
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        assert httpx.post(f"{agg}/v1/admin/rounds", headers=ADMIN).status_code == 202  # the idle node asks again
        stopped = wait_until(lambda: (s := httpx.get(f"{node_url}/v1/status", timeout=10).json())
                             and s["phase"] == "failed" and s, 90, "the revoked node to stop federating")
        assert "403 revoked" in stopped["last_error"]
        assert httpx.get(f"{node_url}/readyz").status_code == 200, "it keeps serving the model it has"
        token = json.loads((tmp_path / "pump-7" / IDENTITY).read_text())["token"]
        stack.aggregator.kill(signal.SIGKILL)
        stack.aggregator.start().wait_healthy()
        for method, path in (("GET", "/v1/model"), ("GET", "/v1/round"), ("POST", "/v1/workers/pump-7/report")):
            answer = httpx.request(method, f"{agg}{path}", headers=bearer(token), json={} if method == "POST" else None)
            assert (answer.status_code, answer.json()["code"]) == (403, "revoked"), (path, answer.text)
        again = httpx.post(f"{agg}/v1/enroll", json={"token_sha256": digest(token), "node_id": "pump-7"},
                           headers=bearer(FLEET_TOKEN))
        assert (again.status_code, again.json()["code"]) == (403, "revoked")
        assert httpx.get(f"{agg}/v1/status").json()["workers_total"] == 1, "the revoked node left the run"
    finally:
        node.stop()
        stack.stop()


def test_a_node_enrolls_with_its_certificate_and_the_certificate_decides_its_id(tmp_path):
    certs = tmp_path / "certs"
    make_certs(certs, ["valve1", "pump-c", "pump-w"])
    stack = Stack(tmp_path, workers=["valve1"], min_workers=1, quorum=1)
    https = f"https://127.0.0.1:{stack.agg_port}"
    stack.env.update({"FEDAD__TLS__ENABLED": "true", "FEDAD__TLS__DIR": str(certs), "FEDAD__AGGREGATOR__URL": https,
                      "FEDAD__ENROLLMENT__CERTIFICATES": "true",
                      "FEDAD__ENROLLMENT__NODE__STATE_DIR": str(tmp_path / "{id}")})
    tls = TlsSettings(enabled=True, dir=certs)
    stack.aggregator.start()
    try:
        wait_until(lambda: _get(https, "/healthz", client_context(tls, "pump-c")), 60, "the TLS aggregator")
        with httpx.Client(base_url=https, verify=client_context(tls, "pump-c"), timeout=10) as node:
            token = "pump-c-own-token-0123456789"
            mismatch = node.post("/v1/enroll", json={"token_sha256": digest(token), "node_id": "someone-else"})
            assert (mismatch.status_code, mismatch.json()["code"]) == (403, "certificate_mismatch")
            enrolled = node.post("/v1/enroll", json={"token_sha256": digest(token)})
            assert enrolled.status_code == 200, enrolled.text
            assert (enrolled.json()["node_id"], enrolled.json()["via"], enrolled.json()["new"]) == (
                "pump-c", "certificate", True)
            assert node.get("/v1/model", headers=bearer(token)).status_code == 200
            # the certificate proves the id, so it may replace a lost token; the old one then is nobody's
            replaced = node.post("/v1/enroll", json={"token_sha256": digest(token + "-new")})
            assert replaced.status_code == 200 and replaced.json()["new"]
            assert node.get("/v1/model", headers=bearer(token)).json()["code"] == "bad_token"
        with httpx.Client(base_url=https, verify=client_context(tls, "valve1"), timeout=10) as configured:
            answer = configured.post("/v1/enroll", json={"token_sha256": digest("v" * 20)})
            assert (answer.status_code, answer.json()["code"]) == (409, "already_enrolled")

        # the worker's own enrollment code, with its certificate and no bootstrap token
        settings = load_settings(environ=stack.env)
        worker = enrolled_worker(settings, "pump-w", attempts=5)
        assert worker.id == "pump-w" and worker.state_dir == tmp_path / "pump-w"
        with httpx.Client(base_url=https, verify=client_context(tls, "pump-w"), timeout=10) as client:
            assert client.get("/v1/model", headers=bearer(worker.token)).status_code == 200
        assert enrolled_worker(settings, "pump-w", attempts=1).token == worker.token, "enrolled once, kept"
        with httpx.Client(base_url=https, verify=client_context(tls, "valve1"), timeout=10) as admin:
            nodes = admin.get("/v1/admin/nodes", headers=ADMIN).json()["nodes"]
        assert sorted((n["node_id"], n["via"]) for n in nodes) == [("pump-c", "certificate"),
                                                                   ("pump-w", "certificate")]
    finally:
        stack.stop()


def _get(base: str, path: str, verify) -> dict | None:
    try:
        return httpx.get(f"{base}{path}", verify=verify, timeout=5).json()
    except httpx.HTTPError:
        return None


@pytest.mark.parametrize("env,message", [
    ({"FEDAD__WORKERS": "[]"}, "workers is empty and enrollment is off"),
    ({"FEDAD__ENROLLMENT__CERTIFICATES": "true"}, "enrollment.certificates needs tls.enabled"),
    ({"FEDAD__ENROLLMENT__TOKEN": "short"}, "enrollment.token: String should have at least 16 characters"),
    ({"FEDAD__AGGREGATOR__ROLE": "site"}, "role site needs upstream.url, upstream.id, upstream.token"),
])
def test_fleet_settings_are_validated_with_the_key_and_reason(env, message):
    from services.config import ConfigError

    with pytest.raises(ConfigError) as error:
        load_settings(environ=env)
    assert message in str(error.value)
