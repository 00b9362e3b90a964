"""``POST /v1/rounds/{round_no}/updates``: a worker's new weights for the open round, raw float32 with headers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request

from services.aggregator.deps import AuthenticatedWorker
from services.aggregator.observer import AggregatorObserver
from services.protocol import errors
from services.protocol.bodies import read_limited, refuse_announced
from services.protocol.codec import CONTENT_TYPE
from services.protocol.errors import ProtocolError
from services.protocol.messages import H_LOSS, H_SAMPLES, H_SHA256

router = APIRouter(prefix="/v1/rounds", tags=["rounds"])


async def read_update(request: Request, limit: int, observer: AggregatorObserver) -> bytes:
    """The body, refused as soon as it is known to exceed ``limit`` bytes (from Content-Length, before reading)."""
    allowed = f"the model's {limit} bytes"
    refuse_announced(request.headers, limit, "update body", allowed)
    media_type = request.headers.get("content-type", CONTENT_TYPE).split(";")[0].strip().lower()
    if media_type != CONTENT_TYPE:
        raise ProtocolError(errors.BAD_MEDIA_TYPE, f"update body must be raw little-endian float32 sent as "
                                                   f"{CONTENT_TYPE}, not {media_type}")
    return await read_limited(request, limit, "update body", allowed, on_read=observer.update_received)


@router.post("/{round_no}/updates", responses=errors.openapi_responses(
    errors.CLIENT_DISCONNECTED, errors.MISSING_TOKEN, errors.BAD_TOKEN, errors.NOT_JOINED, errors.NO_OPEN_ROUND,
    errors.STALE_ROUND, errors.FUTURE_ROUND, errors.TOO_STALE, errors.NOT_SAMPLED, errors.REVOKED,
    errors.CONFLICTING_UPDATE, errors.TOO_LARGE, errors.BAD_MEDIA_TYPE,
    errors.INVALID_UPDATE, errors.HASH_MISMATCH, errors.NON_FINITE, errors.TOO_MANY_SAMPLES, errors.INVALID_REQUEST,
    errors.STORAGE_UNAVAILABLE),
    openapi_extra={"requestBody": {"required": True, "content": {
        CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}}}})
async def update(
    round_no: int,
    request: Request,
    caller: AuthenticatedWorker,
    x_sample_count: Annotated[int, Header(alias=H_SAMPLES, description="local training windows")],
    x_train_loss: Annotated[float, Header(alias=H_LOSS, description="mean training loss of the last epoch")],
    x_content_sha256: Annotated[str | None, Header(alias=H_SHA256)] = None,
) -> dict:
    """Answer ``{"accepted": true, "duplicate": false, "round": r}`` once the update is durable; the same bytes
    sent again are taken once (``duplicate: true``). The round closes as soon as ``min_workers`` updates are in (or
    every sampled node's; in async mode a model is published every ``buffer_size`` updates, and the answer gives
    the update's ``staleness``)."""
    return await take(request, round_no, caller, x_sample_count, x_train_loss, x_content_sha256)


async def take(request: Request, round_no: int, caller: str, sample_count: int, loss: float,
               sha256: str | None) -> dict:
    """The handler behind both this route and its fast twin (routes/fast.py)."""
    state = request.app.state
    federation, observer = state.federation, state.observer
    body = await read_update(request, federation.n_params * 4, observer)
    result = await federation.submit_async(caller, round_no, body, sample_count, loss, sha256)
    observer.update_accepted(result)
    state.publisher.check()
    return result
