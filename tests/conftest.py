import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before anything imports onnxruntime

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]  # support, benchmarks

from support import RecordingProxy, Stack  # noqa: E402

from services.machine import describe_cpu  # noqa: E402


def pytest_report_header(config):
    """int8 scores and their quality figures depend on the CPU's instruction sets: every run says which it had."""
    return f"cpu: {describe_cpu()}"


@pytest.fixture(scope="session")
def trained_stack(tmp_path_factory):
    """Aggregator + the three SKAB workers, 2 rounds, workers talking to the aggregator through a recording proxy."""
    stack = Stack(tmp_path_factory.mktemp("stack"), rounds=2, epochs=2,  # int8 forced: tests hold /detect's int8
                  overrides={"FEDAD__SERVING__MODEL": "int8"})           # scores to torch's fp32 ones
    proxy = RecordingProxy(stack.agg_url).start()
    stack.env["FEDAD__AGGREGATOR__URL"] = proxy.url
    stack.proxy = proxy
    stack.start()
    try:
        stack.final_status = stack.wait_done()
        yield stack
    finally:
        stack.stop()
        proxy.stop()
