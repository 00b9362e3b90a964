"""deploy/devices: the pump's DeviceModel and Devices against KubeEdge's v1beta1 types, config.yaml, the worker's
routes and the worker's own parsers.

No cluster holds KubeEdge's CRDs here, so the manifests are checked against the fields of KubeEdge's Go types
(pkg/apis/devices/v1beta1: device_model_types.go, device_instance_types.go), strictly: a misspelled field fails.
What each Device makes its mapper send is rebuilt the way the mapper framework builds it
(mapper-framework/_template/mapper/data/publish/{mqtt,http,otel}) and handed to the worker's parsers: the device
and every property must come out as the worker's stream and features.
"""

from __future__ import annotations

import datetime as dt
import time
from urllib.parse import urlsplit

import pytest
import yaml

from services.config import load_settings
from services.worker.ingest.http_push import parse_push
from services.worker.ingest.messages import TopicFilter, parse
from services.worker.twin import VERDICT_PROPERTIES

from .conftest import ANSIBLE_DIR, REPO, run, tool
from .test_contract import fastapi_routes

pytestmark = pytest.mark.deploy

CONFIG = load_settings(REPO / "config.yaml", environ={})
FEATURES = CONFIG.data.features
ANY = object()  # free-form (configData: the protocol's own keys)
# devices.kubeedge.io/v1beta1, field by field (json tags of the Go types); a leaf is the value's Python type
TWIN_PROPERTY = {"value": str, "metadata": ANY}
DEVICE_SPEC = {
    "deviceModelRef": {"name": str}, "nodeName": str,
    "protocol": {"protocolName": str, "configData": ANY},
    "properties": [{
        "name": str, "desired": TWIN_PROPERTY, "reportCycle": int, "collectCycle": int, "reportToCloud": bool,
        "visitors": {"protocolName": str, "configData": ANY},
        "pushMethod": {"http": {"hostName": str, "port": int, "requestPath": str, "timeout": int},
                       "mqtt": {"address": str, "topic": str, "qos": int, "retained": bool},
                       "otel": {"endpointURL": str}, "dbMethod": ANY}}],
}
MODEL_SPEC = {"protocol": str, "properties": [{
    "name": str, "description": str, "type": ("INT", "FLOAT", "DOUBLE", "STRING", "BOOLEAN", "BYTES"),
    "accessMode": ("ReadWrite", "ReadOnly"), "minimum": str, "maximum": str, "unit": str}]}
METADATA = {"name": str, "namespace": str, "labels": ANY, "annotations": ANY}
SCHEMAS = {"Device": {"apiVersion": str, "kind": str, "metadata": METADATA, "spec": DEVICE_SPEC},
           "DeviceModel": {"apiVersion": str, "kind": str, "metadata": METADATA, "spec": MODEL_SPEC}}


def problems(value, schema, where: str = "") -> list[str]:
    """Where ``value`` leaves the schema: unknown fields, wrong types, values outside an enum."""
    if schema is ANY:
        return []
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{where}: an object expected"]
        out = [f"{where}.{k}: no such field in v1beta1" for k in value if k not in schema]
        for k, v in value.items():
            if k in schema:
                out += problems(v, schema[k], f"{where}.{k}")
        return out
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{where}: a list expected"]
        return [p for i, item in enumerate(value) for p in problems(item, schema[0], f"{where}[{i}]")]
    if isinstance(schema, tuple):
        return [] if value in schema else [f"{where}: {value!r} is not one of {schema}"]
    if schema is int and isinstance(value, bool) or not isinstance(value, schema):
        return [f"{where}: {value!r} is not {schema.__name__}"]
    return []


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    out = run([tool("kubectl"), "kustomize", "deploy/devices"]).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def devices(docs) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Device"}


@pytest.fixture(scope="module")
def model(docs) -> dict:
    models = [d for d in docs if d["kind"] == "DeviceModel"]
    assert len(models) == 1
    return models[0]


def worker_of_node() -> dict[str, str]:
    """Edge node name -> the worker id that runs there (ansible's example inventory)."""
    inventory = yaml.safe_load((ANSIBLE_DIR / "inventory" / "gcp" / "hosts.yml").read_text())
    hosts = inventory["all"]["children"]["edge"]["hosts"]
    return {name: host["fedad_worker_id"] for name, host in hosts.items()}


def test_manifests_use_only_fields_of_kubeedges_v1beta1_types(docs):
    assert sorted(d["kind"] for d in docs) == ["Device", "Device", "Device", "DeviceModel"]
    for d in docs:
        assert d["apiVersion"] == "devices.kubeedge.io/v1beta1"
        assert d["metadata"]["namespace"] == "fedad"
        assert problems(d, SCHEMAS[d["kind"]], d["metadata"]["name"]) == []


def test_the_schema_check_catches_a_misspelled_field(devices):
    broken = yaml.safe_load(yaml.safe_dump(devices["pump-valve1"]))
    broken["spec"]["properties"][0]["pushMethod"]["mqtt"]["topik"] = "x"
    broken["spec"]["properties"][1]["reportCycle"] = "1s"
    found = problems(broken, SCHEMAS["Device"], "pump-valve1")
    assert any("topik" in p for p in found) and any("reportCycle" in p for p in found), found


def test_the_model_declares_every_feature_and_the_verdict(model):
    props = {p["name"]: p for p in model["spec"]["properties"]}
    assert list(props) == [*FEATURES, *VERDICT_PROPERTIES], "data.features in order, then the verdict"
    for name in FEATURES:
        assert props[name]["type"] == "FLOAT" and props[name]["accessMode"] == "ReadOnly" and props[name]["unit"]
    assert props["anomaly_score"]["type"] == "FLOAT"
    assert props["alarm"]["type"] == props["top_sensor"]["type"] == "STRING"


def test_every_device_has_the_models_properties_and_sits_on_a_workers_node(devices, model):
    nodes = worker_of_node()
    assert {nodes[d["spec"]["nodeName"]] for d in devices.values()} == {w.id for w in CONFIG.workers}
    model_props = [p["name"] for p in model["spec"]["properties"]]
    for name, d in devices.items():
        assert d["spec"]["deviceModelRef"]["name"] == model["metadata"]["name"]
        props = {p["name"]: p for p in d["spec"]["properties"]}
        assert list(props) == model_props, f"{name}: the Device lists the model's properties (twins exist only for those)"
        for feature in FEATURES:
            assert props[feature]["visitors"]["protocolName"] == d["spec"]["protocol"]["protocolName"]
            assert "pushMethod" in props[feature], f"{name} {feature}: no pushMethod, the worker would never see it"
        for verdict in VERDICT_PROPERTIES:  # written by the worker, not read by the mapper
            assert "visitors" not in props[verdict] and "pushMethod" not in props[verdict]
        assert d["metadata"]["labels"]["fedad.io/worker"] == nodes[d["spec"]["nodeName"]]


def test_the_examples_cover_mqtt_http_and_otel(devices):
    methods = {next(iter(p["pushMethod"])) for d in devices.values() for p in d["spec"]["properties"] if "pushMethod" in p}
    assert methods == {"mqtt", "http", "otel"}


def pushes(device: dict, method: str) -> list[tuple[str, dict]]:
    return [(p["name"], p["pushMethod"][method]) for p in device["spec"]["properties"]
            if method in p.get("pushMethod", {})]


def test_mqtt_pushes_reach_a_subscription_of_the_worker_on_the_node(devices):
    """The mapper publishes ``time is <local time>  <topic>: <value>`` to the Device's topic on the node's broker;
    that topic matches one of the worker's ingest.mqtt.topics, whose parser yields the device and the feature."""
    nodes = worker_of_node()
    checked = 0
    for name, d in devices.items():
        worker = nodes[d["spec"]["nodeName"]]
        routes = [(TopicFilter(t.topic.replace("{worker}", worker)), t.format) for t in CONFIG.ingest.mqtt.topics]
        for prop, mqtt in pushes(d, "mqtt"):
            address = urlsplit(mqtt["address"])
            assert (address.hostname, address.port) == (CONFIG.ingest.mqtt.host, CONFIG.ingest.mqtt.port)
            assert mqtt["qos"] == 1 and not mqtt["retained"]
            matched = [(f.match(mqtt["topic"]), fmt) for f, fmt in routes if f.match(mqtt["topic"])]
            assert matched, f"{name} {prop}: topic {mqtt['topic']} matches no ingest.mqtt.topics entry"
            (device, prop_in_topic), fmt = matched[0]
            when = dt.datetime(2026, 11, 27, 10, 0, 0)
            payload = f"time is {when:%Y-%m-%d %H:%M:%S}  {mqtt['topic']}: 1.25".encode()
            [reading] = parse(fmt, mqtt["topic"], payload, frozenset(FEATURES), device, prop_in_topic, now=time.time())
            assert (reading.device, reading.values, reading.timestamp) == (name, {prop: 1.25}, when.timestamp())
            checked += 1
    assert checked == len(FEATURES)


def test_http_pushes_reach_the_push_route_of_the_worker_on_the_node(devices, tmp_path):
    """The mapper POSTs ``<property>=<value>&time=<local time>`` to hostName:port + requestPath (concatenated as
    written): the worker on the same node, on its config.yaml port, at its push route for this device."""
    from services.worker.app import create_app

    nodes = worker_of_node()
    checked = 0
    for name, d in devices.items():
        worker = CONFIG.worker(nodes[d["spec"]["nodeName"]])
        for prop, http in pushes(d, "http"):
            url = urlsplit(f"{http['hostName']}:{http['port']}{http['requestPath']}")
            assert (url.scheme, url.hostname, url.port) == ("http", "127.0.0.1", worker.port)
            assert url.path == f"/v1/ingest/push/{name}"
            reading = parse_push(name, f"{prop}=2.5&time=2026-11-27 10:00:00".encode(), frozenset(FEATURES), 0.0)
            assert (reading.device, reading.values) == (name, {prop: 2.5})
            checked += 1
        if checked:
            app = create_app(CONFIG, worker.model_copy(update={"state_dir": str(tmp_path / worker.id)}),
                             start_loop=False)
            assert ("/v1/ingest/push/{device}", "POST") in fastapi_routes(app)
    assert checked == len(FEATURES)


def test_otel_pushes_reach_the_otlp_route_of_the_worker_on_the_node(devices, tmp_path):
    """The mapper exports a gauge named by the property from a resource whose device.id is <namespace>/<device>,
    to endpointURL: the worker's OTLP route on its node, whose parser yields the device and the feature."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.metrics.v1.metrics_pb2 import Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics

    from services.worker.app import create_app
    from services.worker.ingest.otlp import PROTOBUF, parse_otlp

    nodes = worker_of_node()
    checked = 0
    for name, d in devices.items():
        worker = CONFIG.worker(nodes[d["spec"]["nodeName"]])
        for prop, otel in pushes(d, "otel"):
            url = urlsplit(otel["endpointURL"])
            assert (url.scheme, url.hostname, url.port) == ("http", "127.0.0.1", worker.port)
            resource = ResourceMetrics(scope_metrics=[ScopeMetrics(metrics=[Metric(name=prop, gauge=Gauge(
                data_points=[NumberDataPoint(time_unix_nano=1_764_000_000 * 10**9, as_double=3.5)]))])])
            resource.resource.attributes.append(KeyValue(key="device.id", value=AnyValue(
                string_value=f"{d['metadata']['namespace']}/{name}")))
            body = ExportMetricsServiceRequest(resource_metrics=[resource]).SerializeToString()
            [reading] = parse_otlp(body, PROTOBUF, frozenset(FEATURES), 0.0).readings
            assert (reading.device, reading.values) == (name, {prop: 3.5})
            checked += 1
        if checked:
            app = create_app(CONFIG, worker.model_copy(update={"state_dir": str(tmp_path / worker.id)}),
                             start_loop=False)
            assert (url.path, "POST") in fastapi_routes(app)
    assert checked == len(FEATURES)
