"""Alarm debouncing per stream, and the outbox: on disk, at least once, bounded, per-sink progress."""

import numpy as np

from services.worker.alarms import AlarmBook, Outbox
from support import scored


def book(events, open_after=3, clear_after=2):
    return AlarmBook("w1", open_after, clear_after, events.append, keep_recent=5)


def observe(alarms, stream, flags, scores=None, start=0.0):
    flags = np.asarray(flags, dtype=bool)
    scores = np.asarray(scores if scores is not None else np.where(flags, 2.0, 0.1))
    return alarms.observe(scored(stream, 0, scores, flags, model_round=7,
                                 times=[start + i for i in range(len(flags))]))


def test_opens_after_n_consecutive_anomalous_rows_clears_after_m_normal_ones():
    events = []
    alarms = book(events)
    assert observe(alarms, "s", [1, 1, 0, 1, 1]) == []  # runs of 2: no alarm
    [opened] = observe(alarms, "s", [1, 0], scores=[5.0, 0.1], start=5)  # the third row in a row opens it
    assert opened["event"] == "opened" and opened["start_time"] == 3.0 and opened["peak_score"] == 5.0
    assert opened["stream"] == "s" and opened["threshold"] == 1.0 and opened["model_round"] == 7
    assert opened["top_sensors"] == []
    assert observe(alarms, "s", [1, 0, 1], scores=[9.0, 0.1, 3.0], start=7) == []  # one normal row: still open
    assert list(alarms.open_streams()) == ["s"]
    [cleared] = observe(alarms, "s", [0, 0, 0], start=10)
    assert cleared["event"] == "cleared" and cleared["alarm_id"] == opened["alarm_id"]
    assert cleared["peak_score"] == 9.0 and cleared["end_time"] == 11.0 and cleared["start_time"] == 3.0
    assert events == [opened, cleared]
    doc = alarms.document()
    assert doc["open"] == [] and doc["recent"][0]["alarm_id"] == opened["alarm_id"]
    assert doc["events"] == {"opened": 1, "cleared": 1}


def test_streams_are_independent():
    events = []
    alarms = book(events)
    observe(alarms, "a", [1, 1])
    observe(alarms, "b", [1, 1])
    observe(alarms, "a", [1])
    assert [e["stream"] for e in events] == ["a"] and list(alarms.open_streams()) == ["a"]


def test_outbox_keeps_events_until_every_sink_acknowledged_and_survives_a_restart(tmp_path):
    delivered, webhook_up = [], [False]

    def mqtt(event):
        delivered.append(("mqtt", event["n"]))
        return True

    def webhook(event):
        if webhook_up[0]:
            delivered.append(("webhook", event["n"]))
        return webhook_up[0]

    outbox = Outbox(tmp_path, {"mqtt": mqtt, "webhook": webhook}, max_events=10, retry_s=(0.01, 0.05))
    for n in range(3):
        outbox.put({"n": n})
    outbox.start()
    _wait(lambda: ("mqtt", 0) in delivered)
    outbox.stop()
    assert outbox.pending() == 3  # the webhook is down: nothing is done with
    again = Outbox(tmp_path, {"mqtt": mqtt, "webhook": webhook}, max_events=10, retry_s=(0.01, 0.05))  # a restart
    webhook_up[0] = True
    again.start()
    _wait(lambda: again.pending() == 0)
    again.stop()
    assert delivered.count(("mqtt", 0)) == 1  # recorded as done for MQTT: not sent again after the restart
    assert [d for d in delivered if d[0] == "webhook"] == [("webhook", 0), ("webhook", 1), ("webhook", 2)]


def test_outbox_is_bounded_and_counts_what_it_dropped(tmp_path):
    outbox = Outbox(tmp_path, {"mqtt": lambda event: False}, max_events=3)
    for n in range(5):
        outbox.put({"n": n})
    assert outbox.pending() == 3 and outbox.dropped == 2
    again = Outbox(tmp_path, {"mqtt": lambda event: True}, max_events=3)
    again.put({"n": 5})  # numbering continues after the restart: order is kept
    assert [p.name for p in again._files()][-1] == "000000000005.json"
    assert again.dropped == 1  # n=2 goes: the bound holds across restarts too


def _wait(predicate, timeout=10.0):
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("timed out")
