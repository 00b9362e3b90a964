"""Identity: hashed worker tokens compared in constant time, a worker acts only under its own id, mutual TLS."""

from __future__ import annotations

import ssl

import httpx
import pytest

from services.config import ConfigError, TlsSettings, load_settings
from services.security.certs import make_certs
from services.security.tls import client_context
from services.security.tokens import TokenTable, hash_token
from support import Stack, wait_until

SETTINGS = load_settings()
TOKENS = {w.id: w.token for w in SETTINGS.workers}
FATAL_STATUS = {"bad_token": 403, "spec_mismatch": 409}


def test_token_table_keeps_only_digests_and_identifies_by_token():
    table = TokenTable.from_settings(SETTINGS.workers)
    stored = {d.hex() for d in table._by_digest}
    assert stored == {hash_token(t) for t in TOKENS.values()}
    assert not any(t.encode() in d for t in TOKENS.values() for d in table._by_digest)
    assert table.identify(TOKENS["valve1"]) == "valve1"
    assert table.identify(TOKENS["valve1"] + "x") is None
    assert table.identify(hash_token(TOKENS["valve1"])) is None, "the stored digest is not a credential"


@pytest.mark.parametrize("env,message", [
    ({"FEDAD__FEDERATION__STRATEGY": "krum"}, "federation.strategy: Input should be 'fedavg', 'median' or"),
    ({"FEDAD__FEDERATION__TRIM_FRACTION": "0.5"}, "federation.trim_fraction: Input should be less than 0.5"),
    ({"FEDAD__FEDERATION__CLIP_NORM": "0"}, "federation.clip_norm: Input should be greater than 0"),
    ({"FEDAD__PRIVACY__NOISE_MULTIPLIER": "-1"}, "privacy.noise_multiplier: Input should be greater than or equal"),
    ({"FEDAD__PRIVACY__NOISE_MULTIPLIER": "1", "FEDAD__FEDERATION__STRATEGY": "median"},
     "privacy.side server calibrates its noise to FedAvg"),
    ({"FEDAD__TLS__ENABLED": "true", "FEDAD__AGGREGATOR__URL": "http://127.0.0.1:8080"},
     "tls.enabled is true but aggregator.url is http://"),
    ({"FEDAD__WORKERS__VALVE1__TOKEN": "null"}, "give token (the worker needs it) or token_sha256"),
    ({"FEDAD__WORKERS__VALVE1__TOKEN_SHA256": "a" * 64}, "token_sha256 is not the SHA-256 of token"),
    ({"FEDAD__WORKERS__VALVE1__TOKEN_SHA256": "not-hex"}, "workers.0.token_sha256: String should match pattern"),
])
def test_security_settings_are_validated_with_the_key_and_reason(env, message):
    with pytest.raises(ConfigError) as error:
        load_settings(environ=env)
    assert message in str(error.value)


def test_aggregator_with_hashed_tokens_only_authenticates_the_worker(tmp_path):
    """The aggregator's config holds token_sha256 and no plaintext token; the worker's plaintext token works."""
    overrides = {f"FEDAD__WORKERS__{w.upper()}__TOKEN": "null" for w in TOKENS}
    overrides.update({f"FEDAD__WORKERS__{w.upper()}__TOKEN_SHA256": hash_token(t) for w, t in TOKENS.items()})
    stack = Stack(tmp_path, workers=["valve2"], min_workers=1, quorum=1, overrides=overrides)
    stack.aggregator.start().wait_healthy()
    try:
        headers = {"Authorization": f"Bearer {TOKENS['valve2']}"}
        assert httpx.get(f"{stack.agg_url}/v1/model", headers=headers).status_code == 200
        wrong = httpx.get(f"{stack.agg_url}/v1/model", headers={"Authorization": f"Bearer {TOKENS['valve2']}!"})
        assert (wrong.status_code, wrong.json()["code"]) == (403, "bad_token")
    finally:
        stack.stop()
    # and the worker refuses to start without its plaintext token
    worker = stack.worker_services["valve2"].start()
    assert worker.proc.wait(timeout=60) == 2
    assert "workers.valve2.token is required on the worker" in worker.log()


@pytest.mark.parametrize("worker_env,code", [
    ({"FEDAD__WORKERS__VALVE2__TOKEN": "a-token-the-aggregator-does-not-know"}, "bad_token"),
    ({"FEDAD__MODEL__HIDDEN": "[5, 3, 5]"}, "spec_mismatch"),
])
def test_a_worker_stops_on_a_fatal_code_and_says_which(tmp_path, worker_env, code):
    """A refusal no retry can cure stops the federation loop at once (the worker keeps serving), named by its code."""
    stack = Stack(tmp_path, workers=["valve2"], min_workers=1, quorum=1)
    worker = stack.worker_services["valve2"]
    worker.env = {**stack.env, **worker_env}
    stack.start()
    try:
        status = wait_until(lambda: (s := stack.worker_status("valve2")) and s["phase"] == "failed" and s, 60,
                            "the worker to stop federating")
        assert f"({FATAL_STATUS[code]} {code})" in status["last_error"], status
        assert stack.status()["workers"] == {}, "the aggregator took nothing from the refused worker"
        assert worker.proc.poll() is None, "the worker process keeps running (and serving)"
    finally:
        stack.stop()


def test_mutual_tls_federation_runs_and_refuses_clients_without_a_federation_certificate(tmp_path):
    certs = tmp_path / "certs"
    make_certs(certs, list(TOKENS))
    stranger = tmp_path / "stranger"
    make_certs(stranger, ["valve1"])  # a certificate from another CA
    stack = Stack(tmp_path, rounds=1, epochs=1)
    https = f"https://127.0.0.1:{stack.agg_port}"
    stack.env.update({"FEDAD__TLS__ENABLED": "true", "FEDAD__TLS__DIR": str(certs), "FEDAD__AGGREGATOR__URL": https})
    tls = TlsSettings(enabled=True, dir=certs)
    good = client_context(tls, "valve1")
    headers = {"Authorization": f"Bearer {TOKENS['valve1']}"}
    stack.aggregator.start()
    for s in stack.worker_services.values():
        s.start()
    try:
        with httpx.Client(base_url=https, verify=good, timeout=10) as client:
            def status():
                if stack.aggregator.proc.poll() is not None:
                    raise AssertionError(stack.aggregator.log())
                try:
                    return client.get("/v1/status").json()
                except httpx.HTTPError:
                    return None
            wait_until(status, 60, "the TLS aggregator")
            final = wait_until(lambda: (s := status()) and s["phase"] in ("idle", "done") and s, 180,
                               "one round over mutual TLS")
            assert set(final["history"][0]["workers"]) == set(TOKENS)
            assert client.get("/v1/model", headers=headers).status_code == 200
            refused = client.get("/v1/model", headers={"Authorization": "Bearer nope-nope"})
            assert (refused.status_code, refused.json()["code"]) == (403, "bad_token")

        no_cert = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        other_ca = client_context(TlsSettings(enabled=True, dir=stranger), "valve1")
        other_ca.load_verify_locations(str(certs / "ca.crt"))  # it trusts the server, but the server not it
        for name, verify in (("no client certificate", no_cert), ("certificate of another CA", other_ca)):
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"{https}/v1/model", headers=headers, verify=verify, timeout=10)
        with pytest.raises(httpx.HTTPError):  # the server's certificate is not trusted without the CA
            httpx.get(f"{https}/healthz", timeout=10)
        plain = None
        try:
            plain = httpx.get(f"http://127.0.0.1:{stack.agg_port}/healthz", timeout=10)
        except httpx.HTTPError:
            pass
        assert plain is None or plain.status_code != 200, "plain HTTP gets nothing from the TLS port"
    finally:
        stack.stop()
