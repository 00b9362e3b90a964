"""The detect-only worker built for linux/arm64 (`make image-worker-detect-arm64`: a debootstrap'ed arm64 root and
PyPI's aarch64 wheels, assembled without running anything of arm64) serves /detect under QEMU user emulation with
the same answers as the amd64 image, for the same model and rows.

How it runs without binfmt_misc handlers (none may be registered on these machines): the arm64 image's container
is started with Debian's static ``qemu-aarch64-static`` (an x86-64 program) bind-mounted in as its entry point, and
QEMU runs the image's arm64 Python on the image's own root. The worker is started as ``python -m services.worker``
directly, because the entry point's ``exec`` of another arm64 program would not be emulated. A Cortex-A72 (the
Raspberry Pi 4's CPU) ``/proc/cpuinfo`` is mounted over the host's: QEMU 7.2 shows the arm64 program the x86-64
host's, in which onnxruntime's CPU detection (pytorch/cpuinfo) finds no ARM core and crashes on import; a real
board has its own, so this is a fact about the emulator, not about the image.

Both containers get a copy of one trained worker's state dir (its fp32 and int8 ONNX files, threshold and scaling)
and an aggregator address nothing answers, so each serves that same persisted model and nothing changes it.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from support import wait_until

from .conftest import REPO, RUN_ID, TIMINGS, base_image, free_loopback_ports, run
from .test_compose import data_dir

pytestmark = [pytest.mark.docker, pytest.mark.timeout(2400)]  # builds, and a worker started under emulation

QEMU = "/usr/bin/qemu-aarch64-static"
WORKER, PORT = "valve1", 8081
# Cortex-A72 (CPU part 0xd08), the Raspberry Pi 4's core; the features a Pi 4's kernel lists
CPUINFO = "".join(f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
                  "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n"
                  "CPU revision\t: 3\n\n" for i in range(4))


def require_qemu() -> None:
    if not Path(QEMU).exists():
        from support import missing_tool
        missing_tool("qemu-aarch64-static is not installed (apt-get install qemu-user-static)")


@pytest.fixture(scope="module")
def arm64_image(docker_engine):
    """`make image-worker-detect-arm64` with a per-run tag (its wheelhouse and arm64 base are kept between runs)."""
    require_qemu()
    tag = f"fedad-worker-detect:test-{RUN_ID}-arm64"
    t0 = time.monotonic()
    run(["make", "--no-print-directory", "-f", "mk/containers.mk", "image-worker-detect-arm64",
         f"PY={sys.executable}", f"BASE_IMAGE={base_image()}", f"IMAGE_TAG=test-{RUN_ID}"], cwd=REPO, timeout=1800)
    inspect = json.loads(run(["docker", "image", "inspect", tag]).stdout)[0]
    TIMINGS["build worker-detect arm64"] = f"{time.monotonic() - t0:.1f} s (with wheelhouse and base when missing)"
    TIMINGS["size worker-detect arm64"] = f"{inspect['Size'] / 1e6:.0f} MB"
    try:
        yield tag
    finally:
        run(["docker", "rmi", "--no-prune", tag], check=False)


def test_image_is_arm64_with_aarch64_libraries(arm64_image):
    inspect = json.loads(run(["docker", "image", "inspect", arm64_image]).stdout)[0]
    assert (inspect["Os"], inspect["Architecture"]) == ("linux", "arm64")
    assert inspect["Config"]["User"] == "10001:10001"
    script = ("import pathlib, sys; p = pathlib.Path('/opt/venv/lib/python3.11/site-packages/onnxruntime/capi');"
              "so = next(p.glob('onnxruntime_pybind11_state*.so')); b = so.read_bytes()[:20];"
              "print(so.name, int.from_bytes(b[18:20], 'little'))")
    # the image's own (arm64) Python, under QEMU, reads the ELF header of onnxruntime's extension module
    out = run(["docker", "run", "--rm", "--network", "none", "-v", f"{QEMU}:{QEMU}:ro", "--entrypoint", QEMU,
               arm64_image, "/opt/venv/bin/python", "-c", script], timeout=300).stdout.split()
    assert out[0].endswith("aarch64-linux-gnu.so") and out[1] == "183", out  # e_machine 183: EM_AARCH64


def serve(image: str, state: Path, port: int, name: str, emulated: bool, cpuinfo: Path) -> None:
    env = {"FEDAD_WORKER_ID": WORKER, f"FEDAD__WORKERS__{WORKER.upper()}__HOST": "0.0.0.0",
           f"FEDAD__WORKERS__{WORKER.upper()}__STATE_DIR": "/state", f"FEDAD__WORKERS__{WORKER.upper()}__MODE":
           "detect_only", "FEDAD__AGGREGATOR__URL": "http://127.0.0.1:9", "FEDAD__DASHBOARD__TELEMETRY_INTERVAL_S": "0"}
    args = ["docker", "run", "-d", "--name", name, "--no-healthcheck", "-p", f"127.0.0.1:{port}:{PORT}",
            "-v", f"{state}:/state", "-v", f"{data_dir()}/skab/{WORKER}:/data/skab/{WORKER}:ro", "--tmpfs", "/tmp"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    if emulated:
        args += ["-v", f"{QEMU}:{QEMU}:ro", "-v", f"{cpuinfo}:/proc/cpuinfo:ro", "--entrypoint", QEMU, image,
                 "/opt/venv/bin/python", "-m", "services.worker", "--id", WORKER]
    else:
        args += [image]
    run(args)


def test_arm64_detect_answers_equal_the_amd64_ones(detect_image, arm64_image, trained_state, tmp_path):
    from services.config import load_settings
    from services.data.sources import load_node

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO)
    cpuinfo.chmod(0o644)
    ports = dict(zip(("amd64", "arm64"), free_loopback_ports(2)))
    names = {arch: f"fedadarm{RUN_ID}-{arch}" for arch in ports}
    for arch in ports:
        state = tmp_path / f"state-{arch}"
        shutil.copytree(trained_state / WORKER, state, ignore=shutil.ignore_patterns("streams.json", "logs"))
        run(["chown", "-R", "10001:10001", str(state)])
    try:
        t0 = time.monotonic()
        for arch, image in (("amd64", detect_image), ("arm64", arm64_image)):
            serve(image, tmp_path / f"state-{arch}", ports[arch], names[arch], arch == "arm64", cpuinfo)

        def ready(arch):
            try:
                r = httpx.get(f"http://127.0.0.1:{ports[arch]}/readyz", timeout=5, trust_env=False)
                return r.status_code == 200
            except httpx.HTTPError:
                state = json.loads(run(["docker", "inspect", names[arch]]).stdout)[0]["State"]
                assert state["Running"], run(["docker", "logs", names[arch]], check=False).stderr[-3000:]
                return False

        for arch in ports:
            wait_until(lambda: ready(arch), 600, f"the {arch} worker to serve its model", interval=2)
        TIMINGS["arm64 worker under QEMU: start to ready"] = f"{time.monotonic() - t0:.0f} s"

        settings = load_settings(environ={})
        values = np.concatenate([run_.values for run_ in load_node(settings, settings.worker(WORKER)).runs[:3]])
        requests = {"batch": {"samples": values[:2000].tolist()},  # stateless: each row's window within the batch
                    "stream": {"samples": values[2000:2400].tolist(), "stream": "arm64-check"}}
        answers = {}
        for arch in ports:
            for kind, body in requests.items():
                r = httpx.post(f"http://127.0.0.1:{ports[arch]}/detect", json=body, timeout=300, trust_env=False)
                assert r.status_code == 200, f"{arch} {kind}: {r.status_code} {r.text[:500]}"
                answers[arch, kind] = r.json()
        for kind in requests:
            amd, arm = answers["amd64", kind], answers["arm64", kind]
            assert arm["threshold"] == amd["threshold"] and arm["model_round"] == amd["model_round"]
            assert arm["model"] == amd["model"] == "int8"
            a, b = np.asarray(amd["scores"], dtype=np.float64), np.asarray(arm["scores"], dtype=np.float64)
            assert len(a) == len(b) == len(requests[kind]["samples"])
            diff = np.abs(a - b) / np.maximum(np.abs(a), 1e-12)
            identical = int((a == b).sum())
            TIMINGS[f"arm64 vs amd64 /detect {kind}"] = (f"{identical}/{len(a)} scores bit-identical, max relative "
                                                         f"difference {diff.max():.2e}")
            print(f"{kind}: {TIMINGS[f'arm64 vs amd64 /detect {kind}']}")
            np.testing.assert_allclose(b, a, rtol=TOLERANCE, atol=0)
            near = np.abs(a - amd["threshold"]) <= TOLERANCE * amd["threshold"]
            assert (np.asarray(arm["is_anomaly"]) == np.asarray(amd["is_anomaly"]))[~near].all()
    finally:
        for name in names.values():
            logs = run(["docker", "logs", "--tail", "30", name], check=False)
            print(f"--- {name}\n{logs.stdout[-1500:]}{logs.stderr[-1500:]}")
            run(["docker", "rm", "-f", name], check=False)


# int8 scores: both images run the same onnxruntime release (1.32) on the same int8 graph, but its kernels differ by
# instruction set (x86-64 AVX2 vs ARM NEON): the int8 matrix products are exact integers on both, while the fp32
# parts (dequantisation, the reconstruction error's sum of squares) may be summed in another order or fused
# differently. 1e-5 relative is the tolerance this project's stream/batch equality uses for float32 reordering.
TOLERANCE = 1e-5
