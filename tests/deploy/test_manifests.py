"""Every overlay renders offline and validates against the Kubernetes JSON schemas in strict mode."""

from __future__ import annotations

import pytest
import yaml

from .conftest import KUBE_VERSION, OVERLAYS, REPO, run, tool

pytestmark = pytest.mark.deploy


def validate(path) -> None:
    result = run([tool("kubernetes-validate"), "--strict", "--quiet", "-k", KUBE_VERSION, str(path)], check=False)
    assert result.returncode == 0, f"{path} is not valid for Kubernetes {KUBE_VERSION}:\n{result.stdout}{result.stderr}"


def test_there_is_a_kubeedge_overlay_and_a_single_node_one():
    assert {"gcp-kubeedge", "k3s"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_committed_overlay_renders_and_validates_strictly(overlay, tmp_path):
    """The overlay alone (what `kubectl kustomize deploy/overlays/<name>` shows); the site layer adds to it."""
    out = run([tool("kubectl"), "kustomize", f"deploy/overlays/{overlay}"]).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert {d["kind"] for d in docs} >= {"Namespace", "Deployment", "Service", "ConfigMap"}
    (tmp_path / "manifests.yaml").write_text(out)
    validate(tmp_path / "manifests.yaml")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_site_layer_render_validates_strictly(rendered, overlay):
    """What is applied: the overlay plus the ConfigMap from config.yaml and the token Secrets."""
    r = rendered[overlay]
    kinds = [d["kind"] for d in r.docs]
    assert kinds[0] == "Namespace", "the namespace must come first: it is applied in order"
    assert {"ConfigMap", "Secret", "Deployment", "Service"} <= set(kinds)
    assert all(d["metadata"].get("namespace") == "fedad" for d in r.docs if d["kind"] != "Namespace")
    validate(r.dir / "manifests.yaml")


def test_strict_validation_catches_a_misspelled_field(rendered, tmp_path):
    """The validation above is not vacuous: one misspelled field in a pod spec fails it."""
    docs = [d for d in rendered["gcp-kubeedge"].docs]
    worker = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("worker-"))
    worker["spec"]["template"]["spec"]["hostNetwrok"] = True
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    result = run([tool("kubernetes-validate"), "--strict", "--quiet", "-k", KUBE_VERSION, str(path)], check=False)
    assert result.returncode != 0 and "hostNetwrok" in result.stdout + result.stderr


def test_no_secret_is_committed():
    """Tokens reach the cluster only through the site layer (build/, git-ignored); the repository holds none."""
    for path in (REPO / "deploy").rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "kind: Secret" not in text and "secretGenerator" not in text, path
    tracked = run(["git", "ls-files", "ansible", "deploy"], check=False).stdout.split()
    assert not [p for p in tracked if p.endswith("vault.yml") or "/tokens/" in p]


# What test_kube_play.py plays under podman: the overlays and everything they pull in from base/.
EXECUTED = ("deploy/base/", "deploy/overlays/k3s/kustomization.yaml", "deploy/overlays/gcp-kubeedge/")


def test_every_manifest_is_executed_in_ci_or_listed_with_the_check_that_covers_it():
    section = (REPO / "docs" / "deploy.md").read_text().split("### Manifests executed")[1].split("\n### ")[0]
    for path in sorted((REPO / "deploy").rglob("*")):
        if not path.is_file():
            continue
        name = str(path.relative_to(REPO))
        if name.startswith(EXECUTED) and name != "deploy/base/namespace.yaml":
            continue
        folder = str(path.parent.relative_to(REPO))
        assert f"`{name}`" in section or f"`{folder}/*`" in section or f"`{folder}`" in section, \
            f"{name} is neither executed by tests/containers/test_kube_play.py nor listed in docs/deploy.md"


def test_kind_cluster_maps_the_k3s_nodeports_on_loopback_and_mounts_the_host_folder():
    kind = yaml.safe_load((REPO / "deploy" / "overlays" / "k3s" / "kind-cluster.yaml").read_text())
    [node] = kind["nodes"]
    docs = [d for d in yaml.safe_load_all(run([tool("kubectl"), "kustomize", "deploy/overlays/k3s"]).stdout) if d]
    nodeports = {p["nodePort"] for d in docs if d["kind"] == "Service" for p in d["spec"]["ports"]}
    mapped = {(m["containerPort"], m["hostPort"], m["listenAddress"]) for m in node["extraPortMappings"]}
    assert mapped == {(p, p, "127.0.0.1") for p in nodeports}
    assert {"hostPath": "/var/lib/fedad", "containerPath": "/var/lib/fedad"} in node["extraMounts"]
