"""The kustomize component that places one site aggregator per KubeEdge node group, rendered offline with kubectl:
an EdgeApplication whose Deployment template runs the aggregator image as role site, one target node group per site
with its own id and token, the generated config and image tag reaching into the template; and the settings a site's
container ends up with are a valid site aggregator's."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from services.config import load_settings
from support import missing_tool

REPO = Path(__file__).resolve().parents[2]


def render() -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        missing_tool("kubectl is not installed (it renders kustomizations offline)")
    (REPO / "build").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=REPO / "build") as layer:
        (Path(layer) / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": ["../../deploy/base"], "components": ["../../deploy/components/site-aggregator"],
            "namespace": "fedad",
            "configMapGenerator": [{"name": "fedad-config", "files": ["config.yaml=../../config.yaml"]}],
            "images": [{"name": "fedad-aggregator", "newTag": "v7"}]}))
        done = subprocess.run([kubectl, "kustomize", "--load-restrictor=LoadRestrictionsNone", layer],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return list(yaml.safe_load_all(done.stdout))


def test_one_site_aggregator_per_node_group_with_its_own_identity():
    documents = render()
    groups = {d["metadata"]["name"]: d for d in documents if d["kind"] == "NodeGroup"}
    assert set(groups) == {"plant-a", "plant-b", "plant-c"}
    assert groups["plant-a"]["spec"]["matchLabels"] == {"fedad.io/node-group": "plant-a"}
    [app] = [d for d in documents if d["kind"] == "EdgeApplication"]
    assert app["apiVersion"] == "apps.kubeedge.io/v1alpha1" and app["metadata"]["namespace"] == "fedad"
    [deployment] = app["spec"]["workloadTemplate"]["manifests"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "fedad-aggregator:v7", "the overlay's image tag reaches the template"
    config = [d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("fedad-config")]
    assert pod["volumes"][0]["configMap"]["name"] == config[0]["metadata"]["name"], "the generated name too"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FEDAD__AGGREGATOR__ROLE"] == "site" and env["FEDAD__AGGREGATOR__PORT"] == "8090"
    assert pod["hostNetwork"] and pod["nodeSelector"]["fedad.io/site-aggregator"] == "true"
    targets = app["spec"]["workloadScope"]["targetNodeGroups"]
    assert [t["name"] for t in targets] == ["plant-a", "plant-b", "plant-c"]
    ids = []
    for target in targets:
        [overrider] = target["overriders"]["envOverriders"]
        assert overrider["containerName"] == container["name"] and overrider["operator"] == "add"
        values = {v["name"]: v for v in overrider["value"]}
        ids.append(values["FEDAD__AGGREGATOR__UPSTREAM__ID"]["value"])
        secret = values["FEDAD__AGGREGATOR__UPSTREAM__TOKEN"]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": f"fedad-site-{target['name']}", "key": "token"}
        assert target["overriders"]["replicas"] == 1
    assert len(set(ids)) == 3, "every site has its own identity upstream"

    # what one site's container runs with: config.yaml plus the template's and its group's environment
    environ = {k: v for k, v in env.items() if k.startswith("FEDAD__") and v is not None}
    environ.update({"FEDAD__AGGREGATOR__UPSTREAM__URL": "http://fedad-cloud:30080",
                    "FEDAD__AGGREGATOR__UPSTREAM__ID": ids[0], "FEDAD__AGGREGATOR__UPSTREAM__TOKEN": "t" * 24})
    settings = load_settings(REPO / "config.yaml", environ=environ)
    assert settings.aggregator.role == "site" and settings.aggregator.upstream.id == "site-plant-a"
    assert settings.aggregator.port == 8090
