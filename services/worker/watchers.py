"""Stream watchers: what sees every scored request of every stream, in the order the stream table scored them.

Three parts of a worker watch its streams: the alarms (services/worker/alarms.py: debounced state per stream,
events), the live buffer (services/worker/buffer.py: normal rows kept for the next rounds) and the drift tests
(services/worker/drift.py; fed by the buffer's kept rows when there is a buffer). ``StreamTable.score``
(services/worker/streams.py) is the one place a stream's rows are scored — stream /detect requests, MQTT and HTTP
push device data alike — and the one place that tells the watchers, under its lock, one ``Scored`` each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np

from services.worker.serving import ServedModel


class Scored(NamedTuple):
    """New rows of one stream as the served model scored them."""

    stream: str
    rows: np.ndarray  # (n, features) float32 raw rows in feature order, oldest first
    times: Sequence[float]  # each row's time (seconds since the epoch): the device's timestamp, or the request's
    scores: np.ndarray  # float32, one per row
    flags: np.ndarray  # bool, score above the model's threshold
    model: ServedModel  # the model that scored them (round, threshold, kind)
    stream_rows: int  # rows of this stream scored before these: the first row's number (0: a new stream)
    top_sensors: list  # per row: its top sensors ({"sensor", "share"}) if flagged or asked for, else None


class StreamWatcher(Protocol):
    def observe(self, scored: Scored) -> object: ...
