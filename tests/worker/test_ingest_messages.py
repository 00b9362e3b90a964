"""Device messages → readings: every format, and each kind of malformed message refused with its reason."""

import datetime as dt

import orjson
import pytest

from services.config import load_settings
from services.worker.ingest.http_push import parse_push
from services.worker.ingest.messages import REASONS, Refused, TopicFilter, parse

FEATURES = frozenset(load_settings().data.features)
NOW = 1_800_000_000.0
T_MS = 1_764_237_600_123  # KubeEdge: epoch milliseconds


def refused(fmt, payload, device="pump1", prop=None) -> str:
    with pytest.raises(Refused) as caught:
        parse(fmt, "topic t", payload if isinstance(payload, bytes) else orjson.dumps(payload), FEATURES,
              device, prop, now=NOW)
    assert caught.value.reason in REASONS and "topic t" in caught.value.detail
    return caught.value.reason


def test_topic_filters_capture_device_and_property():
    assert TopicFilter("$ke/events/device/+/data/update").match("$ke/events/device/pump-1/data/update") == \
        ("pump-1", None)
    assert TopicFilter("fedad/w/properties/+/+").match("fedad/w/properties/pump1/Current") == ("pump1", "Current")
    assert TopicFilter("fedad/w/rows/+").match("fedad/w/rows/a/b") is None
    assert TopicFilter("fedad/w/rows/+").match("fedad/other/rows/a") is None
    assert TopicFilter("fedad/#").match("fedad/w/rows/a") == (None, None)


def test_json_rows_one_or_a_list_numbers_or_strings_with_optional_time_and_device():
    [one] = parse("rows", "t", b'{"Current": "1.25", "Pressure": 0.5, "timestamp": 1764237600}', FEATURES,
                  "pump1", now=NOW)
    assert (one.device, one.timestamp, one.values) == ("pump1", 1764237600.0, {"Current": 1.25, "Pressure": 0.5})
    many = parse("rows", "t", orjson.dumps([{"Current": 1, "device": "d2"}, {"Current": 2, "device": "d2",
                                                                             "timestamp": T_MS}]), FEATURES, None,
                 now=NOW)
    assert [(r.device, r.timestamp, r.values["Current"]) for r in many] == [("d2", NOW, 1.0), ("d2", T_MS / 1e3, 2.0)]


def test_kubeedge_device_data_message():
    payload = {"event_id": "e1", "timestamp": T_MS, "data": {
        "Current": {"value": "1.53", "metadata": {"timestamp": T_MS, "type": "float"}},
        "Pressure": {"value": "2", "metadata": {"timestamp": T_MS, "type": "int"}},
        "status": {"value": "running", "metadata": {"type": "string"}}}}  # not a feature: ignored
    [reading] = parse("kubeedge_data", "t", orjson.dumps(payload), FEATURES, "pump1", now=NOW)
    assert reading.values == {"Current": 1.53, "Pressure": 2.0} and reading.timestamp == T_MS / 1000


def test_kubeedge_twin_update_takes_actual_values_only():
    payload = {"event_id": "e2", "timestamp": T_MS, "twin": {
        "Current": {"actual": {"value": "1.5"}, "metadata": {"type": "Updated"}},
        "Voltage": {"expected": {"value": "230"}, "metadata": {"type": "Updated"}}}}
    [reading] = parse("kubeedge_twin", "t", orjson.dumps(payload), FEATURES, "pump1", now=NOW)
    assert reading.values == {"Current": 1.5} and reading.timestamp == T_MS / 1000


def test_single_property_messages_mapper_text_bare_value_and_json():
    text = b"time is 2026-11-27 10:00:05  fedad/w/properties/pump1/Current: 1.75"
    [r] = parse("property", "t", text, FEATURES, "pump1", "Current", now=NOW)
    assert r.values == {"Current": 1.75}
    assert r.timestamp == dt.datetime(2026, 11, 27, 10, 0, 5).timestamp()  # the node's local time
    [r] = parse("property", "t", b" 0.25 ", FEATURES, "pump1", "Pressure", now=NOW)
    assert (r.values, r.timestamp) == ({"Pressure": 0.25}, NOW)
    [r] = parse("property", "t", b'{"value": "3", "timestamp": 1764237600000}', FEATURES, "pump1", "Voltage",
                now=NOW)
    assert (r.values, r.timestamp) == ({"Voltage": 3.0}, 1764237600.0)


@pytest.mark.parametrize("fmt, payload, reason", [
    ("rows", b"{not json", "malformed_json"),
    ("rows", b"[]", "bad_payload"),
    ("rows", b"[1, 2]", "bad_payload"),
    ("rows", {"Current": "abc"}, "not_a_number"),
    ("rows", {"Current": True}, "not_a_number"),
    ("rows", {"Current": None}, "not_a_number"),
    ("rows", {"Current": "NaN"}, "non_finite"),
    ("rows", {"Current": "1e39"}, "non_finite"),
    ("rows", {"Current": 1, "timestamp": "yesterday"}, "bad_timestamp"),
    ("rows", {"Current": 1, "timestamp": -5}, "bad_timestamp"),
    ("rows", {"speed": 1}, "unknown_property"),
    ("kubeedge_data", {"event_id": "e", "data": {}}, "bad_payload"),
    ("kubeedge_data", {"event_id": "e", "data": {"Current": "1.5"}}, "bad_payload"),
    ("kubeedge_data", {"event_id": "e", "data": {"Current": {"metadata": {}}}}, "bad_payload"),
    ("kubeedge_data", {"data": {"Current": {"value": "x1"}}}, "not_a_number"),
    ("kubeedge_twin", {"twin": {"Current": {"actual": {"value": "inf"}}}}, "non_finite"),
    ("kubeedge_twin", {"twin": {"Current": {"expected": {"value": "1"}}}}, "unknown_property"),
    ("property", b"\xff\xfe", "bad_payload"),
    ("property", b"open", "not_a_number"),
    ("property", b"time is 2026-13-45 99:00:00  t: 1", "bad_timestamp"),
    ("rows", b"x" * ((1 << 20) + 1), "too_large"),
])
def test_malformed_messages_are_refused_with_a_reason(fmt, payload, reason):
    assert refused(fmt, payload, prop="Current") == reason


def test_device_id_from_topic_or_payload_must_be_a_stream_id():
    assert refused("rows", {"Current": 1}, device=None) == "no_device"
    assert refused("rows", {"Current": 1}, device="bad/id?") == "bad_device_id"
    assert refused("property", b"1", prop="Speed") == "unknown_property"


def test_http_push_form_as_the_mapper_sends_it():
    reading = parse_push("pump1", b"Current=1.5&time=2026-11-27+10%3A00%3A05", FEATURES, NOW)
    assert reading.values == {"Current": 1.5}
    assert reading.timestamp == dt.datetime(2026, 11, 27, 10, 0, 5).timestamp()
    assert parse_push("pump1", b"Current=1&Pressure=2", FEATURES, NOW).values == {"Current": 1.0, "Pressure": 2.0}
    for body, reason in [(b"Current=abc", "not_a_number"), (b"Speed=1", "unknown_property"),
                         (b"Current", "bad_payload"), (b"Current=1&time=soon", "bad_timestamp")]:
        with pytest.raises(Refused) as caught:
            parse_push("pump1", body, FEATURES, NOW)
        assert caught.value.reason == reason
    with pytest.raises(Refused) as caught:
        parse_push("..", b"Current=1", FEATURES, NOW)
    assert caught.value.reason == "bad_device_id"
