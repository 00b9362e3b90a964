"""Helpers for the fault-injection tests: per-service fault env, waiting for a fault point, checking state dirs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support import Process, Stack, wait_until


def with_fault(stack: Stack, service: Process, spec: str | None) -> Process:
    """A fresh Process like ``service`` whose process gets FEDAD_FAULT=spec (or none)."""
    env = {k: v for k, v in stack.env.items() if k != "FEDAD_FAULT"}
    if spec:
        env["FEDAD_FAULT"] = spec
    return Process(service.name, service.argv, env, stack.tmp, service.url)


def wait_for_log(service: Process, text: str, timeout: float = 120) -> None:
    def seen():
        if service.proc.poll() is not None:
            raise AssertionError(f"{service.name} exited {service.proc.returncode}:\n{service.log()}")
        return service.log_path.exists() and text in service.log_path.read_text(errors="replace")
    wait_until(seen, timeout, f"{text!r} in {service.name}'s log", interval=0.1)


def assert_clean_state(folder: Path) -> dict:
    """No temp file left behind, and state.json names complete files. Returns the state."""
    leftovers = [str(p) for p in folder.rglob("*.tmp")]
    assert not leftovers, f"half-written files in {folder}: {leftovers}"
    state = json.loads((folder / "state.json").read_text())
    for name in state["files"].values():
        assert (folder / name).stat().st_size > 0
    return state


def rounds_on_disk(folder: Path) -> int:
    return json.loads((folder / "state.json").read_text())["rounds_done"]


def can_mount() -> bool:
    probe = Path("/tmp/fedad-mount-probe")
    probe.mkdir(exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                        capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)], check=False)
    return ok


class SmallDisk:
    """A small tmpfs mounted at ``path`` (needs root with CAP_SYS_ADMIN), to make full and read-only."""

    def __init__(self, path: Path, size: str = "4m"):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)

    def read_only(self, on: bool = True) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if on else 'rw'}", str(self.path)], check=True)

    def fill(self) -> Path:
        """Write a filler file until the disk refuses: the next write of any size fails with ENOSPC."""
        filler = self.path / "filler"
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        return filler

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)
