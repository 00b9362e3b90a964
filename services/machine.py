"""The CPU this process runs on, as /proc/cpuinfo names it: int8 speed and quality depend on its instruction sets,
so every figure the project prints (tests, evaluation, benchmarks, a worker's status) can say where it was made."""

from __future__ import annotations

import contextlib
import platform
from functools import cache
from pathlib import Path

# The instruction sets that decide which int8 and fp32 kernels onnxruntime picks on x86-64 (AVX2, AVX-512, VNNI in
# its AVX-512 and its AVX (AVX-VNNI) forms, AMX) and on arm64 (NEON is "asimd", the dot product "asimddp", i8mm).
INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm")


@cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields (x86-64: "model name", "flags"; arm64: "Features", "CPU part")."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                if fields:
                    break
                continue
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or info.get("Hardware") or platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list[str]:
    """Of ``INT8_FLAGS``, the ones this CPU has, in that order."""
    present = set((_cpuinfo().get("flags") or _cpuinfo().get("Features") or "").split())
    return [flag for flag in INT8_FLAGS if flag in present]


def describe_cpu() -> str:
    """One line, e.g. ``AMD EPYC (x86_64; avx2 avx512f avx512_vnni avx_vnni)``."""
    flags = " ".join(cpu_flags()) or "none of " + "/".join(INT8_FLAGS)
    return f"{cpu_model()} ({platform.machine()}; {flags})"
