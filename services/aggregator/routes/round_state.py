"""``GET /v1/round``: where the federation stands, so a worker knows when to train; a long-poll that returns as soon
as there is something for the caller to do."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from services.aggregator.deps import AuthenticatedWorker, FederationDep, PublisherDep
from services.protocol import errors
from services.protocol.messages import RoundState

MAX_LONG_POLL_S = 60.0
router = APIRouter(prefix="/v1", tags=["rounds"])


@router.get("/round", response_model=RoundState, responses=errors.openapi_responses(
    errors.MISSING_TOKEN, errors.BAD_TOKEN, errors.REVOKED, errors.INVALID_REQUEST))
async def get_round_state(
    caller: AuthenticatedWorker,
    federation: FederationDep,
    publisher: PublisherDep,
    after: Annotated[int | None, Query(ge=0, description="long-poll: the rounds_done the worker has seen")] = None,
    wait: Annotated[float, Query(ge=0, le=MAX_LONG_POLL_S, description="seconds to wait for something to do")] = 0,
    directive: Annotated[int | None, Query(ge=0, description="long-poll: the fleet directive seq the worker has "
                                                             "followed (a newer one answers at once)")] = None,
) -> RoundState:
    """Answers at once without ``after``; with ``after`` and ``wait``, once a model newer than ``after`` is published
    or a round opens that the caller is asked to train and has not sent its update for, at the latest after
    ``wait`` seconds. ``sampled`` says whether the caller is in the open round's sample (null: no sampling);
    ``directive`` is the fleet's newest model directive."""
    return await answer(federation, publisher, caller, after, wait, directive)


async def answer(federation, publisher, caller: str, after: int | None, wait: float,
                 directive: int | None = None) -> RoundState:
    """The handler behind both this route and its fast twin (routes/fast.py)."""
    federation.seen(caller)
    if after is not None and wait > 0:
        await publisher.wait_for(lambda: federation.something_to_do(caller, after, directive), wait)
        federation.seen(caller)
    return federation.round_state(caller)
