"""A federation on a device type this project never saw (generated narrow cabinets, 3 model inputs): each worker
measures int8 against fp32 on its own held-out rows at every install and says what it serves and why, on /v1/status,
/v1/models and both dashboards; the status names the model kind and shape."""

from __future__ import annotations

import httpx
import pytest

from services.evaluation.unseen import write_dataset
from services.model.precision import AUC_TOLERANCE
from support import Stack, wait_until

NODES = ["cabinet-0", "cabinet-1", "cabinet-2"]


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cabinets")
    config = write_dataset("compressor", 1, tmp / "data", {"dashboard.telemetry_interval_s": 1})
    stack = Stack(tmp, workers=NODES, rounds=2, epochs=3, overrides={"FEDAD_CONFIG": str(config)})
    stack.start()
    try:
        stack.wait_done(timeout=300)
        yield stack
    finally:
        stack.stop()


def test_each_worker_serves_the_precision_its_own_rows_chose_and_says_why(federation):
    for node in NODES:
        status = federation.worker_status(node)
        precision = status["precision"]
        assert status["model"] == precision["served"] and precision["setting"] == "auto", status
        assert status["model_kind"] == "dense" and status["shape"] == "dense 3→8→2→8→3 (from the input width)", status
        auc8, auc32 = precision["roc_auc_int8"], precision["roc_auc_fp32"]
        assert precision["rows"] == status["evaluation"]["rows"] and 0.5 < auc32 <= 1, precision
        assert (precision["served"] == "int8") == (auc8 >= auc32 - AUC_TOLERANCE), precision
        assert f"int8 ROC-AUC {auc8:.4f} vs fp32 {auc32:.4f}" in precision["reason"], precision
        models = httpx.get(f"{federation.worker_url(node)}/v1/models", timeout=5).json()
        assert models["precision"] == precision
        for version in models["versions"]:
            assert version["model"] == version["precision"]["served"], version


def test_the_dashboards_show_the_served_precision_and_the_reason(federation):
    page = httpx.get(f"{federation.worker_url(NODES[0])}/v1/dashboard", timeout=5).json()
    assert page["precision"]["reason"] and page["shape"].startswith("dense 3→8→2→8→3")

    def reported():
        """The aggregator's rows once every worker's telemetry carries the precision its status shows now (the
        telemetry lags an install by up to one interval)."""
        board = httpx.get(f"{federation.agg_url}/v1/dashboard", timeout=5).json()
        rows = {w["id"]: w for w in board["workers"]}
        for node in NODES:
            status = federation.worker_status(node)
            if (rows[node].get("precision"), rows[node].get("precision_reason")) != (
                    status["model"], status["precision"]["reason"]):
                return None
        return rows

    rows = wait_until(reported, 30, "every worker's telemetry with the precision its status shows")
    for node in NODES:
        assert rows[node]["precision"] in ("int8", "fp32") and rows[node]["precision_reason"]
