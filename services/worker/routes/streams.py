"""The streams a worker holds for /detect requests that name one: list, inspect, forget."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from services.protocol.errors import BAD_STREAM_ID, INVALID_REQUEST, UNKNOWN_STREAM, openapi_responses
from services.worker.deps import Context
from services.worker.parsing import stream_id

router = APIRouter(prefix="/v1/streams", tags=["streams"])
ONE_STREAM = openapi_responses(UNKNOWN_STREAM, BAD_STREAM_ID)


@router.get("", summary="How many streams are held, created and evicted; the most recently used ones",
            responses=openapi_responses(INVALID_REQUEST))
async def list_streams(ctx: Context, limit: Annotated[int, Query(ge=0, le=1000)] = 100):
    return ctx.streams.summary(limit)


@router.get("/{stream}", summary="One stream: rows scored, rows held for its next window, whether it has a baseline",
            responses=ONE_STREAM)
async def get_stream(stream: str, ctx: Context):
    return ctx.streams.describe(stream_id(stream))


@router.delete("/{stream}", summary="Forget a stream: its next request starts it afresh (and may bring a baseline)",
               responses=ONE_STREAM)
async def forget_stream(stream: str, ctx: Context):
    return ctx.streams.forget(stream_id(stream))
