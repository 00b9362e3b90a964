"""Single-property readings → whole rows per device: tolerance, time order, the missing-property rule, lateness."""

import numpy as np
import pytest

from services.worker.ingest.assemble import Assembler
from services.worker.ingest.messages import Reading

FEATURES = ["a", "b", "c"]


def make(missing="drop", max_devices=100):
    refusals = []
    assembler = Assembler(FEATURES, tolerance_s=0.5, max_wait_s=5.0, missing=missing, max_devices=max_devices,
                          refuse=lambda reason, detail: refusals.append(reason))
    return assembler, refusals


def feed(assembler, readings, clock=0.0):
    rows = []
    for device, t, values in readings:
        rows += assembler.add(Reading(device, t, values), clock)
    return rows


def test_properties_within_the_tolerance_make_one_row_in_feature_order():
    assembler, refusals = make()
    rows = feed(assembler, [("d", 100.0, {"b": 2}), ("d", 100.2, {"c": 3}), ("d", 99.9, {"a": 1})])
    assert len(rows) == 1 and rows[0].timestamp == 100.0 and refusals == []
    np.testing.assert_array_equal(rows[0].values, np.float32([1, 2, 3]))


def test_a_whole_row_passes_at_once_and_devices_do_not_mix():
    assembler, _ = make()
    rows = feed(assembler, [("d1", 1.0, {"a": 1}), ("d2", 1.0, {"a": 9, "b": 9, "c": 9}), ("d1", 1.1, {"b": 2})])
    assert [(r.device, r.timestamp) for r in rows] == [("d2", 1.0)]


def test_rows_leave_in_time_order_even_when_a_later_one_completes_first():
    assembler, _ = make()
    rows = feed(assembler, [("d", 1.0, {"a": 1}), ("d", 2.0, {"a": 2, "b": 2}), ("d", 2.1, {"c": 2}),
                            ("d", 1.1, {"b": 1})])
    assert rows == []  # row 2 is whole but row 1 still waits for c
    rows = feed(assembler, [("d", 1.2, {"c": 1})])
    assert [r.timestamp for r in rows] == [1.0, 2.0]


def test_a_repeated_property_starts_the_next_row():
    assembler, _ = make()
    rows = feed(assembler, [("d", 1.0, {"a": 1}), ("d", 1.0, {"a": 2}), ("d", 1.0, {"b": 1}), ("d", 1.0, {"c": 1}),
                            ("d", 1.0, {"b": 2}), ("d", 1.0, {"c": 2})])
    assert [r.values[0] for r in rows] == [1, 2]


@pytest.mark.parametrize("missing", ["drop", "carry_forward"])
def test_a_property_that_never_arrives(missing):
    assembler, refusals = make(missing)
    rows = feed(assembler, [("d", 1.0, {"a": 1, "b": 1, "c": 1}), ("d", 2.0, {"a": 2, "b": 2})])  # c is lost
    assert len(rows) == 1
    rows = feed(assembler, [("d", 8.0, {"a": 8, "b": 8, "c": 8})])  # 6 s later: row 2 waited past max_wait_s
    if missing == "drop":
        assert [r.timestamp for r in rows] == [8.0] and refusals == ["incomplete_row"]
    else:
        assert [r.timestamp for r in rows] == [2.0, 8.0] and refusals == [] and assembler.carried == 1
        np.testing.assert_array_equal(rows[0].values, np.float32([2, 2, 1]))  # c carried from the row before


def test_a_quiet_device_is_resolved_by_the_clock():
    assembler, refusals = make("carry_forward")
    assert feed(assembler, [("d", 1.0, {"a": 1})], clock=100.0) == []
    assert assembler.expire(104.0) == []
    assert assembler.expire(106.0) == [] and refusals == ["incomplete_row"]  # nothing earlier to carry forward


def test_late_readings_are_refused():
    assembler, refusals = make()
    feed(assembler, [("d", 5.0, {"a": 1, "b": 1, "c": 1})])
    assert feed(assembler, [("d", 4.0, {"a": 1})]) == [] and refusals == ["late"]


def test_devices_are_bounded_and_an_evicted_pending_row_is_counted():
    assembler, refusals = make(max_devices=2)
    feed(assembler, [("d1", 1.0, {"a": 1}), ("d2", 1.0, {"a": 1}), ("d3", 1.0, {"a": 1})])
    assert list(assembler.devices) == ["d2", "d3"] and refusals == ["incomplete_row"]
