"""``POST /v1/admin/rounds``: the operator starts a continual round now (admin token, never a worker's)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from services.aggregator.deps import FederationDep, PublisherDep
from services.protocol import errors
from services.protocol.bodies import limited_body
from services.security.admin import Admin, verify_admin

MAX_CONTROL_BYTES = 4096
router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Admin], route_class=limited_body(
    MAX_CONTROL_BYTES, verify_admin))


class RoundRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=200, description="why, for the log and the round's record")


class RoundStarted(BaseModel):
    round: int
    trigger: str


@router.post("/rounds", status_code=202, response_model=RoundStarted, responses=errors.openapi_responses(
    errors.UNREADABLE_BODY, errors.CLIENT_DISCONNECTED, errors.MISSING_TOKEN, errors.NOT_ADMIN,
    errors.ADMIN_DISABLED, errors.ROUND_OPEN, errors.WAITING_FOR_WORKERS, errors.CONTINUAL_OFF, errors.TOO_LARGE,
    errors.INVALID_REQUEST, errors.STORAGE_UNAVAILABLE))
async def start_round(federation: FederationDep, publisher: PublisherDep,
                      body: RoundRequest | None = None) -> RoundStarted:
    """Open the next round now (202: open, the workers train it); 409 while a round is open or the federation
    still waits for workers. The round is in state.json before this answers."""
    round_no = federation.trigger("admin", body.reason if body else "")
    publisher.check()
    return RoundStarted(round=round_no, trigger="admin")
