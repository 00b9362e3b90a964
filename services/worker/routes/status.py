"""Liveness, readiness and the worker's status document."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.protocol.errors import NO_MODEL
from services.worker.deps import Context

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: a model is served (503 before the first round is installed)",
            responses={503: {"description": "no model yet", "content": {"application/json": {"example": {
                "status": "not ready", "code": NO_MODEL.code, "detail": "no model yet (joining)"}}}}})
async def readyz(ctx: Context):
    model = ctx.slot.current
    if model is None:
        detail = f"no model yet ({ctx.loop.phase})"
        return JSONResponse({"status": "not ready", "code": NO_MODEL.code, "detail": detail}, status_code=503)
    return {"status": "ready", "model_round": model.model_round}


@router.get("/v1/status", summary="Phase, training progress, model round, threshold, held-out figures per round")
async def status(ctx: Context):
    return ctx.status_document()
