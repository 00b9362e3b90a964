"""``POST /v1/workers/{worker_id}/report``: a worker's rows not yet trained on, drift and served model versions;
new data and drift may open a continual round (committed before the answer)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from services.aggregator.deps import FederationDep, OwnWorker, PublisherDep, worker_of
from services.protocol import errors
from services.protocol.bodies import limited_body
from services.protocol.errors import ProtocolError
from services.protocol.messages import WorkerReport

MAX_REPORT_BYTES = 256 * 1024  # 100 versions with their reasons and figures fit many times over


def _own_worker(request: Request) -> str:
    caller = worker_of(request, request.headers.get("authorization"))
    worker_id = request.path_params.get("worker_id", "")
    if caller != worker_id:
        raise ProtocolError(errors.WRONG_WORKER, f"this token belongs to worker {caller}, not {worker_id}")
    return worker_id


router = APIRouter(prefix="/v1/workers", tags=["workers"], route_class=limited_body(MAX_REPORT_BYTES, _own_worker))


@router.post("/{worker_id}/report", summary="A worker's new rows, drift and model versions (counts and figures "
             "only)", responses=errors.openapi_responses(
                 errors.UNREADABLE_BODY, errors.CLIENT_DISCONNECTED, errors.MISSING_TOKEN, errors.BAD_TOKEN,
                 errors.WRONG_WORKER, errors.REVOKED, errors.TOO_LARGE, errors.INVALID_REQUEST,
                 errors.STORAGE_UNAVAILABLE))
async def report(worker_id: OwnWorker, body: WorkerReport, federation: FederationDep,
                 publisher: PublisherDep) -> dict:
    """Answer ``{"recorded": true, "directive": ...}`` once the report is durable (the fleet's newest model
    directive, or null); a round the report opened shows in ``GET /v1/round`` and the status."""
    federation.report(worker_id, body)
    await federation.synced()
    publisher.check()
    return {"recorded": True, "directive": federation.state.directive}
