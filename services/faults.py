"""Fault injection for the reliability tests: named points in the code where a test can make a real process pause
(so the test SIGKILLs it at exactly that instant), kill itself, or sleep. Inert unless ``FEDAD_FAULT`` is set.

  FEDAD_FAULT="aggregator.aggregate:pause"            pause the first time a round is being aggregated
  FEDAD_FAULT="worker.train:sleep=12@2"               sleep 12 s the second time the worker trains
  FEDAD_FAULT="worker.train:until=/tmp/go"            block the first training until the file /tmp/go exists
  FEDAD_FAULT="atomic.commit:kill,worker.upload:pause" several points, comma-separated

Actions: ``pause`` (print ``FAULT <point> reached`` to stderr and block until killed), ``kill`` (SIGKILL itself),
``sleep=<seconds>``, ``until=<file>`` (block until the test creates the file: a stall that lasts exactly until
what the test waits for has happened, however slow the machine). ``@N`` fires on the N-th time the point is reached
(default the first); each fires once.
Points: aggregator.aggregate (a round's new global model computed, not yet persisted), atomic.commit (a snapshot's
versioned files written, state.json not yet), worker.train (local training starts), worker.upload (half of an
update body sent).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

_SPEC = os.environ.get("FEDAD_FAULT", "")
_faults: dict[str, tuple[str, int]] = {}
for _item in filter(None, (x.strip() for x in _SPEC.split(","))):
    _point, _, _rest = _item.partition(":")
    _action, _, _nth = _rest.partition("@")
    _faults[_point] = (_action or "pause", int(_nth or 1))
_seen: dict[str, int] = {}
_lock = threading.Lock()


def active(point: str) -> bool:
    return point in _faults


def point(name: str) -> None:
    if not _faults or name not in _faults:
        return
    with _lock:
        _seen[name] = _seen.get(name, 0) + 1
        action, nth = _faults[name]
        if _seen[name] != nth:
            return
    print(f"FAULT {name} reached (pid {os.getpid()}): {action}", file=sys.stderr, flush=True)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("sleep="):
        time.sleep(float(action.removeprefix("sleep=")))
    elif action.startswith("until="):
        release = action.removeprefix("until=")
        while not os.path.exists(release):
            time.sleep(0.2)
    else:
        while True:
            time.sleep(3600)


def split_body(name: str, body: bytes):
    """The body as is, or (with a fault at ``name``) a generator that sends half of it, then reaches the point."""
    if name not in _faults:
        return body

    def chunks():
        half = len(body) // 2
        yield body[:half]
        point(name)
        yield body[half:]
    return chunks()
