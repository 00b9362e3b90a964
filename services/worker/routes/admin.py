"""The models a worker keeps: ``GET /v1/models`` (public, like /v1/status), and the operator's control of which one
/detect serves — roll back or forward, pin, unpin — with the admin token, never a worker's (services/security/admin).

The caller is checked before a body is read, and a body beyond a few KiB is refused unread (413): a stranger costs
the worker neither memory nor time. Every change is persisted before the answer, so it survives a restart.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field, Strict
from starlette.concurrency import run_in_threadpool

from services.protocol import errors
from services.protocol.bodies import limited_body
from services.protocol.errors import ProtocolError
from services.security.admin import Admin, verify_admin
from services.worker.deps import Context
from services.worker.models import PinnedElsewhere, UnknownVersion

MAX_CONTROL_BYTES = 4096
VERSION_PATTERN = r"^\d{1,9}(\.\d{1,6})?$"  # a round (12) or a recalibration of it (12.1)
VersionId = Annotated[str, Path(pattern=VERSION_PATTERN, description="a kept version: its round, e.g. 12, or "
                                                                      "12.1 for a recalibration of round 12")]


public = APIRouter(tags=["models"])
router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Admin], route_class=limited_body(
    MAX_CONTROL_BYTES, verify_admin,
    f"the {MAX_CONTROL_BYTES} bytes a control request takes"))
REFUSALS = (errors.MISSING_TOKEN, errors.NOT_ADMIN, errors.ADMIN_DISABLED, errors.INVALID_REQUEST)
BODY_REFUSALS = (errors.TOO_LARGE, errors.CLIENT_DISCONNECTED)


class PinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    round: Annotated[int, Strict(), Field(ge=0, le=999_999_999)] | Annotated[str, Field(pattern=VERSION_PATTERN)] = \
        Field(description="the kept version to serve and keep serving: its round, or e.g. \"12.1\"")


@public.get("/v1/models", summary="The model versions this worker keeps: figures, gate decision, served, pinned")
async def list_models(ctx: Context):
    return ctx.models.document()


@router.post("/models/{version}/serve", summary="Serve a kept version now: roll back or forward (admin token)",
             responses=errors.openapi_responses(*REFUSALS, *BODY_REFUSALS, errors.NOT_FOUND, errors.PINNED))
async def serve_version(version: VersionId, ctx: Context):
    """404 ``not_found`` for a version this worker does not keep; 409 ``pinned`` while another one is pinned. A
    version the gate refused may be served too: the operator decides."""
    await _change(lambda: ctx.models.serve(version))
    return ctx.models.document()


@router.post("/pin", summary="Serve a kept version and keep serving it: newer models are kept, not served",
             responses=errors.openapi_responses(*REFUSALS, *BODY_REFUSALS, errors.NOT_FOUND))
async def pin_version(body: PinRequest, ctx: Context):
    await _change(lambda: ctx.models.pin(str(body.round)))
    return ctx.models.document()


@router.delete("/pin", summary="Unpin: newer models that pass the gate are served again",
               responses=errors.openapi_responses(*REFUSALS))
async def unpin(ctx: Context):
    """The served version stays until the next model that passes the gate; answers the same when nothing is
    pinned."""
    await _change(ctx.models.unpin)
    return ctx.models.document()


async def _change(step) -> None:
    """A change of the served model opens a session and fsyncs ``state.json``: off the event loop."""
    try:
        await run_in_threadpool(step)
    except UnknownVersion as exc:
        raise ProtocolError(errors.NOT_FOUND, str(exc)) from None
    except PinnedElsewhere as exc:
        raise ProtocolError(errors.PINNED, str(exc)) from None
