"""``POST /v1/workers/{worker_id}/telemetry``: a worker's /detect counts and model round, for the dashboard."""

from __future__ import annotations

from fastapi import APIRouter

from services.aggregator.deps import FederationDep, ObserverDep, OwnWorker
from services.protocol import errors
from services.protocol.messages import Telemetry

router = APIRouter(prefix="/v1/workers", tags=["workers"])


@router.post("/{worker_id}/telemetry", summary="A worker's /detect counts and model round, for the dashboard "
             "(counts only)", responses=errors.openapi_responses(
                 errors.UNREADABLE_BODY, errors.MISSING_TOKEN, errors.BAD_TOKEN, errors.WRONG_WORKER,
                 errors.INVALID_REQUEST))
async def telemetry(worker_id: OwnWorker, body: Telemetry, federation: FederationDep, observer: ObserverDep) -> dict:
    federation.seen(worker_id)
    observer.telemetry(worker_id, body)
    return {"accepted": True, "directive": federation.state.directive}
