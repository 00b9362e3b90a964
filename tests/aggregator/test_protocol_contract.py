"""The worker's side of the protocol against a real aggregator process: it branches on the refusal's code only.

The federation loop is plain Python, so the test drives its steps (join, push) itself: ``not_joined`` makes it
rejoin, a fatal code stops it (Fatal), any other refusal is retried (Retry). Whole workers stopping on a fatal code
are in tests/reliability/test_identity.py.
"""

import httpx
import pytest

from services.config import load_settings
from services.data.sources import load_node
from services.protocol.codec import decode_weights
from services.protocol.errors import FATAL_CODES, error_of
from services.worker.assembly import build_worker
from services.worker.loop import Fatal, Retry, WorkerLoop
from support import Stack


@pytest.fixture()
def aggregator(tmp_path):
    stack = Stack(tmp_path, workers=["valve2", "other"], rounds=2, min_workers=2, quorum=2)
    stack.aggregator.start().wait_healthy()
    yield stack
    stack.stop()


def worker_loop(stack, worker_id="valve2", token=None, **env) -> WorkerLoop:
    settings = load_settings(environ={**stack.env, **env})
    worker = settings.worker(worker_id)
    loop = build_worker(settings, worker).loop  # as the worker assembles it, not started
    loop.data = load_node(settings, worker)
    loop.client = httpx.Client(base_url=stack.agg_url, timeout=30,
                               headers={"Authorization": f"Bearer {token or worker.token}"})
    return loop


def test_an_update_refused_as_not_joined_makes_the_worker_rejoin(aggregator):
    loop = worker_loop(aggregator)
    weights = decode_weights(loop.client.get("/v1/model").content, loop.n_params)
    assert "valve2" not in aggregator.status()["workers"]
    assert loop._push(1, weights, 0.1) == (1, False)  # refused with not_joined: not taken, the worker joins
    assert aggregator.status()["workers"]["valve2"]["joined"] is True
    assert loop.plan is not None and loop.plan.local_epochs == 2, "the join answer's plan is the one kept"


def test_a_fatal_code_stops_and_any_other_refusal_is_retried(aggregator):
    with pytest.raises(Fatal, match=r"\(403 bad_token\)"):
        worker_loop(aggregator, token="not-a-worker-token")._join()
    loop = worker_loop(aggregator)
    loop._join()
    weights = decode_weights(loop.client.get("/v1/model").content, loop.n_params)
    with pytest.raises(Retry, match=r"\(409 no_open_round\)"):  # one of two workers joined: no round is open yet
        loop._call("POST", "/v1/rounds/1/updates", content=weights.tobytes(), headers={
            "Content-Type": "application/octet-stream", "X-Sample-Count": "5", "X-Train-Loss": "0.1"})
    other_model = worker_loop(aggregator, FEDAD__MODEL__HIDDEN="[5, 3, 5]")  # a config that builds another model
    with pytest.raises(Fatal, match=r"\(409 spec_mismatch\)"):
        other_model._join()


def test_an_answer_without_a_code_is_never_final():
    """A proxy's error page has no code: the worker retries instead of stopping for good."""
    problem = error_of(b"<html><body>502 Bad Gateway</body></html>")
    assert problem.code == "unknown" and "502 Bad Gateway" in problem.detail
    assert problem.code not in FATAL_CODES
    assert error_of(b'{"code": "bad_token", "detail": "unknown worker token"}').code in FATAL_CODES
