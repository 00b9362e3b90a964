"""``POST /v1/workers/{worker_id}/join``: a worker enters the run with its model spec and scaling statistics."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from services.aggregator.deps import FederationDep, OwnWorker, PublisherDep
from services.protocol import errors
from services.protocol.messages import JoinRequest, JoinResponse

log = logging.getLogger("fedad.aggregator")
router = APIRouter(prefix="/v1/workers", tags=["workers"])


@router.post("/{worker_id}/join", response_model=JoinResponse, responses=errors.openapi_responses(
    errors.UNREADABLE_BODY, errors.MISSING_TOKEN, errors.BAD_TOKEN, errors.WRONG_WORKER, errors.SPEC_MISMATCH,
    errors.INVALID_REQUEST, errors.STORAGE_UNAVAILABLE, errors.REVOKED))
async def join(worker_id: OwnWorker, body: JoinRequest, federation: FederationDep,
               publisher: PublisherDep) -> JoinResponse:
    """Answer: run id, the open round, the training plan every worker uses, and the merged scaler (null until
    ``min_workers`` have joined). A worker joining later (the federation idle or training) gets the frozen scaler:
    its statistics are recorded, never merged into it."""
    response = federation.join(worker_id, body)
    await federation.synced()  # the join is durable before it is answered (group commit: members.log)
    publisher.check()  # the join that completes min_workers opens round 1: wake GET /v1/round
    # a worker from config.yaml joins at INFO; enrolled nodes, thousands of them, at DEBUG (counted in /v1/fleet)
    listed = any(w.id == worker_id for w in federation.settings.workers)
    log.log(logging.INFO if listed else logging.DEBUG, "worker %s joined (%d samples); phase %s", worker_id,
            body.sample_count, federation.phase)
    return response
