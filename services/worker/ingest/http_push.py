"""The mapper's HTTP push (KubeEdge mapper framework, ``pushMethod: http``): a form-encoded body
``<property>=<value>&time=<YYYY-MM-DD HH:MM:SS>`` POSTed to the device's ``requestPath``; here
``POST /v1/ingest/push/<device>``. Several properties in one body are one reading. It feeds the same assembly,
scoring and alarms as MQTT."""

from __future__ import annotations

from urllib.parse import parse_qsl

from services.worker.ingest.messages import MAX_PAYLOAD, Reading, Refused, device_id, number, timestamp

FORM_TYPE = "application/x-www-form-urlencoded"
TIME_KEYS = ("time", "timestamp")


def parse_push(device: str, body: bytes, features: frozenset[str], now: float) -> Reading:
    where = f"HTTP push {device[:80]}"
    device = device_id(device, where)
    if len(body) > MAX_PAYLOAD:
        raise Refused("too_large", f"{where}: {len(body)} bytes exceed {MAX_PAYLOAD}")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise Refused("bad_payload", f"{where}: expected a form body <property>=<value>&time=<time>") from None
    stamp, values, seen = now, {}, []
    for key, value in pairs:
        if key in TIME_KEYS:
            stamp = timestamp(value, where)
            continue
        seen.append(key)
        if key in features:
            values[key] = number(value, f"{where} {key}")
    if not values:
        raise Refused("unknown_property", f"{where}: none of {sorted(seen)[:10]} is a configured feature")
    return Reading(device, stamp, values)
