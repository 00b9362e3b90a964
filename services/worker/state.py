"""A worker's persisted state: the models it keeps (each complete), which one it serves, which one an admin pinned.

Every blob (weights, fp32 ONNX, int8 ONNX, and the served graph with the preprocessing in front, which the calibrating
child made) is written once under a name with its version (``global-12.f32``, ``model-12.onnx``,
``model-12.int8.onnx``, ``model-12.rows.onnx``), and one ``state.json`` names the versions, their files, the served and
the pinned version. A save writes the new blobs (temp → fsync → rename), then ``state.json`` the same way, then
removes the blobs no version names: kill -9 at any instant leaves the previous or the new complete state. A file
the persisted state names is never overwritten with other bytes (a version id installed again with other content,
in a new federation, gets its content hash in the name), and a version that shares its parent's files (a
recalibration: same weights, another threshold) costs no disk. A state folder written before versions existed (one
model, ``files`` keyed by blob name) loads as a single served version and is rewritten in this layout on the next save.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services import atomic
from services.protocol.codec import decode_weights, encode_weights

log = logging.getLogger("fedad.worker")
BLOBS = ("global.f32", "model.onnx", "model.int8.onnx")
ROWS_BLOB = "model.rows.onnx"  # optional: versions saved before it was kept score batches through numpy
BLOB_FILE = re.compile(r"^(global|model)-[0-9a-f.-]+(\.int8|\.rows)?\.(f32|onnx)$")  # this store's blobs, any layout
FORMAT = 2


@dataclass
class ModelVersion:
    """One installed model, complete: what serving it needs, its held-out figures and the gate's decision.

    ``id`` is the global round (``"12"``) or, for a recalibration of that round's weights on recent live rows, the
    round and a counter (``"12.1"``, ``"12.2"``); versions order by (round, counter)."""

    id: str
    round: int
    threshold: float
    served: str  # "int8" or "fp32": the ONNX file /detect runs
    weights: np.ndarray
    onnx_fp32: bytes
    onnx_int8: bytes
    reference: dict | None = None  # default scaling of /detect rows (services/data/windows.Reference)
    evaluation: dict | None = None  # held-out figures at its own threshold
    status: str = "kept"  # served | kept | refused (services/protocol/messages.ModelVersionReport)
    reason: str = ""  # why it has its status: the gate's verdict, a pin, an admin's request
    gate: dict | None = None  # the gate's decision: passed, checks with both values and bounds
    precision: dict | None = None  # why ``served`` (services/model/precision.PrecisionChoice)
    local_loss: float | None = None
    installed_at: float = 0.0
    files: dict[str, str] = field(default_factory=dict)  # blob name → file in the state folder (set by the store)
    rows_graph: tuple[int, bytes] | None = None  # the served model with the preprocessing in front, as the
    # calibrating process made it, for raw rows of that width (kept as ``model.rows.onnx`` and ``rows_width``)

    @property
    def order(self) -> tuple[int, int]:
        return version_order(self.id)

    def meta(self) -> dict:
        meta = {k: v for k, v in self.__dict__.items() if k not in ("weights", "onnx_fp32", "onnx_int8", "rows_graph")}
        return meta | ({"rows_width": self.rows_graph[0]} if self.rows_graph is not None else {})


def version_order(version_id: str) -> tuple[int, int]:
    """``"12"`` → (12, 0), ``"12.1"`` → (12, 1); ValueError for anything else."""
    match = re.fullmatch(r"(\d{1,9})(?:\.(\d{1,6}))?", str(version_id))
    if match is None:
        raise ValueError(f"not a model version: {version_id!r} (a round such as 12, or 12.1 for a recalibration)")
    return int(match[1]), int(match[2] or 0)


@dataclass
class WorkerState:
    run_id: str
    scaler: dict
    spec_hash: str
    versions: list[ModelVersion] = field(default_factory=list)  # oldest first
    served_id: str | None = None
    pinned_id: str | None = None
    history: list[dict] = field(default_factory=list)  # per installed version: local loss, threshold, figures

    def version(self, version_id: str) -> ModelVersion | None:
        return next((v for v in self.versions if v.id == version_id), None)

    @property
    def served_version(self) -> ModelVersion | None:
        return self.version(self.served_id) if self.served_id is not None else None

    @property
    def latest(self) -> ModelVersion | None:
        """The newest global model installed, served or not: the federation trains on from its weights."""
        return max(self.versions, key=lambda v: v.order, default=None)

    # The served version's fields, as the single-model state had them (status, metrics, benchmarks read these).
    @property
    def model_round(self) -> int | None:
        return self.served_version.round if self.served_version else None

    @property
    def threshold(self) -> float | None:
        return self.served_version.threshold if self.served_version else None

    @property
    def served(self) -> str | None:
        return self.served_version.served if self.served_version else None

    @property
    def weights(self) -> np.ndarray | None:
        return self.served_version.weights if self.served_version else None

    @property
    def onnx_fp32(self) -> bytes | None:
        return self.served_version.onnx_fp32 if self.served_version else None

    @property
    def onnx_int8(self) -> bytes | None:
        return self.served_version.onnx_int8 if self.served_version else None

    @property
    def reference(self) -> dict | None:
        return self.served_version.reference if self.served_version else None

    @property
    def evaluation(self) -> dict | None:
        return self.served_version.evaluation if self.served_version else None


class WorkerStore:
    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic.remove_stale_temps(self.dir)
        self._persisted: dict[str, str] = {}  # file → SHA-256 of its bytes, for the files state.json names

    def load(self, n_params: int) -> WorkerState | None:
        meta = atomic.read_json(self.dir / "state.json")
        if meta is None:
            return None
        if "versions" not in meta:
            meta = _single_model_state(meta)
        self._remove_unreferenced(meta["files"].values())
        versions = []
        for record in meta["versions"]:
            try:
                blobs = {name: (self.dir / record["files"][name]).read_bytes() for name in BLOBS}
            except (KeyError, FileNotFoundError) as exc:  # cannot happen with this store's writes: say so, go on
                log.error("model version %s lacks a file (%s): dropped", record.get("id"), exc)
                continue
            for name, data in blobs.items():  # named by state.json: never overwritten with other bytes
                self._persisted[record["files"][name]] = hashlib.sha256(data).hexdigest()
            try:
                weights = decode_weights(blobs["global.f32"], n_params)
            except ValueError as exc:  # another architecture: the caller starts afresh
                log.warning("model version %s does not fit this model (%s): dropped", record.get("id"), exc)
                continue
            fields = {k: v for k, v in record.items() if k in ModelVersion.__dataclass_fields__}
            versions.append(ModelVersion(**fields, weights=weights, onnx_fp32=blobs["model.onnx"],
                                         onnx_int8=blobs["model.int8.onnx"], rows_graph=self._rows_graph(record)))
        state = WorkerState(run_id=meta["run_id"], scaler=meta["scaler"], spec_hash=meta["spec_hash"],
                            versions=versions, history=meta.get("history", []))
        ids = {v.id for v in versions}
        state.served_id = meta.get("served_id") if meta.get("served_id") in ids else None
        state.pinned_id = meta.get("pinned_id") if meta.get("pinned_id") in ids else None
        return state

    def _rows_graph(self, record: dict) -> tuple[int, bytes] | None:
        file, width = record["files"].get(ROWS_BLOB), record.get("rows_width")
        if file is None or width is None:
            return None
        try:
            data = (self.dir / file).read_bytes()
        except FileNotFoundError:  # only an optimisation: batches score through numpy without it
            log.warning("model version %s: %s is missing, batches are scored without it", record.get("id"), file)
            return None
        self._persisted[file] = hashlib.sha256(data).hexdigest()
        return int(width), data

    def save(self, state: WorkerState) -> None:
        """New blobs first, then ``state.json``, then the blobs no version names any more."""
        written: dict[str, str] = {}
        for version in state.versions:
            blobs = {"global.f32": encode_weights(version.weights), "model.onnx": version.onnx_fp32,
                     "model.int8.onnx": version.onnx_int8}
            if version.rows_graph is not None:
                blobs[ROWS_BLOB] = version.rows_graph[1]
            for name, data in blobs.items():
                digest = hashlib.sha256(data).hexdigest()
                file = _file_for(name, version, digest, {**self._persisted, **written})
                if self._persisted.get(file) != digest and file not in written:
                    atomic.write_bytes(self.dir / file, data)
                written[file] = digest
                version.files[name] = file
        files = {f"{v.id}/{name}": file for v in state.versions for name, file in v.files.items()}
        served = state.served_version
        meta = {"format": FORMAT, "run_id": state.run_id, "scaler": state.scaler, "spec_hash": state.spec_hash,
                "served_id": state.served_id, "pinned_id": state.pinned_id, "history": state.history,
                "model_round": served.round if served else None,  # the round /detect answers with after a restart
                "versions": [v.meta() for v in state.versions], "files": files}
        atomic.write_json(self.dir / "state.json", meta)
        self._persisted = written
        self._remove_unreferenced(files.values())

    def _remove_unreferenced(self, named) -> None:
        """Blobs of retired versions, and those a crash left before their ``state.json`` was written."""
        named = set(named)
        for path in self.dir.iterdir():
            if BLOB_FILE.match(path.name) and path.name not in named:
                path.unlink(missing_ok=True)


def _file_for(name: str, version: ModelVersion, digest: str, taken: dict[str, str]) -> str:
    """The file it had (a recalibration: its parent's), else ``<stem>-<version>.<ext>``; with the content hash added
    when that name holds other bytes (``taken``: file → digest, persisted or written in this save)."""
    stem, _, ext = name.partition(".")
    for file in (version.files.get(name), f"{stem}-{version.id}.{ext}"):
        if file and taken.get(file, digest) == digest:
            return file
    return f"{stem}-{version.id}-{digest[:16]}.{ext}"


def _single_model_state(meta: dict) -> dict:
    """The layout before versions: one served model, its fields at the top, ``files`` keyed by blob name."""
    files = meta.get("files", {})
    version_id = str(meta["model_round"])
    record = {"id": version_id, "round": meta["model_round"], "threshold": meta["threshold"],
              "served": meta.get("served", "int8"), "reference": meta.get("reference"),
              "evaluation": meta.get("evaluation"), "status": "served", "reason": "installed before versions were "
              "kept", "files": files}
    return {**meta, "versions": [record], "served_id": version_id, "pinned_id": None,
            "files": {f"{version_id}/{name}": file for name, file in files.items()}}
