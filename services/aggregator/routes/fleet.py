"""``GET /v1/fleet``, ``GET /v1/nodes/{id}``, ``GET /v1/rounds/{round}``: the fleet at a glance, one node, one closed
round with every contributor (the status lists only the first workers and keeps round records short at scale)."""

from __future__ import annotations

from fastapi import APIRouter

from services.aggregator.deps import FederationDep
from services.protocol import errors
from services.protocol.errors import ProtocolError

router = APIRouter(prefix="/v1", tags=["fleet"])


@router.get("/fleet")
async def fleet(federation: FederationDep) -> dict:
    """Members, live trainers, the open round's sample, fairness (rounds since each node last trained), the fleet's
    model directive and how many workers followed it, and the counters behind /metrics."""
    return federation.fleet_status()


@router.get("/nodes/{node_id}", responses=errors.openapi_responses(errors.NOT_FOUND, errors.INVALID_REQUEST))
async def node(node_id: str, federation: FederationDep) -> dict:
    if node_id not in federation.members and node_id not in federation.last_seen:
        raise ProtocolError(errors.NOT_FOUND, f"no node {node_id} in this run")
    return {"node_id": node_id, **federation.worker_status(node_id)}


@router.get("/rounds/{round_no}", responses=errors.openapi_responses(errors.NOT_FOUND, errors.INVALID_REQUEST))
async def closed_round(round_no: int, federation: FederationDep) -> dict:
    """A closed round's record: trigger, cause, duration, and every contributor with its samples, loss and hash."""
    record = federation.round_record(round_no)
    if record is None:
        raise ProtocolError(errors.NOT_FOUND, f"round {round_no} is not closed, or is older than the records kept")
    return record
