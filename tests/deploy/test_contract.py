"""Contract tests: the rendered manifests against config.yaml, the services' code, the images and the playbooks.

Each overlay is taken as rendered by the real render play (overlay + site layer), because that is what is
applied. A container's environment is resolved the way the kubelet does it (literals, ConfigMap and Secret keys)
and handed to the services' own config loader, with the ConfigMap's config.yaml as the config file.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
from pathlib import Path, PurePosixPath

import httpx
import pytest
import yaml

from services.config import load_settings
from services.security.tokens import hash_token

from .conftest import ANSIBLE_DIR, OVERLAYS, REPO, Rendered, container, run, tool

pytestmark = pytest.mark.deploy

CONFIG = load_settings(REPO / "config.yaml", environ={})
WORKER_IDS = [w.id for w in CONFIG.workers]
# Measured memory (MiB): what each container holds between rounds (requests must cover it) and its peak (limits
# leave HEADROOM over it). Aggregator: 78 MB peak RSS through a 3-round federation of the three SKAB workers
# (docs/deploy.md, "Resources"). Worker, BENCHMARKS.md section 4: the serving process 149 MiB under /detect load,
# each round's training process 236 MiB on top while it runs. Detect-only worker: 129 MiB, the higher container
# peak under tests/containers/test_constrained.py's gateway limits (BENCHMARKS.md section 4).
MEASURED_MIB = {"aggregator": {"holds": 78e6 / 2**20, "peak": 78e6 / 2**20},
                "worker": {"holds": 149, "peak": 149 + 236},
                "worker-detect": {"holds": 129, "peak": 129}}
HEADROOM = 1.25
# environment variables the manifests may set outside FEDAD__*: each must be read by the services' code
PLAIN_ENV_READERS = [REPO / "services", REPO / "docker" / "entrypoint.py"]


# --- helpers ------------------------------------------------------------------------------------------------

def resolve_env(r: Rendered, c: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it from the rendered ConfigMaps and Secrets."""
    env: dict[str, str] = {}
    for ref in c.get("envFrom", []):
        if "configMapRef" in ref:
            env.update(r.get("ConfigMap", ref["configMapRef"]["name"])["data"])
        else:
            pytest.fail(f"{c['name']}: envFrom {ref} is not expected (a Secret would reach every container)")
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "configMapKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["configMapKeyRef"]
            env[e["name"]] = r.configmap_value(ref["name"], ref["key"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = r.secret_value(ref["name"], ref["key"])
        else:
            pytest.fail(f"{c['name']}: env {e['name']} has an unexpected source {e}")
    return env


def mounts(deployment: dict) -> dict[str, tuple[dict, dict]]:
    """mountPath -> (volumeMount, volume)."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in container(deployment)["volumeMounts"]}


def volume_at(deployment: dict, path: str | Path) -> tuple[dict, dict]:
    """The mount whose mountPath holds ``path`` (the deepest one)."""
    path = PurePosixPath(str(path))
    found = [mp for mp in mounts(deployment) if path == PurePosixPath(mp) or PurePosixPath(mp) in path.parents]
    assert found, f"{deployment['metadata']['name']}: nothing is mounted at {path}"
    return mounts(deployment)[max(found, key=len)]


def settings_in(r: Rendered, deployment: dict, tmp_path: Path, **extra_env: str):
    """load_settings as the container runs it: its FEDAD_CONFIG from the mounted ConfigMap, its environment."""
    env = resolve_env(r, container(deployment))
    config_path = env["FEDAD_CONFIG"]
    mount, volume = volume_at(deployment, config_path)
    assert "configMap" in volume, f"{config_path} is not on a ConfigMap volume"
    key = str(PurePosixPath(config_path).relative_to(mount["mountPath"]))
    text = r.configmap_value(volume["configMap"]["name"], key)
    local = tmp_path / deployment["metadata"]["name"] / "config.yaml"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(text)
    return load_settings(local, environ={**env, **extra_env}), env


def fastapi_routes(app, prefix: str = "") -> set[tuple[str, str]]:
    """(path, method) of every route, also of routers included lazily (FastAPI >= 0.165 keeps them whole)."""
    found = set()
    for route in app.routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            found |= fastapi_routes(included, prefix + (getattr(context, "prefix", "") or ""))
        else:
            found |= {(prefix + route.path, method) for method in getattr(route, "methods", None) or ()}
    return found


def asgi_get(app, path: str) -> httpx.Response:
    """GET from the app in-process (no server, no lifespan)."""
    async def get():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            return await client.get(path)
    return asyncio.run(get())


def nodeport_base(group_vars) -> int:
    return int(group_vars["fedad_aggregator_nodeport"])


# --- workers and ports --------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_worker_deployment_per_configured_worker(rendered, overlay):
    workers = rendered[overlay].workers()
    assert sorted(workers) == sorted(WORKER_IDS), "deploy/base/workers/ must list exactly config.yaml's workers"
    for wid, d in workers.items():
        assert d["metadata"]["name"] == f"worker-{wid}"
        assert d["spec"]["replicas"] == 1 and d["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_and_service_ports_equal_config_yaml(rendered, overlay):
    r = rendered[overlay]
    expected = {"aggregator": CONFIG.aggregator.port} | {f"worker-{w.id}": w.port for w in CONFIG.workers}
    for name, port in expected.items():
        c = container(r.deployment(name))
        assert [(p["name"], p["containerPort"]) for p in c["ports"]] == [("http", port)], name
        service = r.get("Service", name)
        assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(port, "http")], name
        labels = r.deployment(name)["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), f"Service {name} selects no pod of {name}"


def test_gcp_workers_reach_the_aggregator_nodeport(rendered, group_vars):
    r = rendered["gcp-kubeedge"]
    service = r.get("Service", "aggregator")
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"][0]["nodePort"] == nodeport_base(group_vars)
    for wid, d in r.workers().items():
        url = resolve_env(r, container(d))["FEDAD__AGGREGATOR__URL"]
        assert url.endswith(f":{nodeport_base(group_vars)}"), url


def test_single_node_workers_reach_the_aggregator_service_and_publish_nodeports(rendered):
    r = rendered["k3s"]
    for wid, d in r.workers().items():
        url = resolve_env(r, container(d))["FEDAD__AGGREGATOR__URL"]
        assert url == f"http://aggregator.fedad.svc:{CONFIG.aggregator.port}"
        service = r.get("Service", f"worker-{wid}")
        assert service["spec"]["ports"][0]["nodePort"] == CONFIG.worker(wid).port + 22000   # docs/deploy.md
    assert r.get("Service", "aggregator")["spec"]["ports"][0]["nodePort"] == 30080


# --- the services' code: probes and environment ----------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probe_and_metrics_paths_are_routes_of_the_fastapi_apps(rendered, overlay, tmp_path):
    from services.aggregator.app import create_app as aggregator_app
    from services.worker.app import create_app as worker_app

    r = rendered[overlay]
    agg = r.deployment("aggregator")
    settings, _ = settings_in(r, agg, tmp_path, FEDAD__AGGREGATOR__STATE_DIR=str(tmp_path / "agg"))
    apps = {"aggregator": aggregator_app(settings)}
    for wid, d in r.workers().items():
        settings, _ = settings_in(r, d, tmp_path, **{f"FEDAD__WORKERS__{wid.upper()}__STATE_DIR": str(tmp_path / wid)})
        apps[d["metadata"]["name"]] = worker_app(settings, settings.worker(wid), start_loop=False)
    for name, app in apps.items():
        routes = fastapi_routes(app)
        c = container(r.deployment(name))
        scrape = r.deployment(name)["spec"]["template"]["metadata"].get("annotations", {})
        assert scrape.get("prometheus.io/scrape") == "true", f"{name} is not annotated for Prometheus"
        scraped = asgi_get(app, scrape["prometheus.io/path"])
        assert scraped.status_code == 200 and "# TYPE fedad_" in scraped.text, f"{name}: nothing to scrape"
        probes = {kind: c[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
        assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for kind, probe in probes.items():
            get = probe["httpGet"]
            assert (get["path"], "GET") in routes, f"{name} {kind}: GET {get['path']} is not a route of the app"
            assert get["port"] in [p["name"] for p in c["ports"]], f"{name} {kind} probes a port it does not open"
    assert ("/detect", "POST") in fastapi_routes(apps["worker-valve1"]), \
        "the worker's /detect route (docs/deploy.md queries it)"


def _is_environ(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ" or isinstance(node, ast.Name) and \
        node.id == "environ"


def environment_reads(roots: list[Path]) -> set[str]:
    """The names the code under ``roots`` reads from its environment: ``os.environ.get("X")``,
    ``os.environ["X"]``, ``os.getenv("X")``, ``"X" in os.environ``. A name that is only quoted, or only set
    (``os.environ.setdefault``, an assignment), is not read."""
    found: set[str] = set()
    for path in (p for root in roots for p in ([root] if root.is_file() else root.rglob("*.py"))):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                f = node.func
                if isinstance(f, ast.Attribute) and (f.attr == "get" and _is_environ(f.value) or
                                                     f.attr == "getenv" and isinstance(f.value, ast.Name)):
                    found.add(node.args[0].value)
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environ(node.value) \
                    and isinstance(node.slice, ast.Constant):
                found.add(node.slice.value)
            elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and \
                    isinstance(node.ops[0], ast.In) and _is_environ(node.comparators[0]):
                found.add(node.left.value)
    return found


def test_the_environment_scan_tells_a_read_from_a_mention():
    reads = environment_reads(PLAIN_ENV_READERS)
    assert {"FEDAD_CONFIG", "FEDAD_WORKER_ID", "FEDAD_WORKER_MODE", "FEDAD_FAULT"} <= reads
    assert "ORT_DISABLE_TELEMETRY" not in reads, "services/__init__.py only sets it (for onnxruntime to read)"
    assert "FEDAD_WORKER_ID_TYPO" not in reads


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_env_var_is_one_the_services_read(rendered, overlay, tmp_path):
    """FEDAD__* through the services' config loader (a misspelt key is a ConfigError); every other name must be
    read from the environment by the services' code or the image's entrypoint (not merely appear in it)."""
    reads = environment_reads(PLAIN_ENV_READERS)
    r = rendered[overlay]
    for d in r.of_kind("Deployment"):
        settings, env = settings_in(r, d, tmp_path)   # raises ConfigError naming a bad key
        for name in env:
            if not name.startswith("FEDAD__"):
                assert name in reads, f"{d['metadata']['name']}: nothing in services/ reads {name}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployed_settings_listen_everywhere_with_the_workers_own_tokens(rendered, overlay, tmp_path):
    r = rendered[overlay]
    settings, env = settings_in(r, r.deployment("aggregator"), tmp_path)
    assert settings.aggregator.host == "0.0.0.0"
    assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in container(r.deployment("aggregator"))["env"])
    assert all(w.token is None and w.token_sha256 for w in settings.workers), "the aggregator keeps digests only"
    config_text = r.configmap_value("fedad-config", "config.yaml")
    assert all("token" not in w and "token_sha256" in w for w in yaml.safe_load(config_text)["workers"])
    assert "dev-token" not in config_text

    for wid, d in r.workers().items():
        settings, env = settings_in(r, d, tmp_path)
        me = settings.worker(wid)
        assert me.host == "0.0.0.0" and env["FEDAD_WORKER_ID"] == wid
        assert me.token and hash_token(me.token) == me.token_sha256, "the Secret's token matches the config digest"
        secrets = [e["valueFrom"]["secretKeyRef"]["name"] for e in container(d)["env"]
                   if "secretKeyRef" in e.get("valueFrom", {})]
        assert [s.rsplit("-", 1)[0] for s in secrets] == [f"fedad-token-{wid}"], "a worker gets its own token only"


# --- device data: each worker on its node's MQTT broker -------------------------------------------------------

KUBEEDGE_TOPICS = {("$ke/events/device/+/data/update", "kubeedge_data"),
                   ("$hw/events/device/+/twin/update", "kubeedge_twin")}


def test_kubeedge_workers_subscribe_to_their_edge_nodes_broker(rendered, group_vars, tmp_path):
    """On KubeEdge, the settings a worker container loads enable MQTT on the node's broker (127.0.0.1:1883, the
    address EdgeCore's event bus uses) with KubeEdge's device-data and twin topics; the pod is on the node's
    network, so that loopback address is the node's; ansible runs that broker on every edge node."""
    r = rendered["gcp-kubeedge"]
    host, port = group_vars["fedad_edge_mqtt_host"], int(group_vars["fedad_edge_mqtt_port"])
    assert (host, port) == ("127.0.0.1", 1883), "KubeEdge's broker on an edge node"
    for wid, d in r.workers().items():
        settings, env = settings_in(r, d, tmp_path)
        mqtt = settings.ingest.mqtt
        assert mqtt.enabled and (mqtt.host, mqtt.port) == (host, port), (wid, mqtt)
        assert settings.twin.enabled, "the verdict goes into the devices' twins (deploy/devices)"
        assert KUBEEDGE_TOPICS <= {(t.topic, t.format) for t in mqtt.topics}, mqtt.topics
        assert d["spec"]["template"]["spec"]["hostNetwork"] is True
        # the worker's own settings go on to the ingestion pipeline: a client id of its own on the node's broker
        assert (mqtt.client_id or f"fedad-{wid}") == f"fedad-{wid}"
    role = ANSIBLE_DIR / "roles" / "kubeedge_edge"
    tasks = (role / "tasks" / "main.yml").read_text()
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    assert "name: mosquitto" in tasks and "--with-mqtt=false" in tasks, "Debian's broker, not keadm's image"
    assert "listener {{ kubeedge_edge_mqtt_port }} {{ kubeedge_edge_mqtt_host }}" in tasks
    assert (defaults["kubeedge_edge_mqtt_host"], defaults["kubeedge_edge_mqtt_port"]) == \
        ("{{ fedad_edge_mqtt_host }}", "{{ fedad_edge_mqtt_port }}")


def test_single_node_workers_leave_mqtt_off(rendered, tmp_path):
    """k3s/kind: no broker on the node, so the workers do not try one (config.yaml's ingest.mqtt.enabled)."""
    r = rendered["k3s"]
    for wid, d in r.workers().items():
        settings, _ = settings_in(r, d, tmp_path)
        assert settings.ingest.mqtt.enabled is CONFIG.ingest.mqtt.enabled is False
        assert settings.twin.enabled is CONFIG.twin.enabled is False


# --- volumes ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_state_and_data_volumes_are_mounted_where_the_settings_point(rendered, overlay, tmp_path, group_vars):
    r = rendered[overlay]
    root = PurePosixPath(group_vars["fedad_root"])
    agg = r.deployment("aggregator")
    settings, _ = settings_in(r, agg, tmp_path)
    mount, volume = volume_at(agg, settings.aggregator.state_dir)
    assert mount["mountPath"] == str(settings.aggregator.state_dir) and not mount.get("readOnly")
    assert volume["hostPath"] == {"path": str(root / "state" / "aggregator"), "type": "Directory"}

    host_paths = set()
    for wid, d in r.workers().items():
        settings, env = settings_in(r, d, tmp_path)
        state_dir = settings.worker(wid).state_dir
        mount, volume = volume_at(d, state_dir)
        assert mount["mountPath"] == str(state_dir) and not mount.get("readOnly"), "the worker writes its state"
        assert volume["hostPath"] == {"path": str(root / "state" / wid), "type": "Directory"}
        host_paths.add(volume["hostPath"]["path"])
        data_mount, data_volume = volume_at(d, settings.data.source.dir)
        assert str(settings.data.source.dir) == env["FEDAD__DATA__SOURCE__DIR"] == data_mount["mountPath"] + "/skab"
        assert data_mount.get("readOnly") is True
        assert data_volume["hostPath"] == {"path": str(root / "data"), "type": "Directory"}
    assert len(host_paths) == len(WORKER_IDS), "every worker keeps its own state dir"

    for d in r.of_kind("Deployment"):
        c = container(d)
        if c["securityContext"].get("readOnlyRootFilesystem"):
            assert "emptyDir" in volume_at(d, "/tmp")[1], "a read-only root needs a writable /tmp"


# --- node selection -----------------------------------------------------------------------------------------

def _matches(expr: dict, labels: dict) -> bool:
    key, op, values = expr["key"], expr["operator"], expr.get("values", [])
    return {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
            "Exists": key in labels, "DoesNotExist": key not in labels}[op]


def _tolerates(toleration: dict, taint: dict) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint["effect"]:
        return False
    if toleration.get("operator", "Equal") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint["key"]
    return toleration.get("key") == taint["key"] and toleration.get("value", "") == taint.get("value", "")


def schedulable(pod: dict, node: dict) -> bool:
    """The scheduler's node filters that matter here: nodeSelector, required node affinity, taints."""
    labels = node["labels"]
    if any(labels.get(k) != v for k, v in (pod.get("nodeSelector") or {}).items()):
        return False
    terms = (pod.get("affinity", {}).get("nodeAffinity", {})
             .get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms"))
    if terms and not any(all(_matches(e, labels) for e in t.get("matchExpressions", [])) for t in terms):
        return False
    return all(any(_tolerates(t, taint) for t in pod.get("tolerations", []))
               for taint in node["taints"] if taint["effect"] in ("NoSchedule", "NoExecute"))


def gcp_nodes() -> dict[str, dict]:
    """The example inventory's nodes with the labels and taints they get: kubeadm (control plane), keadm join
    (node-role.kubernetes.io/edge), KubeEdge without a CNI (network-unavailable), ansible (worker label, taint)."""
    inventory = yaml.safe_load((ANSIBLE_DIR / "inventory" / "gcp" / "hosts.yml").read_text())["all"]["children"]
    nodes = {}
    for name in inventory["cloud"]["hosts"]:
        nodes[name] = {"labels": {"node-role.kubernetes.io/control-plane": "", "kubernetes.io/hostname": name},
                       "taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}
    for name, hostvars in inventory["edge"]["hosts"].items():
        nodes[name] = {"labels": {"node-role.kubernetes.io/edge": "", "kubernetes.io/hostname": name,
                                  f"fedad.io/worker-{hostvars['fedad_worker_id']}": "true"},
                       "taints": [{"key": "node-role.kubernetes.io/edge", "effect": "NoSchedule"},
                                  {"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}]}
    return nodes


def test_ansible_gives_edge_nodes_the_labels_and_taint_the_test_assumes():
    apply = (ANSIBLE_DIR / "roles" / "fedad_apply" / "tasks" / "main.yml").read_text()
    join = (ANSIBLE_DIR / "roles" / "kubeedge_edge" / "tasks" / "main.yml").read_text()
    assert "'fedad.io/worker-' ~ item.1: 'true'" in apply and "fedad.io/worker-{{ fedad_worker_id }}=true" in join
    assert "key: node-role.kubernetes.io/edge\n        effect: NoSchedule" in apply


def test_gcp_workers_run_only_on_their_edge_node_and_the_aggregator_only_on_the_cloud_node(rendered):
    r = rendered["gcp-kubeedge"]
    nodes = gcp_nodes()
    inventory_worker = {n: next((k.split("-", 1)[1] for k in v["labels"] if k.startswith("fedad.io/worker-")), None)
                        for n, v in nodes.items()}
    agg = r.deployment("aggregator")["spec"]["template"]["spec"]
    assert [n for n in nodes if schedulable(agg, nodes[n])] == [n for n, w in inventory_worker.items() if w is None]
    for wid, d in r.workers().items():
        pod = d["spec"]["template"]["spec"]
        assert [n for n in nodes if schedulable(pod, nodes[n])] == [n for n, w in inventory_worker.items() if w == wid]
        # an edge node without its worker label (a new node) or any cloud-side node never gets a worker
        assert not schedulable(pod, {"labels": {"node-role.kubernetes.io/edge": ""}, "taints": []})
        assert not schedulable(pod, {"labels": {f"fedad.io/worker-{wid}": "true"}, "taints": []})
        assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "Default"
        # edge autonomy: a cut link to the cloud does not evict the worker
        for key in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"):
            assert any(_tolerates(t, {"key": key, "effect": "NoExecute"}) and "tolerationSeconds" not in t
                       for t in pod["tolerations"])
    # the aggregator never lands on an edge node, whatever labels and taints that node has
    assert not schedulable(agg, {"labels": {"node-role.kubernetes.io/edge": "",
                                            "node-role.kubernetes.io/control-plane": ""}, "taints": []})


@pytest.mark.parametrize("taints", [[], [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]],
                         ids=["k3s", "kind"])
def test_single_node_cluster_runs_everything_on_its_node(rendered, taints):
    node = {"labels": {f"fedad.io/worker-{w}": "true" for w in WORKER_IDS}, "taints": taints}   # local.yml labels
    for d in rendered["k3s"].of_kind("Deployment"):
        assert schedulable(d["spec"]["template"]["spec"], node), d["metadata"]["name"]


# --- images, users, resources -------------------------------------------------------------------------------

def test_images_are_the_ones_docker_builds_and_run_their_entrypoint(rendered):
    containers_mk = (REPO / "mk" / "containers.mk").read_text()
    for service in ("aggregator", "worker"):
        dockerfile = (REPO / "docker" / f"{service}.Dockerfile").read_text()
        uid = int(re.search(r"^ARG UID=(\d+)", dockerfile, re.M).group(1))
        assert re.search(r"^USER \$\{UID\}", dockerfile, re.M)
        assert re.search(rf"^{service.upper()}_IMAGE \?= fedad-{service}:\$\(IMAGE_TAG\)", containers_mk, re.M)
        for r in rendered.values():
            for d in r.of_kind("Deployment"):
                c = container(d)
                if c["image"].split(":")[0] != f"fedad-{service}":
                    continue
                assert c["image"] == f"fedad-{service}:latest" and c["imagePullPolicy"] == "IfNotPresent"
                assert "command" not in c and "args" not in c, "the image's entrypoint applies container defaults"
                pod_security = d["spec"]["template"]["spec"]["securityContext"]
                assert pod_security["runAsUser"] == uid and pod_security["runAsNonRoot"] is True
    images = {container(d)["image"] for r in rendered.values() for d in r.of_kind("Deployment")}
    assert images == {"fedad-aggregator:latest", "fedad-worker:latest"}


def mib(quantity: str) -> float:
    return int(quantity[:-2]) * {"Ki": 2**-10, "Mi": 1, "Gi": 2**10}[quantity[-2:]]


def millicores(quantity: str) -> float:
    return float(quantity[:-1]) if quantity.endswith("m") else float(quantity) * 1000


def assert_resources_cover(d: dict, kind: str) -> None:
    name, resources = d["metadata"]["name"], container(d)["resources"]
    requests, limits = resources["requests"], resources["limits"]
    assert mib(requests["memory"]) >= MEASURED_MIB[kind]["holds"], f"{name} requests less than it holds"
    assert mib(limits["memory"]) >= HEADROOM * MEASURED_MIB[kind]["peak"], f"{name}: no headroom over its peak"
    assert 0 < millicores(requests["cpu"]) <= millicores(limits["cpu"]), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_cover_the_measured_memory(rendered, overlay):
    for d in rendered[overlay].of_kind("Deployment"):
        kind = "aggregator" if d["metadata"]["name"] == "aggregator" else "worker"
        assert_resources_cover(d, kind)
    # a training worker reserves what it serves with, not its training peak: a small gateway schedules it
    worker = rendered[overlay].workers()[WORKER_IDS[0]]
    assert mib(container(worker)["resources"]["requests"]["memory"]) <= 192


def test_detect_only_component_runs_the_torch_free_image_within_its_measured_memory(tmp_path):
    """A worker's folder plus deploy/components/detect-only, rendered as its kustomization would be: the
    detect-only image (built by make image-worker-detect), its mode, and the gateway's resources."""
    deploy = REPO / "deploy"

    def rel(path: Path) -> str:  # kustomize takes relative paths only
        return Path(os.path.relpath(path, tmp_path)).as_posix()

    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [rel(deploy / "base" / "workers" / WORKER_IDS[-1])],
        "components": [rel(deploy / "components" / "detect-only")]}))
    out = run([tool("kubectl"), "kustomize", "--load-restrictor=LoadRestrictionsNone", str(tmp_path)]).stdout
    [d] = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"]
    c = container(d)
    assert c["image"] == "fedad-worker-detect:latest" and c["imagePullPolicy"] == "IfNotPresent"
    assert re.search(r"^WORKER_DETECT_IMAGE \?= fedad-worker-detect:\$\(IMAGE_TAG\)",
                     (REPO / "mk" / "containers.mk").read_text(), re.M)
    dockerfile = (REPO / "docker" / "worker-detect.Dockerfile").read_text()
    assert 'EXCLUDE="torch' in dockerfile, "the detect-only image carries no torch"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FEDAD_WORKER_MODE"] == "detect_only" and env["FEDAD_WORKER_ID"] == WORKER_IDS[-1]
    assert 'os.environ.get("FEDAD_WORKER_MODE")' in (REPO / "docker" / "entrypoint.py").read_text()
    assert_resources_cover(d, "worker-detect")
    assert mib(container(d)["resources"]["limits"]["memory"]) <= 192, "fits the gateway the container test uses"


def test_arm64_component_runs_the_arm64_tags_only_on_arm64_nodes(tmp_path):
    """A worker's folder plus detect-only and arm64, as the component's header says to list them: the -arm64 tags
    that make images-arm64 builds, and a selector that keeps the pod off amd64 nodes."""
    deploy = REPO / "deploy"

    def rel(path: Path) -> str:
        return Path(os.path.relpath(path, tmp_path)).as_posix()

    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [rel(deploy / "base" / "workers" / WORKER_IDS[-1])],
        "components": [rel(deploy / "components" / "detect-only"), rel(deploy / "components" / "arm64")]}))
    out = run([tool("kubectl"), "kustomize", "--load-restrictor=LoadRestrictionsNone", str(tmp_path)]).stdout
    [d] = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"]
    assert container(d)["image"] == "fedad-worker-detect:latest-arm64"
    assert d["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/arch"] == "arm64"
    pod = d["spec"]["template"]["spec"]
    node = {k: v for k, v in pod["nodeSelector"].items() if k != "kubernetes.io/arch"}  # the worker's own node
    assert not schedulable(pod, {"labels": {**node, "kubernetes.io/arch": "amd64"}, "taints": []})
    assert schedulable(pod, {"labels": {**node, "kubernetes.io/arch": "arm64"}, "taints": []})
    assert "-arm64" in (REPO / "mk" / "containers.mk").read_text(), "make images-arm64 builds the -arm64 tags"
