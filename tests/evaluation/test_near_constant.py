"""`fedad evaluate` on a near-constant device (two distinct rows while it runs normally): the evaluation runs to its
table without a RuntimeWarning (a NaN from dividing by a limit of 0 once leaked from it), as a user runs it."""

import subprocess
import sys

from support import REPO, near_constant_device


def test_evaluation_of_a_near_constant_device_leaks_no_runtime_warning(tmp_path):
    config = near_constant_device(tmp_path)
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "services.cli", "--config",
                           str(config), "evaluate", "--modes", "local", "--kinds", "dense", "--out",
                           str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "RuntimeWarning" not in done.stderr and "fedad local-only int8" in done.stdout, done.stderr
