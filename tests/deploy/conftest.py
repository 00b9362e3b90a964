"""Deploy tests: the manifests (deploy/) and playbooks (ansible/) checked without a cluster and without any cloud.

Tools come from build/deploy-tools (`make deploy-tools`: ansible, ansible-lint, kubernetes-validate) and kubectl
(renders kustomizations offline). Missing tools: the tests skip, unless the environment variable CI is set, in
which case they fail. Only this machine is contacted: plays run with `connection: local`, and the smoke check
talks to real services on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("FEDAD_DEPLOY_TOOLS", REPO / "build" / "deploy-tools")) / "bin"
OVERLAYS = sorted(p.name for p in (REPO / "deploy" / "overlays").iterdir() if (p / "kustomization.yaml").exists())
KUBE_VERSION = "1.30.0"   # mk/deploy.mk KUBE_VERSION; ansible/group_vars/all.yml kubernetes_minor
ANSIBLE_DIR = REPO / "ansible"


def pytest_configure(config):
    config.addinivalue_line("markers", "deploy: manifests and playbooks, checked offline (tests/deploy)")


def tool(name: str) -> str:
    """A tool from build/deploy-tools, else from PATH; skip (fail under CI) when neither has it."""
    for candidate in (TOOLS / name, shutil.which(name)):
        if candidate and Path(candidate).exists():
            return str(candidate)
    message = f"{name} not found in {TOOLS} or on PATH: run `make deploy-tools`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run(cmd: list[str], timeout: float = 180, check: bool = True, env: dict | None = None,
        **kwargs) -> subprocess.CompletedProcess:
    """Run a command, capturing its output; on failure the assertion shows the command and its output."""
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env,
                                cwd=kwargs.pop("cwd", REPO), **kwargs)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"timed out after {timeout} s: {shlex.join(cmd)}\n{exc.stdout or ''}{exc.stderr or ''}")
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}: {shlex.join(cmd)}\n"
                             f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}")
    return result


def ansible_env(**extra: str) -> dict[str, str]:
    """The environment the make targets give Ansible, without cloud credentials from the caller's shell."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GCP_", "FEDAD__", "ANSIBLE_")) and k not in ("FEDAD_ADMIN_CIDR", "FEDAD_CONFIG")}
    env.update(ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               PATH=f"{TOOLS}{os.pathsep}{env.get('PATH', '')}", ANSIBLE_LOCAL_TEMP=tempfile.gettempdir())
    env.update(extra)
    return env


def playbook(name: str, *args: str, inventory: str = "inventory/local", check: bool = True, timeout: float = 180,
             env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [tool("ansible-playbook"), "-i", str(ANSIBLE_DIR / inventory), str(ANSIBLE_DIR / name), *args]
    return run(cmd, timeout=timeout, check=check, env=env or ansible_env())


@dataclass
class Rendered:
    """One overlay rendered with its site layer by the real render play (ansible/render.yml)."""

    overlay: str
    dir: Path
    docs: list[dict] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        """By name, or by the generator's name before kustomize's hash suffix."""
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name
                 or d["metadata"]["name"].rsplit("-", 1)[0] == name]
        assert len(found) == 1, f"{self.overlay}: {len(found)} {kind} named {name}"
        return found[0]

    def deployment(self, name: str) -> dict:
        return self.get("Deployment", name)

    def configmap_value(self, name: str, key: str) -> str:
        return self.get("ConfigMap", name)["data"][key]

    def secret_value(self, name: str, key: str) -> str:
        secret = self.get("Secret", name)
        return secret["data"][key] and base64.b64decode(secret["data"][key]).decode()

    def workers(self) -> dict[str, dict]:
        """Worker Deployments by the worker id they run (FEDAD_WORKER_ID)."""
        out = {}
        for d in self.of_kind("Deployment"):
            env = {e["name"]: e.get("value") for e in container(d).get("env", [])}
            if "FEDAD_WORKER_ID" in env:
                out[env["FEDAD_WORKER_ID"]] = d
        return out


def container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{deployment['metadata']['name']}: one container expected"
    return containers[0]


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory) -> Path:
    """Stands in for build/deploy: the repository's own build/ is never written by the tests."""
    return tmp_path_factory.mktemp("deploy-build")


# The session's renders take these two workers' tokens from variables (as from the vault) and let the play
# generate the third; the GCP render also gets the cloud node's address the way site.yml passes it.
VAULT_TOKENS = {"valve1": "vault-valve1-" + "a" * 32, "valve2": "vault-valve2-" + "b" * 32}
GCP_AGGREGATOR_URL = "http://10.128.0.2:30080"


@pytest.fixture(scope="session")
def rendered(build_dir) -> dict[str, Rendered]:
    """Every overlay rendered for real by ansible/render.yml (overlay + site layer), the plays side by side."""
    procs = {}
    for overlay in OVERLAYS:
        extra = {"fedad_overlay": overlay, "fedad_build_dir": str(build_dir / overlay),
                 "fedad_worker_tokens": VAULT_TOKENS}
        if overlay == "gcp-kubeedge":
            extra["fedad_render_aggregator_url"] = GCP_AGGREGATOR_URL
        (build_dir / f"{overlay}.json").write_text(json.dumps(extra))
        cmd = [tool("ansible-playbook"), "-i", str(ANSIBLE_DIR / "inventory/local"), str(ANSIBLE_DIR / "render.yml"),
               "-e", f"@{build_dir / f'{overlay}.json'}"]
        procs[overlay] = (cmd, subprocess.Popen(cmd, cwd=REPO, env=ansible_env(), text=True,
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    out = {}
    for overlay, (cmd, proc) in procs.items():
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"exit {proc.returncode}: {shlex.join(cmd)}\n{output[-6000:]}"
        site = build_dir / overlay / overlay
        docs = [d for d in yaml.safe_load_all((site / "manifests.yaml").read_text()) if d]
        out[overlay] = Rendered(overlay, site, docs)
    return out


@pytest.fixture(scope="session")
def group_vars() -> dict:
    """ansible/group_vars/all.yml, unrendered (literal values only are read from it)."""
    return yaml.safe_load((ANSIBLE_DIR / "group_vars" / "all.yml").read_text())


# ansible-lint is the slowest check (~20-50 s); when its test is selected, it starts as soon as the tests are
# collected and runs beside the other tests; its test is moved to the end and waits for it.
_LINT: dict[str, object] = {}


def pytest_collection_modifyitems(session, config, items):
    """The lint result is awaited last, so that ansible-lint runs beside every other deploy test."""
    lint = [i for i in items if i.name == "test_ansible_lint_production_profile_is_clean"]
    items[:] = [i for i in items if i not in lint] + lint


def pytest_collection_finish(session):
    if not any(item.name == "test_ansible_lint_production_profile_is_clean" for item in session.items):
        return
    lint = TOOLS / "ansible-lint"
    if not lint.exists():
        return
    out = tempfile.TemporaryFile(mode="w+")
    _LINT["out"] = out
    _LINT["proc"] = subprocess.Popen([str(lint), "-c", str(ANSIBLE_DIR / ".ansible-lint"), "--nocolor",
                                      str(ANSIBLE_DIR)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                     env=ansible_env())


def lint_result(timeout: float = 240) -> tuple[int, str]:
    if "proc" not in _LINT:
        tool("ansible-lint")  # skips or fails with the reason
        pytest.fail("ansible-lint was not started at collection")
    proc: subprocess.Popen = _LINT["proc"]  # type: ignore[assignment]
    proc.wait(timeout=timeout)
    out = _LINT["out"]
    out.seek(0)  # type: ignore[union-attr]
    return proc.returncode, out.read()  # type: ignore[union-attr]


def pytest_sessionfinish(session, exitstatus):
    proc = _LINT.get("proc")
    if proc is not None and proc.poll() is None:  # type: ignore[union-attr]
        proc.kill()  # type: ignore[union-attr]
        proc.wait()  # type: ignore[union-attr]
