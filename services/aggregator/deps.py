"""Route dependencies as ``Annotated`` aliases: the federation, the publisher, the observer and the caller's identity.

``create_app`` puts the shared objects on ``app.state``; routes declare what they need by type, e.g.
``async def join(worker_id: OwnWorker, federation: FederationDep)``. Every dependency is ``async def``: FastAPI runs a
plain ``def`` in its thread pool, a thread hop per dependency per request that cost more than the request itself once
thousands of nodes call (benchmarks/fleet.py).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from services.aggregator.observer import AggregatorObserver
from services.aggregator.publisher import Publisher
from services.aggregator.rounds import Federation
from services.protocol.errors import BAD_TOKEN, MISSING_TOKEN, WRONG_WORKER, ProtocolError
from services.security.tokens import token_digest


async def _federation(request: Request) -> Federation:
    return request.app.state.federation


async def _publisher(request: Request) -> Publisher:
    return request.app.state.publisher


async def _observer(request: Request) -> AggregatorObserver:
    return request.app.state.observer


async def authenticated_worker(
    request: Request,
    authorization: Annotated[str | None, Header(description="Bearer <worker token>")] = None,
) -> str:
    """The id of the worker whose token the request carries: a worker of config.yaml or an enrolled node (403
    ``revoked`` for a revoked one)."""
    return worker_of(request, authorization)


def worker_of(request: Request, authorization: str | None) -> str:
    """``authenticated_worker`` for callers outside dependency injection."""
    if not authorization or not authorization.startswith("Bearer "):
        raise ProtocolError(MISSING_TOKEN, "missing bearer token: send 'Authorization: Bearer <worker token>'")
    worker_id = identify(request.app, authorization.removeprefix("Bearer ").strip())
    if worker_id is None:
        raise ProtocolError(BAD_TOKEN, "unknown worker token")
    return worker_id


def identify(app, token: str) -> str | None:
    """Whose token this is (config's workers first, then the enrolled nodes); raises 403 ``revoked``."""
    digest = token_digest(token)
    return app.state.tokens.identify_digest(digest) or app.state.nodes.identify(digest)


AuthenticatedWorker = Annotated[str, Depends(authenticated_worker)]


async def own_worker(worker_id: str, caller: AuthenticatedWorker) -> str:
    """The path's ``worker_id``, if the token is that worker's: a worker acts only under its own id."""
    if caller != worker_id:
        raise ProtocolError(WRONG_WORKER, f"this token belongs to worker {caller}, not {worker_id}")
    return worker_id


FederationDep = Annotated[Federation, Depends(_federation)]
PublisherDep = Annotated[Publisher, Depends(_publisher)]
ObserverDep = Annotated[AggregatorObserver, Depends(_observer)]
OwnWorker = Annotated[str, Depends(own_worker)]
