"""Per-stream state: a device that sends its rows one at a time gets the scores the same rows get in one batch.

A row's model input is a window over the rows before it (``data.window``) scaled by its run's reference
(``data.baseline``). A stateless /detect request only sees its own rows, so one row per request would be scored as a
window of copies of itself. A *stream* (a device id the client names) keeps what the next row needs:

- its window (services/data/stream_window.py): its last raw rows, so each new row is scored with the rows before it,
  however the series was cut into requests (one row at a time, random chunks or one batch: the same scores within
  float32 rounding), and running sums of the window statistics, so a row that arrives alone updates them instead of
  recomputing the whole window;
- its reference, set once by the stream's first request: from that request's ``baseline`` rows (``data.baseline:
  run``; the baseline's last rows also start the window, as in a stateless request with a baseline), else none,
  and the stream is scaled by the served model's default reference (the worker's own training rows).

Rows and reference are raw data, not model outputs, so a new model round keeps every stream: the next row is scored
by the new model with the same history. At most ``streams.max_streams`` streams are held (about 5 KB each with the
default config); the least recently used one is evicted beyond that, and counted. A graceful stop (SIGTERM) hands
the streams over to the next start through ``streams.json`` in the state dir, read and removed at start-up; after a
crash (kill -9, power loss) the streams start afresh, and the answers' ``stream_rows`` (0 for a new stream) tells a
client to send its baseline again.

``StreamTable.score_many`` is the one entry point (``score`` is one request of it): /detect's stream requests
(services/worker/batching.py) and device ingestion (MQTT, HTTP push) give it the requests that arrived together, of
any streams, and it scores them in one session call. It names the top sensors of the flagged rows (of every row when
asked) from the very inputs it scored, and its
``watchers`` (services/worker/watchers.py: the alarms, the live buffer, the drift tests) see every scored request
of a stream in order, under the table's lock.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson

from services import atomic
from services.data.stream_window import StreamWindow
from services.data.windows import InputPipeline, Preprocessing, Reference
from services.protocol import errors
from services.protocol.errors import ProtocolError
from services.worker.explain import Explainer
from services.worker.parsing import stream_id
from services.worker.serving import ModelSlot
from services.worker.watchers import Scored, StreamWatcher

log = logging.getLogger("fedad.worker")
HANDOVER_FILE = "streams.json"


class StreamRequest(NamedTuple):
    """Rows for ``StreamTable.score_many``: the arguments of ``StreamTable.score``."""

    stream: str
    rows: np.ndarray
    baseline: np.ndarray | None = None
    times: Sequence[float] | None = None
    explain_all: bool = False


@dataclass
class Stream:
    window: StreamWindow  # the stream's last raw rows and their running window statistics
    rows: int  # rows scored in this stream
    reference: Reference | None  # None: the served model's default reference
    pipeline: InputPipeline | None  # built once from ``reference``
    last_seen: float


class StreamTable:
    """The worker's streams, least recently used first. Thread-safe: /detect (event loop) and ingestion threads
    may score at once; one lock, held for the scoring of one request."""

    def __init__(self, slot: ModelSlot, prep: Preprocessing, features: list[str], max_streams: int,
                 state_dir: Path | None = None, watchers: Sequence[StreamWatcher | None] = (),
                 explainer: Explainer | None = None):
        self.slot, self.prep, self.features, self.max_streams = slot, prep, list(features), max_streams
        self.watchers = tuple(w for w in watchers if w is not None)
        self.explainer = explainer  # None: no top sensors (every row's entry is None)
        self.keep = prep.window - 1  # rows a window reaches back
        self.handover = Path(state_dir) / HANDOVER_FILE if state_dir is not None else None
        self._streams: collections.OrderedDict[str, Stream] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.created = 0
        self.evicted = 0
        self.model_runs = 0  # session calls, and the requests they scored: more requests than runs is batching
        self.requests = 0

    def __len__(self) -> int:
        return len(self._streams)

    # -- scoring ---------------------------------------------------------------------------------------------------
    def score(self, stream: str, rows: np.ndarray, baseline: np.ndarray | None = None,
              times: Sequence[float] | None = None, explain_all: bool = False) -> Scored:
        """Score ``rows`` (consecutive raw rows in feature order, float32, oldest first) as the next rows of
        ``stream``. ``baseline`` (normal rows from the start of the run) is taken from a stream's first request only;
        with one on a later request this raises ProtocolError ``baseline_already_set`` (forget the stream first).
        ``times``: each row's time (default: now). Top sensors are named for the flagged rows, for all with
        ``explain_all``. Raises ``no_model`` before a first model and ``bad_stream_id`` for an unusable id."""
        result = self.score_many([StreamRequest(stream, rows, baseline, times, explain_all)])[0]
        if isinstance(result, ProtocolError):
            raise result
        return result

    def score_many(self, requests: Sequence[StreamRequest]) -> list[Scored | ProtocolError]:
        """Score several requests (of any streams, a stream's own in order) in one session call: what arrives
        together from many devices costs one model run, not one each. Each request gets what ``score`` would have
        given it alone, or the ProtocolError ``score`` would have raised; the watchers see them in order."""
        results: list[Scored | ProtocolError | None] = [None] * len(requests)
        checked: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        for i, request in enumerate(requests):
            try:
                checked.append((i, *self._valid(request)))
            except ProtocolError as exc:
                results[i] = exc
        with self._lock:
            model = self.slot.current
            if model is None:
                for i, _, _ in checked:
                    results[i] = ProtocolError(errors.NO_MODEL, "no model to serve yet: retry after the first "
                                                                "federated round (GET /readyz says when)")
                return results  # type: ignore[return-value]
            now = time.time()
            taken: list[tuple[int, np.ndarray, np.ndarray, int]] = []  # request, rows, inputs, stream rows before
            for i, rows, baseline in checked:  # each stream's window moves in request order
                stream = requests[i].stream
                state = self._streams.get(stream)
                if state is None:
                    state = self._new(baseline)
                elif baseline is not None:
                    results[i] = ProtocolError(
                        errors.BASELINE_ALREADY_SET, f"stream {stream!r} already has its reference (set by its first "
                                                     f"request): send rows without a baseline, or DELETE "
                                                     f"/v1/streams/{stream} to start it afresh")
                    continue
                taken.append((i, rows, state.window.inputs(state.pipeline or model.detector.pipeline_, rows),
                              state.rows))
                state.rows += len(rows)
                state.last_seen = now
                self._put(stream, state)
            if not taken:
                return results  # type: ignore[return-value]
            self.model_runs += 1
            self.requests += len(taken)
            scores = model.detector.score_inputs(np.concatenate([inputs for _, _, inputs, _ in taken])
                                                 if len(taken) > 1 else taken[0][2])
            flags = model.detector.is_anomaly(scores)
            start = 0
            for i, rows, inputs, before in taken:
                request, end = requests[i], start + len(rows)
                which = np.ones(len(rows), dtype=bool) if request.explain_all else flags[start:end]
                top = self.explainer.explain(model.detector, inputs, which) if self.explainer else [None] * len(rows)
                scored = Scored(request.stream, rows, [now] * len(rows) if request.times is None else request.times,
                                scores[start:end], flags[start:end], model, before, top)
                results[i], start = scored, end
                for watcher in self.watchers:
                    try:
                        watcher.observe(scored)
                    except Exception:  # the answer matters more than what the alarms, buffer or drift make of it
                        log.exception("%s failed on stream %s", type(watcher).__name__, request.stream)
        return results  # type: ignore[return-value]

    def _valid(self, request: StreamRequest) -> tuple[np.ndarray, np.ndarray | None]:
        """The request's rows and baseline, checked; ProtocolError for what cannot be scored."""
        stream_id(request.stream)
        rows = self._checked(request.rows, "rows")
        if request.baseline is None:
            return rows, None
        baseline = self._checked(request.baseline, "baseline")
        least = max(2, self.prep.window)
        if len(baseline) < least:
            raise ProtocolError(errors.BAD_BASELINE, f"a baseline needs at least {least} rows, got {len(baseline)}")
        return rows, baseline

    def _checked(self, rows, what: str) -> np.ndarray:
        """Rows from any caller (not only /detect's parser) as (n ≥ 1, features) finite float32."""
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused below
            rows = np.asarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != len(self.features):
            raise ProtocolError(errors.WRONG_WIDTH, f"{what} of shape {rows.shape}: expected (n, {len(self.features)})")
        if not len(rows):
            raise ProtocolError(errors.EMPTY_BATCH, f"no {what} to score" if what == "rows" else f"empty {what}")
        if not np.isfinite(rows).all():
            raise ProtocolError(errors.NON_FINITE, f"{what}: NaN, infinity or a value beyond float32")
        return rows

    def _new(self, baseline: np.ndarray | None) -> Stream:
        if baseline is None or self.prep.baseline != "run":  # as stateless /detect: federation scaling ignores it
            return Stream(self._window(None), 0, None, None, time.time())
        baseline = np.asarray(baseline, dtype=np.float32)
        reference = self.prep.reference(baseline, None)
        return Stream(self._window(baseline[max(0, len(baseline) - self.keep):]), 0, reference,
                      InputPipeline(self.prep, reference), time.time())

    def _window(self, history: np.ndarray | None) -> StreamWindow:
        return StreamWindow(self.prep.window, len(self.features), history)

    def _put(self, stream: str, state: Stream) -> None:
        if stream in self._streams:
            self._streams.move_to_end(stream)
            return
        self._streams[stream] = state
        self.created += 1
        while len(self._streams) > self.max_streams:
            evicted, _ = self._streams.popitem(last=False)
            self.evicted += 1
            log.debug("stream %s evicted (least recently used of %d)", evicted, self.max_streams)

    # -- inspection ------------------------------------------------------------------------------------------------
    def describe(self, stream: str) -> dict:
        with self._lock:
            state = self._streams.get(stream)
            if state is None:
                raise ProtocolError(errors.UNKNOWN_STREAM, f"no stream {stream!r} on this worker (never seen, evicted "
                                                       "as least recently used, or lost in a crash)")
            return self._document(stream, state)

    def forget(self, stream: str) -> dict:
        with self._lock:
            state = self._streams.pop(stream, None)
            if state is None:
                raise ProtocolError(errors.UNKNOWN_STREAM, f"no stream {stream!r} on this worker")
            return self._document(stream, state)

    def summary(self, limit: int = 100) -> dict:
        """Counts, and the ``limit`` most recently used streams."""
        with self._lock:
            recent = list(self._streams.items())[-limit:][::-1]
            return {"streams": len(self._streams), "max_streams": self.max_streams, "created": self.created,
                    "evicted": self.evicted, "model_runs": self.model_runs, "requests": self.requests,
                    "recent": [self._document(k, v) for k, v in recent]}

    def _document(self, stream: str, state: Stream) -> dict:
        return {"stream": stream, "rows": state.rows, "history_rows": len(state.window.history),
                "baseline": state.reference is not None, "last_seen": state.last_seen}

    # -- handover across a graceful restart ------------------------------------------------------------------------
    def save(self) -> None:
        """Write every stream to the handover file (temp → fsync → rename), least recently used first."""
        if self.handover is None:
            return
        with self._lock:
            streams = [{"stream": k, "rows": v.rows, "history": v.window.history, "last_seen": v.last_seen,
                        "reference": v.reference.model_dump() if v.reference else None}
                       for k, v in self._streams.items()]
        atomic.write_bytes(self.handover, orjson.dumps(
            {"window": self.prep.window, "features": self.features, "streams": streams},
            option=orjson.OPT_SERIALIZE_NUMPY))
        log.info("%d stream(s) saved for the next start", len(streams))

    def load(self) -> int:
        """Take over the streams a graceful stop left, then remove the file, so a later crash never brings back
        stale streams. A file written with another window or feature list is dropped (its rows no longer fit)."""
        if self.handover is None or not self.handover.exists():
            return 0
        try:
            saved = orjson.loads(self.handover.read_bytes())
            if saved["window"] != self.prep.window or saved["features"] != self.features:
                log.warning("streams saved with another window or feature list: started afresh")
                return 0
            for item in saved["streams"]:
                reference = Reference(**item["reference"]) if item["reference"] else None
                history = np.asarray(item["history"], dtype=np.float32).reshape(-1, len(self.features))
                self._put(item["stream"], Stream(self._window(history), int(item["rows"]), reference,
                                                 InputPipeline(self.prep, reference) if reference else None,
                                                 float(item["last_seen"])))
            self.created = 0
            log.info("%d stream(s) taken over from the last stop", len(self._streams))
            return len(self._streams)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read %s (%s): streams started afresh", self.handover, exc)
            self._streams.clear()
            return 0
        finally:
            self.handover.unlink(missing_ok=True)
