"""``GET /v1/round``: where the federation stands, so a worker knows when to train; a long-poll that returns as soon
as there is something for the caller to do."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from services.aggregator.deps import AuthenticatedWorker, FederationDep, PublisherDep
from services.aggregator.rounds import Federation
from services.protocol import errors
from services.protocol.messages import RoundState

MAX_LONG_POLL_S = 60.0
router = APIRouter(prefix="/v1", tags=["rounds"])


def something_to_do(federation: Federation, worker_id: str, after: int) -> bool:
    """A model newer than ``after`` is published, or a round is open that this training worker has not sent its
    update for (a worker that has sent waits for the model; a detect-only one only for models)."""
    if federation.rounds_done > after:
        return True
    if federation.phase != "training":
        return False
    detect_only = worker_id in federation.detect_only and worker_id not in federation.state.joined
    return not detect_only and worker_id not in federation.pending


@router.get("/round", response_model=RoundState, responses=errors.openapi_responses(
    errors.MISSING_TOKEN, errors.BAD_TOKEN, errors.INVALID_REQUEST))
async def get_round_state(
    caller: AuthenticatedWorker,
    federation: FederationDep,
    publisher: PublisherDep,
    after: Annotated[int | None, Query(ge=0, description="long-poll: the rounds_done the worker has seen")] = None,
    wait: Annotated[float, Query(ge=0, le=MAX_LONG_POLL_S, description="seconds to wait for something to do")] = 0,
) -> RoundState:
    """Answers at once without ``after``; with ``after`` and ``wait``, once a model newer than ``after`` is published
    or a round opens that the caller has not sent its update for (or a worker that has not joined may join), at the
    latest after ``wait`` seconds."""
    federation.seen(caller)
    if after is not None and wait > 0:
        await publisher.wait_for(lambda: something_to_do(federation, caller, after), wait)
        federation.seen(caller)
    return federation.round_state()
