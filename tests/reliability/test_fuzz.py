"""Property-based fuzzing of both HTTP APIs from their own OpenAPI specs (schemathesis + hypothesis), with a bounded
budget: no 5xx, every status documented, every documented body matching its schema.

By hand: `.venv/bin/schemathesis run http://127.0.0.1:8080/openapi.json -H "Authorization: Bearer dev-token-valve1"`
"""

from __future__ import annotations

import zlib

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from services.config import load_settings
from services.protocol.scaling import FeatureStats
from services.model.layout import spec_hash
from support import Stack

SETTINGS = load_settings()
TOKEN = {w.id: w.token for w in SETTINGS.workers}["valve2"]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
BUDGET = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzzed_aggregator(tmp_path_factory):
    """An aggregator with one joined worker and round 1 open, so updates reach the round checks."""
    stack = Stack(tmp_path_factory.mktemp("fuzz"), workers=["valve2"], rounds=50, min_workers=1, quorum=1)
    stack.aggregator.start().wait_healthy()
    rows = np.random.default_rng(0).normal(size=(100, len(SETTINGS.data.features)))
    join = {"spec_hash": spec_hash(SETTINGS.input_width, SETTINGS.model.hidden), "sample_count": 100,
            "stats": FeatureStats.from_rows(rows).model_dump()}
    r = httpx.post(f"{stack.agg_url}/v1/workers/valve2/join", json=join, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["phase"] == "training"
    yield stack
    stack.stop()
    assert "Traceback" not in stack.aggregator.log(), stack.aggregator.log()


@pytest.fixture(scope="module")
def aggregator_schema(fuzzed_aggregator):
    return schemathesis.openapi.from_url(f"{fuzzed_aggregator.agg_url}/openapi.json")


@pytest.fixture(scope="module")
def worker_schema(trained_stack):
    return schemathesis.openapi.from_url(f"{trained_stack.worker_url('valve1')}/openapi.json")


def fuzz(schema, mode: GenerationMode, call) -> list[str]:
    """Every operation of ``schema``: BUDGET examples of ``mode`` each, sent by ``call(case)``. Returns their labels."""
    labels = []
    for result in schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)

        @given(case=operation.as_strategy(generation_mode=mode))
        @BUDGET
        def run(case):
            call(case)

        try:
            run()
        except Unsatisfiable:  # negative mode: an operation without inputs has nothing to make invalid
            assert mode == GenerationMode.NEGATIVE, operation.label
            labels.pop()
    return labels


def call_aggregator(case):
    if isinstance(case.query, dict) and isinstance(case.query.get("wait"), (int, float)):
        case.query["wait"] = min(case.query["wait"], 0.2)  # a long-poll is valid, but waiting is not the point
    # Half the cases carry the worker's real token, so they get past authentication; the rest keep what was drawn.
    headers = {"Authorization": f"Bearer {TOKEN}"} if zlib.crc32(repr(case.body).encode()) % 2 else None
    case.call_and_validate(headers=headers, checks=CHECKS, timeout=10)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_aggregator_api_never_fails_and_matches_its_schema(aggregator_schema, mode):
    labels = fuzz(aggregator_schema, mode, call_aggregator)
    assert {"POST /v1/workers/{worker_id}/join", "GET /v1/model", "POST /v1/rounds/{round_no}/updates"} <= set(labels)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_worker_api_never_fails_and_matches_its_schema(worker_schema, mode):
    labels = fuzz(worker_schema, mode, lambda case: case.call_and_validate(checks=CHECKS, timeout=10))
    assert "POST /detect" in labels
