"""OTLP/HTTP metrics (KubeEdge's ``pushMethod: otel``) into a worker: requests built with the official
opentelemetry-proto classes, as protobuf, JSON and gzip, feed the same scoring and alarms as MQTT; malformed ones get
a coded 4xx, are counted, and nothing of them is scored."""

from __future__ import annotations

import gzip
import math

import httpx
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics

from services.protocol.errors import CODES
from services.worker.ingest.messages import Refused
from services.worker.ingest.otlp import JSON, PROTOBUF, parse_otlp
from support import wait_until

from .test_ingest_mqtt import ALARM_TOPIC, BASELINE, FEATURES, ROWS, Client, expected_events, ingest_status, \
    same_events, stamp

ROUTE = "/v1/ingest/otlp/v1/metrics"


def request(device: str | None, rows, first: int, extra: dict[str, float] | None = None) -> ExportMetricsServiceRequest:
    """What the mapper framework's otel push sends: a gauge per property, the device in ``device.id``
    (``<namespace>/<name>``); here several rows' points per gauge, each with its time."""
    gauges = {f: Gauge() for f in FEATURES}
    for i, row in enumerate(rows):
        for f, v in zip(FEATURES, row):
            gauges[f].data_points.append(NumberDataPoint(time_unix_nano=stamp(first + i) * 10**9, as_double=float(v)))
    metrics = [Metric(name=f, gauge=g) for f, g in gauges.items()]
    for name, value in (extra or {}).items():
        metrics.append(Metric(name=name, gauge=Gauge(data_points=[NumberDataPoint(as_double=value)])))
    resource = ResourceMetrics(scope_metrics=[ScopeMetrics(metrics=metrics)])
    resource.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="mapper")))
    if device is not None:
        resource.resource.attributes.append(KeyValue(key="device.id", value=AnyValue(string_value=device)))
    return ExportMetricsServiceRequest(resource_metrics=[resource])


def refusal(body: bytes, content_type: str = PROTOBUF, encoding: str = "") -> str:
    with pytest.raises(Refused) as caught:
        parse_otlp(body, content_type, frozenset(FEATURES), 1.0, encoding)
    return caught.value.reason


# --- the parser ------------------------------------------------------------------------------------------------

def test_protobuf_json_and_gzip_give_the_same_readings():
    message = request("fedad/pump-other", ROWS[:3], 0, extra={"fan_speed": 3.0})
    as_protobuf = parse_otlp(message.SerializeToString(), PROTOBUF, frozenset(FEATURES), 1.0)
    as_json = parse_otlp(json_format.MessageToJson(message).encode(), f"{JSON}; charset=utf-8", frozenset(FEATURES), 1.0)
    zipped = parse_otlp(gzip.compress(message.SerializeToString()), PROTOBUF, frozenset(FEATURES), 1.0, "gzip")
    for parsed in (as_protobuf, as_json, zipped):
        assert [(r.device, r.timestamp) for r in parsed.readings] == [("pump-other", stamp(i)) for i in range(3)]
        assert parsed.readings[1].values == pytest.approx(dict(zip(FEATURES, map(float, ROWS[1]))))
        assert parsed.ignored == {"fan_speed": 1}
    body, media = as_protobuf.answer()
    answer = ExportMetricsServiceResponse.FromString(body)
    assert media == PROTOBUF and answer.partial_success.rejected_data_points == 1
    assert "fan_speed" in answer.partial_success.error_message
    assert as_json.answer()[1] == JSON


@pytest.mark.parametrize("case, reason", [
    ("wrong content type", "bad_media_type"), ("not protobuf", "bad_payload"), ("not JSON", "malformed_json"),
    ("not gzip", "bad_payload"), ("no device.id", "no_device"), ("bad device id", "bad_device_id"),
    ("no feature", "unknown_property"), ("NaN", "non_finite"), ("beyond float32", "non_finite"),
    ("point without value", "not_a_number"), ("gzip bomb", "too_large")])
def test_malformed_requests_are_refused_with_their_code(case, reason):
    good = request("fedad/pump", ROWS[:1], 0)
    if case == "wrong content type":
        got = refusal(good.SerializeToString(), "text/plain")
    elif case == "not protobuf":
        got = refusal(b"\xff\xff\xff\x07garbage")
    elif case == "not JSON":
        got = refusal(b'{"resourceMetrics": [', JSON)
    elif case == "not gzip":
        got = refusal(good.SerializeToString(), PROTOBUF, "gzip")
    elif case == "no device.id":
        got = refusal(request(None, ROWS[:1], 0).SerializeToString())
    elif case == "bad device id":
        got = refusal(request("fedad/pump 7; rm", ROWS[:1], 0).SerializeToString())
    elif case == "no feature":
        other = request("fedad/pump", [], 0, extra={"fan_speed": 1.0})
        got = refusal(other.SerializeToString())
    elif case in ("NaN", "beyond float32"):
        bad = request("fedad/pump", ROWS[:1], 0)
        bad.resource_metrics[0].scope_metrics[0].metrics[2].gauge.data_points[0].as_double = \
            math.nan if case == "NaN" else 1e39
        got = refusal(bad.SerializeToString())
    elif case == "point without value":
        bad = request("fedad/pump", ROWS[:1], 0)
        bad.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0].ClearField("as_double")
        got = refusal(bad.SerializeToString())
    else:
        got = refusal(gzip.compress(b"\0" * (2 << 20)), PROTOBUF, "gzip")
    assert got == reason
    assert reason in CODES and 400 <= CODES[reason].status < 500, "a registered 4xx code"


# --- a worker ------------------------------------------------------------------------------------------------------

def test_otlp_rows_score_like_detect_and_open_alarms_and_malformed_ones_score_nothing(trained_stack, mosquitto,
                                                                                      mqtt_worker, tmp_path):
    worker = mqtt_worker(trained_stack, mosquitto, tmp_path / "worker")
    listener = Client(mosquitto, "otlp-alarm-listener", listen=ALARM_TOPIC)
    try:
        with httpx.Client(base_url=worker.url, timeout=30) as http:
            for case, body, headers, status, code in [
                ("protobuf as text", request("fedad/otlp-pump", ROWS[:5], 0).SerializeToString(),
                 {"content-type": "text/plain"}, 415, "bad_media_type"),
                ("garbage", b"\xff\xff\xff\x07", {"content-type": PROTOBUF}, 422, "bad_payload"),
                ("no device", request(None, ROWS[:5], 0).SerializeToString(), {"content-type": PROTOBUF}, 422,
                 "no_device"),
                ("cut JSON", b'{"resourceMetrics": [{', {"content-type": JSON}, 422, "malformed_json"),
                ("too large", b"\0" * ((1 << 20) + 1), {"content-type": PROTOBUF}, 413, "too_large")]:
                r = http.post(ROUTE, content=body, headers=headers)
                assert (r.status_code, r.json()["code"]) == (status, code), (case, r.text)
                assert r.json()["detail"], case
            status = ingest_status(worker)
            assert status["refused"] == {"bad_media_type": 1, "bad_payload": 1, "no_device": 1, "malformed_json": 1,
                                         "too_large": 1}
            assert status["counts"]["readings"] == 0, "nothing of a refused request is taken"
            # the rows as the mapper would send them, 20 rows of points per request; every other one as JSON
            for k, first in enumerate(range(0, len(ROWS), 20)):
                message = request("fedad/otlp-pump", ROWS[first:first + 20], first)
                if k % 2:
                    r = http.post(ROUTE, content=json_format.MessageToJson(message), headers={"content-type": JSON})
                    assert r.status_code == 200 and r.headers["content-type"].startswith(JSON), r.text
                else:
                    r = http.post(ROUTE, content=message.SerializeToString(), headers={"content-type": PROTOBUF})
                    assert r.status_code == 200 and r.headers["content-type"] == PROTOBUF, r.text
                    assert ExportMetricsServiceResponse.FromString(r.content).partial_success.rejected_data_points == 0
        wait_until(lambda: ingest_status(worker)["counts"]["rows_scored"] == len(ROWS) - BASELINE, 60,
                   "the OTLP rows to be scored")
        expected = expected_events(worker, "otlp-pump", ROWS)
        assert expected, "the fault's onset should open an alarm"
        wait_until(lambda: len(listener.events) >= len(expected), 30, "the alarm events")
        same_events(listener.events, expected)
        assert {e["stream"] for e in listener.events} == {"otlp-pump"}
    finally:
        listener.close()
        worker.kill()
