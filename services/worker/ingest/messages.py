"""Device messages → readings: a device, a time and some sensor values, checked, or ``Refused`` with a reason.

Four MQTT formats, chosen by the subscription a topic matched (``ingest.mqtt.topics``), and the mapper's HTTP push
(``http_push``). A topic filter's first ``+`` level names the device, a second ``+`` the property:

- ``rows``: a JSON object keyed by feature name (``{"Current": 1.2, …}``, optional ``"timestamp"`` and
  ``"device"``), or a list of such objects;
- ``kubeedge_data``: KubeEdge's device-data message (``$ke/events/device/+/data/update``):
  ``{"event_id", "timestamp", "data": {"<property>": {"value": "<string>", "metadata": {"timestamp", "type"}}}}``;
- ``kubeedge_twin``: KubeEdge's device-twin update (``$hw/events/device/+/twin/update``):
  ``{"event_id", "timestamp", "twin": {"<property>": {"actual": {"value": "<string>"}, "metadata": {…}}}}``; the
  worker's own verdict properties there (``twin.VERDICT_PROPERTIES``, its reports heard back) are skipped;
- ``property``: one property per message, as KubeEdge's mapper framework publishes it (text
  ``time is 2006-01-02 15:04:05  <topic>: <value>``), or a bare value, or ``{"value": …, "timestamp": …}``.

Values arrive as strings (KubeEdge) or numbers; both must parse to a finite float32. Properties that are not in
``data.features`` are ignored (a device may report more than the model watches); a message with none of them is
refused. Timestamps: epoch milliseconds (KubeEdge) or seconds (told apart by size), or ISO 8601 / ``YYYY-MM-DD
HH:MM:SS`` (without a zone: the node's local time, as the mapper writes it); a message without one gets its arrival
time. Refusal reasons are a closed set (``REASONS``), each an error code of services/protocol/errors.py: they label
``fedad_worker_ingest_refused_total`` and are the codes the HTTP push answers with.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass

import orjson

from services.protocol import errors
from services.worker.twin import VERDICT_PROPERTIES

FORMATS = ("rows", "kubeedge_data", "kubeedge_twin", "property")
REASONS = tuple(e.code for e in (errors.TOO_LARGE, errors.MALFORMED_JSON, errors.BAD_PAYLOAD, errors.NO_DEVICE,
                                 errors.BAD_DEVICE_ID, errors.UNKNOWN_PROPERTY, errors.NOT_A_NUMBER,
                                 errors.NON_FINITE, errors.BAD_TIMESTAMP, errors.LATE, errors.INCOMPLETE_ROW,
                                 errors.QUEUE_FULL, errors.NO_MODEL, errors.BAD_MEDIA_TYPE))
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")  # the stream ids /detect accepts
MAX_PAYLOAD = 1 << 20  # bytes of one message
MAX_ROWS_PER_MESSAGE = 10_000
FLOAT32_MAX = 3.4028234663852886e38
MS_THRESHOLD = 1e11  # an epoch number above this is milliseconds (1e11 s is the year 5138)
MAPPER_TEXT = re.compile(r"^time is (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\s+(.*?): (.*)$", re.DOTALL)
META_KEYS = {"timestamp", "time", "device", "device_id"}


class Refused(ValueError):
    """A message (or a row) the worker does not take: ``reason`` from REASONS, ``detail`` for the log."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Reading:
    """Some properties of one device at one time (seconds since the epoch); a whole row when it holds them all."""

    device: str
    timestamp: float
    values: dict[str, float]


class TopicFilter:
    """An MQTT subscription filter that also says which levels of a matching topic are the device and property."""

    def __init__(self, pattern: str):
        self.pattern = pattern
        self.levels = pattern.split("/")

    def match(self, topic: str) -> tuple[str | None, str | None] | None:
        """(device, property) captured by the first and second ``+``, or None if the topic does not match."""
        parts = topic.split("/")
        captured = []
        for i, level in enumerate(self.levels):
            if level == "#":
                break
            if i >= len(parts):
                return None
            if level == "+":
                captured.append(parts[i])
            elif level != parts[i]:
                return None
        else:
            if len(parts) != len(self.levels):
                return None
        captured += [None, None]
        return captured[0], captured[1]


def device_id(value, where: str) -> str:
    if not isinstance(value, str) or not DEVICE_ID.match(value):
        raise Refused("bad_device_id", f"{where}: device id {str(value)[:80]!r} is not 1-128 letters, digits, _ . : -")
    return value


def number(value, prop: str) -> float:
    """A sensor value as sent (a string from KubeEdge, or a JSON number) → float, or Refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Refused("not_a_number", f"{prop}: {str(value)[:40]!r} is not a number")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise Refused("not_a_number", f"{prop}: {value[:40]!r} is not a number") from None
    value = float(value)
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise Refused("non_finite", f"{prop}: {value} is not a finite float32")
    return value


def timestamp(value, where: str) -> float:
    """Epoch seconds from epoch ms or s (a number or a string of digits), or an ISO-like date and time string."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise Refused("bad_timestamp", f"{where}: timestamp {text[:40]!r} is neither epoch ms/s nor ISO 8601") \
                    from None
            return moment.timestamp()  # naive: the node's local time
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise Refused("bad_timestamp", f"{where}: timestamp {str(value)[:40]!r} is not a positive epoch time")
    return value / 1000.0 if value > MS_THRESHOLD else float(value)


def _json(payload: bytes, where: str):
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise Refused("malformed_json", f"{where}: not JSON ({exc})") from None


def _device(topic_device: str | None, payload_device, where: str) -> str:
    chosen = topic_device if topic_device is not None else payload_device
    if chosen is None:
        raise Refused("no_device", f"{where}: no device in the topic (a '+' level) nor in the payload ('device')")
    return device_id(chosen, where)


def parse(fmt: str, where: str, payload: bytes, features: frozenset[str], topic_device: str | None = None,
          topic_property: str | None = None, now: float = 0.0) -> list[Reading]:
    """One message → its readings (several only for a list of rows or properties with different timestamps).
    ``where`` names the message in refusals (its topic); ``now`` is the arrival time for messages without one."""
    if len(payload) > MAX_PAYLOAD:
        raise Refused("too_large", f"{where}: {len(payload)} bytes exceed {MAX_PAYLOAD}")
    if fmt == "rows":
        return _rows(_json(payload, where), where, features, topic_device, now)
    if fmt == "kubeedge_data":
        return _kubeedge(_json(payload, where), "data", where, features, topic_device, now)
    if fmt == "kubeedge_twin":
        return _kubeedge(_json(payload, where), "twin", where, features, topic_device, now)
    if fmt == "property":
        return [_property(payload, where, features, topic_device, topic_property, now)]
    raise ValueError(f"unknown message format {fmt!r}")


def _rows(doc, where: str, features, topic_device, now) -> list[Reading]:
    items = doc if isinstance(doc, list) else [doc]
    if not items or len(items) > MAX_ROWS_PER_MESSAGE:
        raise Refused("bad_payload", f"{where}: a list of 1 to {MAX_ROWS_PER_MESSAGE} rows is expected")
    readings = []
    for i, item in enumerate(items):
        here = f"{where} row {i}" if isinstance(doc, list) else where
        if not isinstance(item, dict):
            raise Refused("bad_payload", f"{here}: a row is an object keyed by feature name")
        device = _device(topic_device, item.get("device", item.get("device_id")), here)
        stamp = item.get("timestamp", item.get("time"))
        values = {k: number(v, f"{here} {k}") for k, v in item.items() if k not in META_KEYS and k in features}
        if not values:
            raise Refused("unknown_property", f"{here}: none of {sorted(item)[:10]} is a configured feature")
        readings.append(Reading(device, now if stamp is None else timestamp(stamp, here), values))
    return readings


def _kubeedge(doc, key: str, where: str, features, topic_device, now) -> list[Reading]:
    if not isinstance(doc, dict) or not isinstance(doc.get(key), dict) or not doc[key]:
        raise Refused("bad_payload", f'{where}: expected {{"event_id", "timestamp", "{key}": {{"<property>": …}}}}')
    device = _device(topic_device, None, where)
    default = timestamp(doc["timestamp"], where) if doc.get("timestamp") not in (None, 0) else now
    by_time: dict[float, dict[str, float]] = {}
    seen = []
    for prop, entry in doc[key].items():
        if key == "twin" and prop in VERDICT_PROPERTIES:
            continue  # the worker's own verdict, heard back from the broker (services/worker/twin.py)
        seen.append(prop)
        if prop not in features:
            continue
        if not isinstance(entry, dict):
            raise Refused("bad_payload", f"{where} {prop}: expected an object")
        holder = entry.get("actual") if key == "twin" else entry
        if key == "twin" and holder is None:
            continue  # an expected value only (a desired setting), no reading
        if not isinstance(holder, dict) or "value" not in holder:
            raise Refused("bad_payload", f'{where} {prop}: no "value"' + (' in "actual"' if key == "twin" else ""))
        meta = holder.get("metadata") if isinstance(holder.get("metadata"), dict) else {}
        stamp = timestamp(meta["timestamp"], f"{where} {prop}") if meta.get("timestamp") not in (None, 0) else default
        by_time.setdefault(stamp, {})[prop] = number(holder["value"], f"{where} {prop}")
    if not by_time:
        if not seen:
            return []  # only the worker's own verdict: nothing to score, nothing refused
        raise Refused("unknown_property", f"{where}: none of {sorted(seen)[:10]} is a configured feature with a value")
    return [Reading(device, t, values) for t, values in sorted(by_time.items())]


def _property(payload: bytes, where: str, features, topic_device, topic_property, now) -> Reading:
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise Refused("bad_payload", f"{where}: not UTF-8 text") from None
    device, prop, stamp = topic_device, topic_property, None
    mapper = MAPPER_TEXT.match(text)
    if mapper:
        stamp, value = timestamp(mapper.group(1), where), mapper.group(3).strip()
    elif text.startswith("{"):
        doc = _json(payload, where)
        if not isinstance(doc, dict) or "value" not in doc:
            raise Refused("bad_payload", f'{where}: expected {{"value": …, "timestamp": …}}')
        value = doc["value"]
        prop = prop or doc.get("property", doc.get("propertyName"))
        device = device or doc.get("device", doc.get("deviceName"))
        raw_time = doc.get("timestamp", doc.get("timeStamp"))
        stamp = None if raw_time in (None, 0) else timestamp(raw_time, where)
    else:
        value = text
    device = _device(device, None, where)
    if not isinstance(prop, str) or prop not in features:
        raise Refused("unknown_property", f"{where}: property {str(prop)[:60]!r} is not a configured feature")
    return Reading(device, now if stamp is None else stamp, {prop: number(value, f"{where} {prop}")})
