"""The operator's fleet controls (admin token): the enrolled nodes and their revocation, and model directives every
worker follows (serve a version, pin one, unpin), in state.json before they are answered."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.aggregator.deps import FederationDep
from services.protocol import errors
from services.protocol.bodies import limited_body
from services.protocol.errors import ProtocolError
from services.protocol.messages import FleetDirective
from services.security.admin import Admin

MAX_CONTROL_BYTES = 4096
router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Admin], route_class=limited_body(
    MAX_CONTROL_BYTES, lambda request: request.app.state.admin.verify(request.headers.get("authorization"))))
ADMIN_REFUSALS = (errors.MISSING_TOKEN, errors.NOT_ADMIN, errors.ADMIN_DISABLED)


@router.get("/nodes", responses=errors.openapi_responses(*ADMIN_REFUSALS, errors.INVALID_REQUEST))
async def nodes(request: Request, offset: Annotated[int, Query(ge=0)] = 0,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100, revoked: bool | None = None) -> dict:
    """The enrolled nodes in enrollment order, a page at a time: id, how it enrolled, when, and whether revoked."""
    return request.app.state.nodes.listing(offset, limit, revoked)


@router.delete("/nodes/{node_id}", responses=errors.openapi_responses(
    *ADMIN_REFUSALS, errors.NOT_FOUND, errors.CONFIGURED_WORKER, errors.INVALID_REQUEST, errors.STORAGE_UNAVAILABLE))
async def revoke(node_id: str, request: Request, federation: FederationDep) -> dict:
    """Revoke an enrolled node: its token is refused from now on (403 ``revoked``), it leaves the run and the
    sample, and its id cannot be enrolled again. Durable before it is answered."""
    app = request.app
    if node_id in app.state.configured_workers:
        raise ProtocolError(errors.CONFIGURED_WORKER, f"{node_id} is a worker of config.yaml: remove it there")
    write = app.state.nodes.revoke(node_id)
    federation.forget(node_id)
    await federation.synced(write)
    return {"node_id": node_id, "revoked_at": app.state.nodes.journal.get(node_id)["revoked_at"]}


class VersionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(max_length=32, description='the model version every worker is to serve: "12" (round 12) '
                                                    'or "12.1" (its recalibrated threshold)')
    reason: str = Field("", max_length=200)

    @field_validator("version", mode="before")
    @classmethod
    def _number_is_text(cls, value):
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class ReasonRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=200)


DIRECTIVE_REFUSALS = (*ADMIN_REFUSALS, errors.TOO_LARGE, errors.INVALID_REQUEST, errors.ROUND_OPEN,
                      errors.STORAGE_UNAVAILABLE)


@router.post("/fleet/serve", status_code=202, response_model=FleetDirective,
             responses=errors.openapi_responses(*DIRECTIVE_REFUSALS))
async def fleet_serve(body: VersionRequest, federation: FederationDep) -> dict:
    """Every worker serves this version now (a fleet-wide rollback, or forward), if it keeps it; each reports the
    outcome (``GET /v1/fleet`` counts them). A worker's own pin of another version refuses it."""
    return federation.direct("serve", body.version, body.reason)


@router.post("/fleet/pin", status_code=202, response_model=FleetDirective,
             responses=errors.openapi_responses(*DIRECTIVE_REFUSALS))
async def fleet_pin(body: VersionRequest, federation: FederationDep) -> dict:
    """Every worker serves this version and keeps serving it: newer models are kept, not served, until unpinned."""
    return federation.direct("pin", body.version, body.reason)


@router.delete("/fleet/pin", status_code=202, response_model=FleetDirective,
               responses=errors.openapi_responses(*DIRECTIVE_REFUSALS))
async def fleet_unpin(federation: FederationDep, body: ReasonRequest | None = None) -> dict:
    """Every worker drops its pin and serves as its gate decides again."""
    return federation.direct("unpin", None, body.reason if body else "")
