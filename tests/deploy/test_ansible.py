"""The playbooks: syntax, lint, and the parts that run for real on this machine (connection: local).

Real runs: data placement into a temporary root (the layout the manifests' hostPath volumes expect, then used
by a real worker), the render play with vault tokens, the smoke check against a real aggregator and real
workers on 127.0.0.1, and `make deploy-check`'s playbook run up to the missing GCP credentials.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from services.security.tokens import hash_token

from .conftest import ANSIBLE_DIR, GCP_AGGREGATOR_URL, REPO, VAULT_TOKENS, lint_result, playbook

pytestmark = pytest.mark.deploy

PLAYBOOKS = sorted(p.name for p in ANSIBLE_DIR.glob("*.yml"))
SHARED_DATA = Path(os.environ.get("FEDAD_DATA_DIR") or REPO.parent / "shared" / "data")


def recap(output: str) -> dict[str, int]:
    """The PLAY RECAP counters of localhost."""
    line = re.search(r"^localhost\s+:(.*)$", output, re.M).group(1)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def write_vars(path: Path, values: dict) -> str:
    path.write_text(json.dumps(values))
    return f"@{path}"


# --- static checks ------------------------------------------------------------------------------------------

def test_there_are_the_playbooks_the_docs_name():
    assert {"site.yml", "teardown.yml", "local.yml", "render.yml"} <= set(PLAYBOOKS)


@pytest.mark.parametrize("inventory", ["inventory/gcp", "inventory/local"])
def test_every_playbook_passes_syntax_check(inventory):
    result = playbook(PLAYBOOKS[0], *[str(ANSIBLE_DIR / p) for p in PLAYBOOKS[1:]], "--syntax-check",
                      inventory=inventory)
    assert [f"playbook: {ANSIBLE_DIR / p}" for p in PLAYBOOKS] == re.findall(r"^playbook: .*$", result.stdout, re.M)


def test_ansible_lint_production_profile_is_clean():
    code, output = lint_result()
    assert code == 0, output[-6000:]
    assert "Profile 'production' was required, and it passed" in output, output[-2000:]


# --- deploy-check: runs until it needs the cloud, then names the variables --------------------------------------

def test_check_mode_stops_at_the_missing_gcp_credentials_and_names_the_variables():
    result = playbook("site.yml", "--check", "--diff", inventory="inventory/gcp", check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    for variable in ("GCP_PROJECT", "GCP_AUTH_KIND", "GCP_SERVICE_ACCOUNT_FILE", "FEDAD_ADMIN_CIDR"):
        assert variable in out
    assert set(re.findall(r"^(\S+)\s+: ok=", out, re.M)) == {"localhost"}, "nothing but the preflight ran"


# --- data placement, for real ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict:
    """A temporary node: config.yaml on free loopback ports (other's partition given as two files instead of its
    folder), and the data play run once for real with the SKAB data, placing two workers' partitions and state
    dirs and the aggregator's state dir under a temporary root instead of /var/lib/fedad."""
    if not (SHARED_DATA / "skab" / "valve1").is_dir():
        pytest.skip(f"no SKAB data at {SHARED_DATA}/skab (set FEDAD_DATA_DIR)")
    tmp = tmp_path_factory.mktemp("site")
    ports = {"aggregator": free_port(), "valve1": free_port(), "valve2": free_port(), "other": free_port()}
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["aggregator"].update(port=ports["aggregator"], url=f"http://127.0.0.1:{ports['aggregator']}")
    for w in config["workers"]:
        w["port"] = ports[w["id"]]
    config["workers"][2]["partition"] = ["other/3.csv", "other/4.csv"]
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    extra = write_vars(tmp / "data.json", {"fedad_root": str(tmp / "root"), "fedad_uid": os.getuid(),
                                           "fedad_data_dir": str(SHARED_DATA),
                                           "fedad_config_file": str(tmp / "config.yaml"),
                                           "fedad_data_workers": ["valve1", "other"]})
    first = playbook("local.yml", "--tags", "data", "-e", extra)
    return {"tmp": tmp, "root": tmp / "root", "config": tmp / "config.yaml", "ports": ports, "extra": extra,
            "first": first}


def test_data_play_places_each_partition_and_state_dir_idempotently(site):
    root = site["root"]
    assert recap(site["first"].stdout)["changed"] > 0
    expected = {f"valve1/{p.name}" for p in (SHARED_DATA / "skab" / "valve1").glob("*.csv")}
    expected |= {"other/3.csv", "other/4.csv"}
    placed = {str(p.relative_to(root / "data" / "skab")) for p in (root / "data").rglob("*") if p.is_file()}
    assert placed == expected, "each worker's partition entries, and nothing else"
    assert (root / "data" / "skab" / "other" / "3.csv").read_bytes() == (SHARED_DATA / "skab/other/3.csv").read_bytes()
    assert not (root / "state" / "valve2").exists()
    for name in ("valve1", "other", "aggregator"):
        st = (root / "state" / name).stat()
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    again = playbook("local.yml", "--tags", "data", "-e", site["extra"])
    assert recap(again.stdout)["changed"] == 0, again.stdout[-3000:]


def test_data_play_names_a_missing_partition(tmp_path):
    source = tmp_path / "src"
    (source / "skab" / "valve2").mkdir(parents=True)
    extra = write_vars(tmp_path / "vars.json", {"fedad_root": str(tmp_path / "root"), "fedad_uid": os.getuid(),
                                                "fedad_data_dir": str(source)})
    result = playbook("local.yml", "--tags", "data", "-e", extra, check=False)
    assert result.returncode != 0
    assert "valve1's partition entry valve1 is missing" in result.stdout and "FEDAD_DATA_DIR" in result.stdout


# --- render with secrets from the vault ---------------------------------------------------------------------------

def test_render_takes_tokens_from_variables_and_generates_the_missing_ones(rendered, build_dir):
    """The session's renders (conftest.rendered) got valve1's and valve2's tokens as variables, not other's."""
    for overlay, r in rendered.items():
        config = yaml.safe_load(r.configmap_value("fedad-config", "config.yaml"))
        digests = {w["id"]: w["token_sha256"] for w in config["workers"]}
        for wid, token in VAULT_TOKENS.items():
            assert r.secret_value(f"fedad-token-{wid}", "token") == token
            assert digests[wid] == hash_token(token)
        store = build_dir / overlay / "tokens"
        generated = (store / "other").read_text().strip()
        assert r.secret_value("fedad-token-other", "token") == generated and len(generated) >= 32
        assert digests["other"] == hash_token(generated)
        assert sorted(p.name for p in store.iterdir()) == ["admin", "other"], "no token generated when one is given"
        admin = (store / "admin").read_text().strip()  # none in the vault here: generated, only its digest deployed
        assert config["admin"] == {"token": None, "token_sha256": hash_token(admin)} and len(admin) >= 32
        assert "dev-admin-token" not in (r.dir / "manifests.yaml").read_text()
        for path in (store / "other", store / "admin", r.dir / "manifests.yaml", r.dir / "tokens" / "valve1"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert rendered["gcp-kubeedge"].configmap_value("fedad-site", "aggregator_url") == GCP_AGGREGATOR_URL


def test_render_refuses_a_weak_vault_token_without_showing_it(tmp_path):
    extra = write_vars(tmp_path / "vault.json", {"fedad_worker_tokens": {"valve1": "short-secret"},
                                                 "fedad_build_dir": str(tmp_path)})
    result = playbook("render.yml", "-e", extra, check=False)
    assert result.returncode != 0 and "fedad_worker_tokens.valve1" in result.stdout
    assert "short-secret" not in result.stdout + result.stderr


def test_render_refuses_a_weak_admin_token_without_showing_it(tmp_path):
    extra = write_vars(tmp_path / "vault.json", {"fedad_admin_token": "short-admin", "fedad_build_dir": str(tmp_path)})
    result = playbook("render.yml", "-e", extra, check=False)
    assert result.returncode != 0 and "fedad_admin_token" in result.stdout
    assert "short-admin" not in result.stdout + result.stderr


# --- the smoke check against real services --------------------------------------------------------------------------

@pytest.fixture
def services(site):
    """A real aggregator and two real workers on 127.0.0.1, on the data and state dirs the data play placed (the
    layout the manifests mount): valve1 trains one short round, then serves; valve2's aggregator address leads
    nowhere, so it never serves."""
    root, tmp = site["root"], site["tmp"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDAD")}
    env.update(FEDAD_CONFIG=str(site["config"]), FEDAD_DATA_DIR=str(root / "data"), PYTHONUNBUFFERED="1",
               ORT_DISABLE_TELEMETRY="1",   # onnxruntime must not send usage events off the machine
               FEDAD__FEDERATION__ROUNDS="1", FEDAD__FEDERATION__MIN_WORKERS="1", FEDAD__FEDERATION__QUORUM="1",
               FEDAD__MODEL__LOCAL_EPOCHS="1", FEDAD__AGGREGATOR__STATE_DIR=str(root / "state" / "aggregator"),
               FEDAD__WORKERS__VALVE1__STATE_DIR=str(root / "state" / "valve1"),
               FEDAD__WORKERS__VALVE2__STATE_DIR=str(root / "state" / "valve2"))
    procs = []
    log = open(tmp / "services.log", "wb")
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "services.aggregator"], env=env, cwd=REPO,
                                      stdout=log, stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen([sys.executable, "-m", "services.worker", "--id", "valve1"], env=env,
                                      cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
        unreachable = {**env, "FEDAD__AGGREGATOR__URL": f"http://127.0.0.1:{free_port()}"}
        procs.append(subprocess.Popen([sys.executable, "-m", "services.worker", "--id", "valve2"], env=unreachable,
                                      cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
        yield {"config": site["config"], "ports": site["ports"], "log": tmp / "services.log", "procs": procs}
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()


def test_smoke_check_passes_on_ready_services_and_names_the_one_that_is_not(services, tmp_path):
    common = {"fedad_config_file": str(services["config"]), "fedad_smoke_port_offset": 0,
              "fedad_smoke_aggregator_port": services["ports"]["aggregator"], "fedad_smoke_delay": 1}
    ok = playbook("local.yml", "--tags", "smoke", "-e", write_vars(tmp_path / "ok.json", {
        **common, "fedad_smoke_workers": ["valve1"], "fedad_smoke_retries": 120}), check=False, timeout=200)
    assert ok.returncode == 0, ok.stdout[-4000:] + "\n--- services\n" + services["log"].read_text()[-4000:]
    assert "ready: aggregator, worker valve1" in ok.stdout

    started = time.time()
    bad = playbook("local.yml", "--tags", "smoke", "-e", write_vars(tmp_path / "bad.json", {
        **common, "fedad_smoke_workers": ["valve1", "valve2"], "fedad_smoke_retries": 2}), check=False)
    assert bad.returncode != 0
    failure = bad.stdout[bad.stdout.index("not ready after"):]
    assert f"worker valve2 at http://127.0.0.1:{services['ports']['valve2']}/readyz answered 503" in failure
    assert "worker valve1" not in failure.split("PLAY RECAP")[0], "only the service that is not ready is named"
    assert time.time() - started < 60
    assert all(p.poll() is None for p in services["procs"]), "the services kept running"
