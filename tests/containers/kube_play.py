"""Rendered manifests → what Debian's podman 4.3 runs with `podman kube play`, and the record of what it cannot run.

podman executes a Kubernetes Pod or Deployment with its ConfigMaps (env and volumes), hostPath and emptyDir volumes,
security context (user, read-only root, capabilities), resource limits and host network. What it cannot take as is,
measured with podman 4.3.1 on Debian bookworm, and what ``translate`` does about it (docs/deploy.md lists the same):

- ``Secret`` in the played file: podman 4.3 resolves ``secretKeyRef`` from a *podman* secret whose content is a JSON
  object of base64 values (``{"token": "<base64>"}``); a Secret in the file is refused ("secret … is not valid
  JSON"). → each Secret becomes ``podman secret create <name>`` with its ``data`` as that JSON.
- container ``ports`` on the host network: podman turns them into port mappings and refuses them with host networking
  ("PortMappings can only be used with Bridge or slirp4netns networking"). → dropped; probes that name a port get its
  number.
- ``Service``, ``Namespace``, cluster DNS: podman has none. → Services and the Namespace are left out, every pod uses
  the host network, and ``fedad-site``'s ``aggregator_url`` (a Service name in the k3s overlay) becomes the
  aggregator's port on 127.0.0.1.
- scheduling (``nodeSelector``, ``affinity``, ``tolerations``): there is one host. → removed (podman would ignore
  them); tests/deploy/test_contract.py's scheduler model checks placement instead.
- probes: podman turns the liveness probe into a healthcheck that runs ``curl`` inside the container (the images have
  none) on a systemd timer (none here): not executed. → the test asks ``/healthz`` and ``/readyz`` itself.
- hostPath ``/var/lib/fedad/...``: → the same layout under a folder of the run's own.
"""

from __future__ import annotations

import base64
import copy
import json

DROPPED_KINDS = ("Namespace", "Service")
SCHEDULING = ("nodeSelector", "affinity", "tolerations")
HOST_ROOT = "/var/lib/fedad"


def translate(docs: list[dict], host_root: str, keep: set[str] | None = None) -> tuple[list[dict], dict[str, str]]:
    """(documents for ``podman kube play``, {secret name: content for ``podman secret create``}).
    ``keep``: the Deployments to run (by name), None for all."""
    played, secrets = [], {}
    aggregator_port = None
    for doc in docs:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "aggregator":
            aggregator_port = doc["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    for doc in copy.deepcopy(docs):
        kind = doc["kind"]
        if kind in DROPPED_KINDS:
            continue
        if kind == "Secret":
            data = doc.get("data") or {}
            data |= {k: base64.b64encode(v.encode()).decode() for k, v in (doc.get("stringData") or {}).items()}
            secrets[doc["metadata"]["name"]] = json.dumps(data)
            continue
        if kind == "ConfigMap" and doc["metadata"]["name"].startswith("fedad-site") and aggregator_port:
            doc["data"]["aggregator_url"] = f"http://127.0.0.1:{aggregator_port}"
        if kind == "Deployment":
            if keep is not None and doc["metadata"]["name"] not in keep:
                continue
            _pod(doc["spec"]["template"]["spec"], host_root)
        played.append(doc)
    return played, secrets


def _pod(spec: dict, host_root: str) -> None:
    spec["hostNetwork"] = True
    spec["dnsPolicy"] = "Default"
    for field in SCHEDULING:
        spec.pop(field, None)
    for container in spec["containers"]:
        ports = {p["name"]: p["containerPort"] for p in container.pop("ports", [])}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = container.get(probe, {}).get("httpGet")
            if get and isinstance(get["port"], str):
                get["port"] = ports[get["port"]]
    for volume in spec.get("volumes", []):
        host = volume.get("hostPath")
        if host and host["path"].startswith(HOST_ROOT):
            host["path"] = host_root + host["path"][len(HOST_ROOT):]
