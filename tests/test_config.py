"""config.yaml is the one place to tune; bad values stop start-up with a message that names the key."""

import ast
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, TypeAdapter
from support import REPO

from services.config import DEFAULT_CONFIG, ENV_PREFIX, ConfigError, Settings, load_settings


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


def test_one_port_base_moves_the_stack_and_explicit_ports_win():
    s = load_settings(environ={"FEDAD__PORT_BASE": "9100"})
    assert (s.aggregator.port, s.aggregator.url) == (9100, "http://127.0.0.1:9100")
    assert [w.port for w in s.workers] == [9101, 9102, 9103]
    s = load_settings(environ={"FEDAD__PORT_BASE": "9100", "FEDAD__WORKERS__VALVE2__PORT": "9500",
                               "FEDAD__AGGREGATOR__PORT": "9000"})
    assert (s.aggregator.port, s.aggregator.url) == (9000, "http://127.0.0.1:9000")
    assert [w.port for w in s.workers] == [9101, 9500, 9103]
    s = load_settings(environ={"FEDAD__PORT_BASE": "9100", "FEDAD__AGGREGATOR__URL": "http://relay:7000",
                               "FEDAD__AGGREGATOR__HOST": "0.0.0.0"})
    assert (s.aggregator.port, s.aggregator.url) == (9100, "http://relay:7000")
    s = load_settings(environ={"FEDAD__AGGREGATOR__HOST": "0.0.0.0", "FEDAD__TLS__ENABLED": "true"})
    assert s.aggregator.url == "https://127.0.0.1:8080"  # listening everywhere, reached on loopback, with TLS
    with pytest.raises(ConfigError, match=r"workers\.2\.port: Input should be less than or equal to 65535"):
        load_settings(environ={"FEDAD__PORT_BASE": "65533"})


@pytest.mark.parametrize("environ,key", [
    ({"FEDAD__FEDERATION__ROUNDS": "zero"}, "federation.rounds"),
    ({"FEDAD__AGGREGATOR__PORT": "70000"}, "aggregator.port"),
    ({"FEDAD__PORT_BASE": "eighty"}, "port_base"),
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


def _section(annotation) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


# Keys whose shipped value describes SKAB's files (config.yaml is SKAB's configuration of the tabular source): their
# code defaults describe no particular file instead (a detected delimiter, no clock, no label, every feature), so a
# user's own minimal config never silently assumes SKAB. The synthetic section applies only to kind: synthetic.
DESCRIBE_THE_DATA_SET = {"data.source.delimiter", "data.source.timestamp", "data.source.label", "data.source.download",
                         "data.model_features", "data.source.synthetic",
                         "data.training.count"}  # SKAB's protocol: its first rows train whatever their label
# config.yaml is SKAB's configuration: its model.score (error) was chosen on SKAB's held-out figures, like its
# model_features; the code default (error_and_t2) was chosen on generated devices (docs/quality.md "Score").
CHOSEN_FOR_SKAB = {"model.score"}
# The shipped config carries a development admin token, as it carries development worker tokens; in code no token
# is the default, so a config without one refuses every control request.
DEVELOPMENT_SECRETS = {"admin.token"}
# The shipped config leaves these out so that port_base (and `fedad run --port-base`) moves the whole stack.
FOLLOW_PORT_BASE = {"aggregator.port", "aggregator.url"}


def default_disagreements(model: type[BaseModel], raw: dict, where: str = "") -> tuple[set[str], list[str]]:
    """Walk ``model``'s fields beside the YAML mapping ``raw``: every field with a code default must appear in the
    file with an equal value. Returns the keys compared and the disagreements. In list items (workers) a None
    default marks an optional alternative (token or token_sha256), not a default, and is skipped."""
    compared: set[str] = set()
    problems: list[str] = []
    in_list_item = where.endswith("]")
    for name, field in model.model_fields.items():
        key = f"{where}.{name}" if where else name
        if key in DESCRIBE_THE_DATA_SET or key in DEVELOPMENT_SECRETS or key in FOLLOW_PORT_BASE \
                or key in CHOSEN_FOR_SKAB:
            continue
        section = _section(field.annotation)
        item = (_section(typing.get_args(field.annotation)[0])
                if typing.get_origin(field.annotation) is list else None)
        if section is not None:
            inner = raw.get(name)
            if not isinstance(inner, dict):
                problems.append(f"{key}: config.yaml has no {name} section")
                continue
            more, wrong = default_disagreements(section, inner, key)
            compared |= more
            problems += wrong
        elif item is not None and field.is_required():  # workers: each entry's own defaults
            for i, entry in enumerate(raw.get(name) or []):
                more, wrong = default_disagreements(item, entry, f"{key}[{i}]")
                compared |= more
                problems += wrong
        elif not field.is_required():  # a value, or a list of sections with a default list
            default = field.get_default(call_default_factory=True)
            if in_list_item and default is None:
                continue
            if name not in raw:
                problems.append(f"{key}: config.yaml does not carry it (code default {default!r})")
                continue
            shipped = TypeAdapter(field.annotation).validate_python(raw[name])
            compared.add(key)
            if shipped != default:
                problems.append(f"{key}: code default {default!r}, config.yaml {shipped!r}")
    return compared, problems


def test_code_defaults_equal_the_shipped_config():
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    compared, problems = default_disagreements(Settings, raw)
    assert not problems, "code defaults and config.yaml disagree:\n" + "\n".join(problems)
    assert {"data.window", "data.window_stats", "data.baseline", "model.local_epochs", "threshold.factor",
            "federation.rounds", "workers[0].host"} <= compared


def test_the_defaults_check_names_a_disagreement_and_a_missing_key():
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["threshold"]["factor"] = 1.0
    del raw["data"]["window"]
    _, problems = default_disagreements(Settings, raw)
    assert sorted(problems) == ["data.window: config.yaml does not carry it (code default 20)",
                                "threshold.factor: code default 1.2, config.yaml 1.0"]


def test_the_data_folder_is_one_more_override():
    s = load_settings(environ={"FEDAD__DATA__SOURCE__DIR": "/srv/fedad-data"})
    assert s.data.source.dir == Path("/srv/fedad-data")
    relative = load_settings(environ={"FEDAD__DATA__SOURCE__DIR": "relative"})
    assert relative.data.source.dir == DEFAULT_CONFIG.parent / "relative"


# The process-level variables besides FEDAD__SECTION__KEY (README, Configuration): which file, which worker, the
# reliability tests' fault points; and FEDAD_SKAB_URL, a mirror for SKAB's download that the SKAB source still reads.
PROCESS_VARIABLES = {"FEDAD_CONFIG", "FEDAD_WORKER_ID", "FEDAD_FAULT", "FEDAD_SKAB_URL"}


def _environment_reads(path: Path) -> set[str]:
    """Names of the literal environment variables ``path`` reads: os.environ.get / os.getenv / os.environ[...]."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            called = ast.unparse(node.func)
            if called in ("os.environ.get", "os.getenv", "environ.get"):
                names.add(node.args[0].value)
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("os.environ", "environ") \
                and isinstance(node.slice, ast.Constant):
            names.add(node.slice.value)
    return names


def test_services_read_no_ad_hoc_fedad_variables():
    read = {name: p for p in (REPO / "services").rglob("*.py") for name in _environment_reads(p)
            if str(name).startswith("FEDAD") and not str(name).startswith(ENV_PREFIX)}  # FEDAD__…: config keys
    assert {"FEDAD_CONFIG", "FEDAD_WORKER_ID", "FEDAD_FAULT"} <= set(read)
    stray = {name: str(p.relative_to(REPO)) for name, p in read.items() if name not in PROCESS_VARIABLES}
    assert not stray, f"use FEDAD__SECTION__KEY (a config.yaml key) instead of: {stray}"
