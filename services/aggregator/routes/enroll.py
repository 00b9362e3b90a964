"""``POST /v1/enroll``: a node joins the fleet with the fleet's enrollment credential and gets its own identity.

The credential (the bootstrap token, or a client certificate from the federation's CA) is checked before the body is
read, so a flood of bad credentials costs a hash each and stores nothing. The node's identity is its id and the token
whose SHA-256 it sends (services/aggregator/enrollment.py says why the node makes its own token).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from services.protocol import errors
from services.protocol.bodies import limited_body
from services.security.tls import client_certificate_id

MAX_ENROLL_BYTES = 1024


def _credential(request: Request) -> str | None:
    """The certificate's id when a certificate vouches, None for the bootstrap token; else a refusal."""
    return request.app.state.enrollment.verify(request.headers.get("authorization"),
                                               client_certificate_id(request.scope))


router = APIRouter(prefix="/v1", tags=["enrollment"], route_class=limited_body(MAX_ENROLL_BYTES, _credential))


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 (hex) of the token the node made for "
                                                                   "itself and keeps: from now on its bearer token")
    node_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
                                description="the id the node asks for (a certificate's common name decides it); "
                                            "null: node-<12 hex digits of token_sha256>")


class Enrollment(BaseModel):
    node_id: str
    new: bool = Field(description="false: this enrollment was on record already (an answer sent again)")
    via: str = Field(description="token | certificate")
    enrolled_at: float


@router.post("/enroll", response_model=Enrollment, responses=errors.openapi_responses(
    errors.MISSING_TOKEN, errors.ENROLLMENT_DISABLED, errors.BAD_ENROLLMENT_CREDENTIAL, errors.CERTIFICATE_MISMATCH,
    errors.REVOKED, errors.ALREADY_ENROLLED, errors.TOO_LARGE, errors.UNREADABLE_BODY, errors.CLIENT_DISCONNECTED,
    errors.INVALID_REQUEST, errors.STORAGE_UNAVAILABLE))
async def enroll(request: Request, body: EnrollRequest) -> Enrollment:
    """Enroll this node (answered once its record is durable): then join with ``Authorization: Bearer <its own
    token>`` under ``node_id`` like any worker. The same request again gets the same answer (``new: false``)."""
    app = request.app
    certificate_id = _credential(request)
    enrolled, write = app.state.nodes.enroll(body.token_sha256, body.node_id, certificate_id,
                                             app.state.configured_workers)
    await app.state.federation.synced(write)
    return Enrollment(node_id=enrolled.node_id, new=enrolled.new, via=enrolled.via, enrolled_at=enrolled.at)
