"""config.yaml is the one place to tune; bad values stop start-up with a message that names the key."""

import subprocess
import sys

import pytest

from services.config import ConfigError, load_settings
from support import REPO


def test_default_config_loads_with_the_documented_defaults():
    s = load_settings()
    assert (s.aggregator.host, s.aggregator.port) == ("127.0.0.1", 8080)
    assert [(w.id, w.port) for w in s.workers] == [("valve1", 8081), ("valve2", 8082), ("other", 8083)]
    assert [w.partition for w in s.workers] == [["valve1"], ["valve2"], ["other"]]
    assert s.data.train_rows == 400


def test_environment_overrides_single_values_by_index_or_worker_id():
    s = load_settings(environ={"FEDAD__FEDERATION__ROUNDS": "3", "FEDAD__WORKERS__1__PORT": "9002",
                               "FEDAD__WORKERS__OTHER__TOKEN": "secret-token-x", "FEDAD__MODEL__HIDDEN": "[8, 4, 8]"})
    assert s.federation.rounds == 3 and s.workers[1].port == 9002
    assert s.worker("other").token == "secret-token-x" and s.model.hidden == [8, 4, 8]


@pytest.mark.parametrize("environ,key", [
    ({"FEDAD__FEDERATION__ROUNDS": "zero"}, "federation.rounds"),
    ({"FEDAD__AGGREGATOR__PORT": "70000"}, "aggregator.port"),
    ({"FEDAD__MODEL__HIDDEN": "[12, 0]"}, "model.hidden"),
    ({"FEDAD__THRESHOLD__RULE": "magic"}, "threshold.rule"),
    ({"FEDAD__FEDERATION__QUORUM": "9"}, "federation"),
    ({"FEDAD__DATA__WINDOW": "0"}, "data.window"),
    ({"FEDAD__SERVING__MODEL": "int4"}, "serving.model"),
    ({"FEDAD__MODEL__TYPO": "1"}, "model.typo"),
    ({"FEDAD__WORKERS__1__ID": "valve1"}, "worker ids must be unique"),
    ({"FEDAD__WORKERS__NOPE__PORT": "1"}, "workers.nope"),
])
def test_invalid_values_name_the_key(environ, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(environ=environ)


def test_unreadable_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad, environ={})


@pytest.mark.parametrize("module", ["services.aggregator", "services.worker"])
def test_services_refuse_to_start_on_a_bad_config_without_a_traceback(module):
    env = {"PATH": "/usr/bin:/bin", "FEDAD__FEDERATION__MIN_WORKERS": "-1"}
    argv = [sys.executable, "-m", module] + (["--id", "valve1"] if module.endswith("worker") else [])
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "federation.min_workers" in done.stderr and "Traceback" not in done.stderr


def test_worker_with_unknown_id_is_refused():
    done = subprocess.run([sys.executable, "-m", "services.worker", "--id", "pump9"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "no worker with id 'pump9'" in done.stderr


def test_config_errors_echo_values_but_never_a_token():
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={"FEDAD__WORKERS__VALVE1__TOKEN_SHA256": "ab" * 32, "FEDAD__FEDERATION__ROUNDS": "zero"})
    message = str(refused.value)
    assert "token_sha256 is not the SHA-256 of token" in message and "(got 'zero')" in message
    assert load_settings().worker("valve1").token not in message
