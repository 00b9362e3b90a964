"""The two images: small and clean, non-root, health-checked, volumes declared, config baked and overridable."""

from __future__ import annotations

import json

import pytest
import yaml

from .conftest import REPO, run

pytestmark = pytest.mark.docker

LOAD = "from services.config import load_settings; s = load_settings(); print(s.federation.rounds, s.model.local_epochs)"


def inspect(image: str) -> dict:
    return json.loads(run(["docker", "image", "inspect", image]).stdout)[0]


def in_image(image: str, *args: str, entrypoint: str = "python", docker_args: tuple[str, ...] = ()) -> str:
    """Run a one-off command in the image without any network."""
    return run(["docker", "run", "--rm", "--network", "none", "--entrypoint", entrypoint, *docker_args, image, *args],
               timeout=120).stdout


@pytest.mark.parametrize("service", ["aggregator", "worker"])
def test_image_metadata(images, service):
    config = inspect(getattr(images, service))["Config"]
    assert config["User"] == "10001:10001"  # numeric: Kubernetes' runAsNonRoot can check it
    assert config["Healthcheck"]["Test"] == ["CMD", "python", "/app/healthcheck.py"]
    assert config["Entrypoint"] == ["python", "/app/entrypoint.py", service]
    volumes = set(config["Volumes"])
    assert volumes == ({"/state", "/data"} if service == "worker" else {"/state"})
    assert "FEDAD_CONFIG=/etc/fedad/config.yaml" in config["Env"]
    assert "ORT_DISABLE_TELEMETRY=1" in config["Env"]  # onnxruntime's 1DS telemetry off: no device id, no uploads


@pytest.mark.parametrize("service", ["aggregator", "worker"])
def test_image_has_no_build_tools_caches_or_tests(images, service):
    script = (
        "id -u; "
        "for t in gcc cc g++ make pip pip3; do command -v $t >/dev/null && echo has-$t; done; "
        "ls /opt/venv/bin | grep -qx pip && echo venv-pip; "
        "test -e /wheels && echo wheelhouse; test -e /root/.cache && echo root-cache; "
        "find /opt/venv -type d -name tests | head -3; "
        "test -d /opt/venv/lib/python3.11/site-packages/torch/include && echo torch-headers; true"
    )
    lines = in_image(getattr(images, service), "-c", script, entrypoint="sh").split()
    assert lines[0] == "10001", lines
    assert lines[1:] == [] or set(lines[1:]) <= {"has-pip", "has-pip3"}, lines  # the base image's own pip, if any



@pytest.mark.parametrize("service", ["aggregator", "worker"])
def test_only_the_worker_image_carries_torch_and_onnxruntime(images, service):
    """The aggregator averages weights and seeds the first model with numpy: torch would be most of its image."""
    probe = "import importlib.util as u; print(*[m for m in ('torch', 'onnxruntime', 'sklearn') if u.find_spec(m)])"
    found = in_image(getattr(images, service), "-c", probe).split()
    assert found == ([] if service == "aggregator" else ["torch", "onnxruntime", "sklearn"])

def test_config_baked_then_env_then_mounted_file(images, tmp_path):
    repo = yaml.safe_load((REPO / "config.yaml").read_text())
    rounds, epochs = repo["federation"]["rounds"], repo["model"]["local_epochs"]
    baked = in_image(images.worker, "-c", LOAD).split()
    assert baked == [str(rounds), str(epochs)]  # the repository's config.yaml, copied in at build time
    env = in_image(images.worker, "-c", LOAD, docker_args=("-e", f"FEDAD__FEDERATION__ROUNDS={rounds + 2}")).split()
    assert env == [str(rounds + 2), str(epochs)]
    repo["model"]["local_epochs"] = epochs + 1
    mounted = tmp_path / "config.yaml"
    mounted.write_text(yaml.safe_dump(repo, sort_keys=False))
    mounted.chmod(0o644)
    both = in_image(images.worker, "-c", LOAD, docker_args=(
        "-v", f"{mounted}:/etc/fedad/config.yaml:ro", "-e", f"FEDAD__FEDERATION__ROUNDS={rounds + 3}")).split()
    assert both == [str(rounds + 3), str(epochs + 1)]


def test_worker_without_id_or_data_fails_clearly(images):
    no_id = run(["docker", "run", "--rm", "--network", "none", images.worker], check=False, timeout=60)
    assert no_id.returncode == 2 and "FEDAD_WORKER_ID" in no_id.stderr
    unknown = run(["docker", "run", "--rm", "--network", "none", "-e", "FEDAD_WORKER_ID=nope", images.worker],
                  check=False, timeout=60)
    assert unknown.returncode == 2 and "nope" in unknown.stderr
