"""Crash-safe file writes: a reader (or a restart after kill -9) sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from services import faults

TEMP_SUFFIX = ".tmp"


def write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file beside ``path``, fsync it, rename it over ``path``, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:  # a full or read-only disk: leave no half-written temp file behind
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_json(path: Path, obj) -> None:
    write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default


def remove_stale_temps(folder: Path) -> None:
    """Temp files left by a process killed mid-write are garbage: the renamed file is the truth."""
    for temp in Path(folder).glob(f"**/.*{TEMP_SUFFIX}"):
        temp.unlink(missing_ok=True)


def commit_snapshot(folder: Path, version: int, blobs: dict[str, bytes], state: dict) -> dict:
    """Persist several files as one atomic step: each blob goes to a versioned name (``model.onnx`` →
    ``model-3.onnx``), then ``state.json`` names them, then older versions go. A crash anywhere leaves
    ``state.json`` naming complete files. Returns the state as written (with its ``files`` map)."""
    folder = Path(folder)
    files = {}
    for name, data in blobs.items():
        stem, dot, ext = name.partition(".")
        files[name] = f"{stem}-{version}{dot}{ext}"
        write_bytes(folder / files[name], data)
    state = {**state, "files": files}
    faults.point("atomic.commit")
    write_json(folder / "state.json", state)
    remove_unreferenced(folder, files)
    return state


def remove_unreferenced(folder: Path, files: dict[str, str]) -> None:
    """Remove the versions of each blob that ``state.json`` does not name: older ones after a commit, and on load
    the leftovers of a commit that a crash cut short before its ``state.json`` was written."""
    for name, current in files.items():
        stem, dot, ext = name.partition(".")
        for old in Path(folder).glob(f"{stem}-*{dot}{ext}"):
            if old.name != current and old.name[len(stem) + 1:-len(dot + ext) or None].isdigit():
                old.unlink(missing_ok=True)
