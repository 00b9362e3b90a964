"""The verdict in the device twin: per device, the worker reports ``anomaly_score``, ``alarm`` (open | clear) and
``top_sensor`` as reported twin properties on KubeEdge's ``$hw/events/device/<device>/twin/update``, so that
``kubectl get device <device> -o yaml`` shows them: EdgeCore's DeviceTwin syncs a Device's reported twins to its
``status.twins[].reported`` (deploy/devices declares the three properties in the DeviceModel and the Devices).

The message is KubeEdge's twin-update document::

    {"event_id": "<id>", "timestamp": <ms>,
     "twin": {"alarm": {"actual": {"value": "open", "metadata": {"timestamp": <ms>}}, "metadata": {"type": "string"}},
              ...}}

``metadata.type`` is the value's type (EdgeCore's dtcommon.ValidateValue accepts string, int, float, boolean ...),
and every value keeps to the characters EdgeCore's ValidateTwinValue allows (``[a-zA-Z0-9-_.,:/@#]``, 1-512), so a
sensor's name is written with ``_`` for each other character (``Volume_Flow_RateRMS``) and ``none`` stands for no
sensor.

Rate: at each alarm change (an ``opened`` / ``cleared`` event of the AlarmBook: state, peak score, top sensor) and,
between changes, a device's latest score at most every ``twin.every_s``. Delivery: the messages go into the alarm
outbox (services/worker/alarms.Outbox: one file per message, QoS 1, kept until the broker acknowledged), so a broker
outage loses no alarm change; a periodic score is only queued while the broker is connected (a stale score sent
later would say nothing). The worker subscribes to twin updates for device readings too and hears its own reports
back: services/worker/ingest/messages.py skips these properties, so they are neither scored nor refused.
"""

from __future__ import annotations

import collections
import re
import time
import uuid
from typing import Callable

VERDICT_PROPERTIES = ("anomaly_score", "alarm", "top_sensor")  # declared by deploy/devices/pump-model.yaml
TYPES = {"anomaly_score": "float", "alarm": "string", "top_sensor": "string"}
TOPIC = "$hw/events/device/{device}/twin/update"
EVENT = "twin"  # the outbox record's kind, beside the alarm events' opened / cleared
NOT_IN_TWIN_VALUE = re.compile(r"[^a-zA-Z0-9\-_.,:/@#]")


def twin_value(text: str | None) -> str:
    """A value EdgeCore accepts: its allowed characters only, 1-512 of them (``none`` for nothing)."""
    return NOT_IN_TWIN_VALUE.sub("_", text)[:512] if text else "none"


def message(values: dict[str, str], when_s: float) -> dict:
    """KubeEdge's twin-update document reporting ``values`` (property -> value) as actual values at ``when_s``."""
    ms = int(round(when_s * 1000))
    return {"event_id": uuid.uuid4().hex, "timestamp": ms,
            "twin": {name: {"actual": {"value": value, "metadata": {"timestamp": ms}},
                            "metadata": {"type": TYPES[name]}} for name, value in values.items()}}


def is_twin(record: dict) -> bool:
    return record.get("event") == EVENT


def topic_and_payload(record: dict) -> tuple[str, dict]:
    return TOPIC.format(device=record["device"]), record["message"]


class TwinReporter:
    """Decides when a device's verdict goes to its twin; ``put`` hands the record to the outbox. Called by the
    ingestion thread only (``on_alarm`` from the AlarmBook's emit, ``on_scores`` after each scored batch)."""

    def __init__(self, every_s: float, put: Callable[[dict], None], connected: Callable[[], bool],
                 max_devices: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.every_s, self.put, self.connected, self.clock = every_s, put, connected, clock
        self.max_devices = max_devices
        self._devices: collections.OrderedDict[str, dict] = collections.OrderedDict()  # device -> last report
        self.reports = 0

    def on_alarm(self, event: dict) -> None:
        """An alarm opened or cleared: its state, peak score and top sensor, at once and through any outage."""
        top = event.get("top_sensors") or []
        opened = event["event"] == "opened"
        self._report(event["stream"], {"anomaly_score": _number(event["peak_score"]),
                                       "alarm": "open" if opened else "clear",
                                       "top_sensor": twin_value(top[0]["sensor"] if opened and top else None)},
                     event["time"], alarm=opened)

    def on_scores(self, device: str, score: float, when: float) -> None:
        """A device's rows were scored: its latest score, if the last report is ``every_s`` old (and the broker
        is there to take it now)."""
        last = self._devices.get(device)
        if last is None:
            self._report(device, {"anomaly_score": _number(score), "alarm": "clear", "top_sensor": "none"}, when,
                         alarm=False)
        elif self.clock() - last["at"] >= self.every_s and self.connected():
            self._report(device, {"anomaly_score": _number(score)}, when, alarm=last["alarm"])

    def _report(self, device: str, values: dict[str, str], when: float, alarm: bool) -> None:
        self._devices[device] = {"at": self.clock(), "alarm": alarm}
        self._devices.move_to_end(device)
        if len(self._devices) > self.max_devices:
            # forget the least recent device without an open alarm: one that comes back reports "clear" anew
            quiet = next((d for d, last in self._devices.items() if not last["alarm"]), None)
            self._devices.pop(quiet if quiet is not None else next(iter(self._devices)))
        self.put({"event": EVENT, "device": device, "message": message(values, when)})
        self.reports += 1


def after(emit: Callable[[dict], None], reporter: TwinReporter | None) -> Callable[[dict], None]:
    """The AlarmBook's emit: the alarm event first, then (twin.enabled) its twin report, in that order on disk."""
    if reporter is None:
        return emit

    def both(event: dict) -> None:
        emit(event)
        reporter.on_alarm(event)
    return both


def _number(value: float) -> str:
    return f"{float(value):.6g}"
