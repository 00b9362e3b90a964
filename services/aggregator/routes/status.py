"""``GET /v1/status``, ``/healthz`` and ``/readyz``: what the federation is doing, and whether it can take writes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.aggregator.deps import FederationDep
from services.protocol import errors
from services.protocol.errors import ProtocolError

router = APIRouter(tags=["status"])


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", responses=errors.openapi_responses(errors.STORAGE_UNAVAILABLE))
async def readyz(federation: FederationDep):
    if federation.storage_error:
        refusal = ProtocolError(errors.STORAGE_UNAVAILABLE, f"cannot write the state dir: {federation.storage_error}")
        return JSONResponse(refusal.body(), status_code=refusal.status)
    return {"status": "ready", "phase": federation.phase}


@router.get("/v1/status")
async def status(federation: FederationDep) -> dict:
    """Rounds done, the open round and its deadline, workers seen, per-round history."""
    return federation.status()
