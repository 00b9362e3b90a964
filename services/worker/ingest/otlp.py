"""OTLP/HTTP metrics → readings: what KubeEdge's mapper framework sends with ``pushMethod: otel``
(``endpointURL: http://127.0.0.1:<worker port>/v1/ingest/otlp/v1/metrics``).

The mapper exports each device property as a gauge named by the property, with the resource attribute
``device.id`` = ``<namespace>/<device name>`` (mapper-framework ``data/publish/otel``); the device is the part after
the last ``/``, the stream the same device's MQTT and HTTP readings feed. Bodies are decoded with the official
``opentelemetry-proto`` messages: ``application/x-protobuf`` or OTLP's JSON encoding (``application/json``), either
optionally gzip-compressed. Gauge and sum data points whose metric is a configured feature become readings (one per
device and time, ``time_unix_nano`` or the arrival time); other metrics are not refused but counted back in the
answer's ``partial_success`` (the OTLP way to say "not taken"). A request is refused as a whole, with a reason from
``messages.REASONS``, when it cannot be decoded, names no device, holds no feature, or a feature's value is not a
finite float32: nothing of it is scored.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from services.worker.ingest.messages import MAX_PAYLOAD, Reading, Refused, device_id, number

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
DEVICE_ATTRIBUTE = "device.id"


@dataclass
class Parsed:
    readings: list[Reading]
    ignored: dict[str, int]  # metric name -> data points not taken (not a configured feature, or not a gauge/sum)
    json: bool  # answer in the request's encoding

    def answer(self) -> tuple[bytes, str]:
        """The ExportMetricsServiceResponse body and its content type; ``partial_success`` names what was ignored."""
        response = ExportMetricsServiceResponse()
        if self.ignored:
            response.partial_success.rejected_data_points = sum(self.ignored.values())
            names = ", ".join(sorted(self.ignored)[:10])
            response.partial_success.error_message = f"not configured features (data.features), not taken: {names}"
        if self.json:
            return json_format.MessageToJson(response, indent=None).encode(), JSON
        return response.SerializeToString(), PROTOBUF


def media_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def decode(body: bytes, content_type: str, content_encoding: str = "") -> tuple[ExportMetricsServiceRequest, bool]:
    where = "OTLP metrics"
    kind = media_type(content_type)
    if kind not in (PROTOBUF, JSON):
        raise Refused("bad_media_type", f"{where}: Content-Type {content_type[:60]!r}; send {PROTOBUF} or {JSON}")
    if content_encoding.strip().lower() == "gzip":
        inflate = zlib.decompressobj(wbits=31)
        try:
            body = inflate.decompress(body, MAX_PAYLOAD + 1)
        except zlib.error as exc:
            raise Refused("bad_payload", f"{where}: not gzip ({exc})") from None
        if len(body) > MAX_PAYLOAD or inflate.unconsumed_tail:
            raise Refused("too_large", f"{where}: more than {MAX_PAYLOAD} bytes once decompressed")
    elif content_encoding.strip().lower() not in ("", "identity"):
        raise Refused("bad_payload", f"{where}: Content-Encoding {content_encoding[:40]!r}; gzip or none")
    request = ExportMetricsServiceRequest()
    try:
        if kind == JSON:
            json_format.Parse(body.decode("utf-8"), request, ignore_unknown_fields=True)
        else:
            request.ParseFromString(body)
    except (DecodeError, json_format.ParseError, UnicodeDecodeError, RecursionError) as exc:
        encoding = "OTLP JSON" if kind == JSON else "an OTLP protobuf ExportMetricsServiceRequest"
        raise Refused("malformed_json" if kind == JSON else "bad_payload",
                      f"{where}: not {encoding} ({str(exc)[:120]})") from None
    return request, kind == JSON


def parse_otlp(body: bytes, content_type: str, features: frozenset[str], now: float,
               content_encoding: str = "") -> Parsed:
    request, as_json = decode(body, content_type, content_encoding)
    by_key: dict[tuple[str, float], dict[str, float]] = {}
    ignored: dict[str, int] = {}
    for r, resource_metrics in enumerate(request.resource_metrics):
        where = f"OTLP metrics resource {r}"
        device = _device(resource_metrics.resource.attributes, where)
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                kind = metric.WhichOneof("data")
                points = getattr(metric, kind).data_points if kind in ("gauge", "sum") else []
                if metric.name not in features or kind not in ("gauge", "sum"):
                    ignored[metric.name[:80]] = ignored.get(metric.name[:80], 0) + max(len(points), 1)
                    continue
                for point in points:
                    which = point.WhichOneof("value")
                    if which is None:
                        raise Refused("not_a_number", f"{where} {metric.name}: a data point without a value")
                    value = number(float(getattr(point, which)), f"{where} {metric.name}")
                    stamp = point.time_unix_nano / 1e9 if point.time_unix_nano else now
                    by_key.setdefault((device, stamp), {})[metric.name] = value
    if not by_key:
        names = sorted(ignored)[:10]
        raise Refused("unknown_property", f"OTLP metrics: none of {names} is a configured feature with a data point")
    readings = [Reading(device, stamp, values) for (device, stamp), values in sorted(by_key.items())]
    return Parsed(readings, ignored, as_json)


def _device(attributes, where: str) -> str:
    for attribute in attributes:
        if attribute.key == DEVICE_ATTRIBUTE:
            value = attribute.value.string_value
            return device_id(value.rsplit("/", 1)[-1], f"{where} {DEVICE_ATTRIBUTE} {value[:80]!r}")
    raise Refused("no_device", f"{where}: no resource attribute {DEVICE_ATTRIBUTE} (the mapper sets "
                               f"<namespace>/<device name>)")
