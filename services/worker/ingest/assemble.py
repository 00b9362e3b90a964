"""Readings → whole rows per device, in time order.

KubeEdge's mappers usually send one property per message, so a row (one value of every feature) is put together
from several readings: a reading joins the oldest pending row of its device whose time is within ``tolerance_s``
of its own and which lacks its properties; otherwise it starts a new pending row. A reading that holds every
feature is a row of its own. Rows leave in time order, each as soon as it is whole and every older row has left.

A property that never arrives: a pending row still incomplete ``max_wait_s`` after its time (by the device's newest
reading) or after it was started (by the clock, for a device gone quiet) is resolved by the ``missing`` rule:
``drop`` it (counted as ``incomplete_row``), or ``carry_forward`` the device's last values for what is missing (a
device without an earlier row has nothing to carry: dropped and counted). A reading older than the device's last
row is ``late`` (refused: the window has moved on). At most ``max_devices`` devices are held, least recently used
first out; an evicted device's pending rows are dropped and counted.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

from services.worker.ingest.messages import Reading

MAX_PENDING = 64  # pending rows per device; beyond, the oldest is resolved by the missing rule


@dataclass
class Row:
    device: str
    timestamp: float
    values: np.ndarray  # float32, in data.features order


@dataclass
class _Pending:
    timestamp: float
    started: float  # clock time of its first reading
    values: dict[str, float]


@dataclass
class _Device:
    pending: list[_Pending] = field(default_factory=list)  # sorted by timestamp
    last_timestamp: float = float("-inf")  # of the last row out
    last_values: dict[str, float] | None = None
    newest: float = float("-inf")  # newest reading's timestamp


class Assembler:
    def __init__(self, features: list[str], tolerance_s: float, max_wait_s: float,
                 missing: Literal["drop", "carry_forward"], max_devices: int,
                 refuse: Callable[[str, str], None]):
        self.features = list(features)
        self.tolerance, self.max_wait, self.missing, self.max_devices = tolerance_s, max_wait_s, missing, max_devices
        self.refuse = refuse  # (reason, detail): counted and logged by the caller
        self.devices: collections.OrderedDict[str, _Device] = collections.OrderedDict()
        self.carried = 0  # rows completed with carried-forward values

    def add(self, reading: Reading, clock: float) -> list[Row]:
        device = self._device(reading.device)
        if reading.timestamp < device.last_timestamp:
            self.refuse("late", f"{reading.device}: a reading at {reading.timestamp:.3f} is older than the device's "
                                f"last row ({device.last_timestamp:.3f})")
            return self._flush(reading.device, device, clock)
        device.newest = max(device.newest, reading.timestamp)
        target = None
        if len(reading.values) < len(self.features):
            for p in device.pending:
                if abs(p.timestamp - reading.timestamp) <= self.tolerance and not (p.values.keys() & reading.values):
                    target = p
                    break
        if target is not None:
            target.values.update(reading.values)
        else:
            entry = _Pending(reading.timestamp, clock, dict(reading.values))
            i = len(device.pending)
            while i and device.pending[i - 1].timestamp > entry.timestamp:
                i -= 1
            device.pending.insert(i, entry)
        return self._flush(reading.device, device, clock)

    def expire(self, clock: float) -> list[Row]:
        """Resolve rows that waited too long on the clock (devices that went quiet)."""
        rows = []
        for name, device in list(self.devices.items()):
            if device.pending:
                rows += self._flush(name, device, clock)
        return rows

    def _device(self, name: str) -> _Device:
        device = self.devices.get(name)
        if device is None:
            device = self.devices[name] = _Device()
            while len(self.devices) > self.max_devices:
                evicted, old = self.devices.popitem(last=False)
                for p in old.pending:
                    self.refuse("incomplete_row", f"{evicted}: pending row at {p.timestamp:.3f} dropped, the device "
                                                  f"was evicted (more than {self.max_devices} devices)")
        else:
            self.devices.move_to_end(name)
        return device

    def _flush(self, name: str, device: _Device, clock: float) -> list[Row]:
        rows = []
        while device.pending:
            head = device.pending[0]
            whole = len(head.values) == len(self.features)
            overdue = (device.newest - head.timestamp > self.max_wait or clock - head.started > self.max_wait
                       or len(device.pending) > MAX_PENDING)
            if not whole and not overdue:
                break
            device.pending.pop(0)
            values = head.values
            if not whole:
                missing = [f for f in self.features if f not in values]
                if self.missing == "carry_forward" and device.last_values is not None:
                    values = {**device.last_values, **values}
                    self.carried += 1
                else:
                    self.refuse("incomplete_row", f"{name}: row at {head.timestamp:.3f} dropped, "
                                                  f"{', '.join(missing)} never arrived within {self.max_wait} s")
                    continue
            device.last_timestamp, device.last_values = head.timestamp, values
            rows.append(Row(name, head.timestamp, np.array([values[f] for f in self.features], dtype=np.float32)))
        return rows
