"""``GET /v1/model``: the current global weights as raw float32, with ETag and a long-poll for the next round."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response

from services.aggregator.deps import FederationDep, PublisherDep, authenticated_worker
from services.protocol import errors
from services.protocol.codec import CONTENT_TYPE, encode_weights
from services.protocol.messages import H_ROUND, H_SHA256, H_SPEC

MAX_LONG_POLL_S = 60.0
router = APIRouter(prefix="/v1", tags=["model"], dependencies=[Depends(authenticated_worker)])


@router.get("/model", responses={
    200: {"content": {CONTENT_TYPE: {}}}, 304: {"description": "not modified"},
    **errors.openapi_responses(errors.MISSING_TOKEN, errors.BAD_TOKEN, errors.INVALID_REQUEST)})
async def model(
    federation: FederationDep,
    publisher: PublisherDep,
    after_round: Annotated[int | None, Query(ge=-1, description="long-poll: wait for a model newer than this")] = None,
    wait: Annotated[float, Query(ge=0, le=MAX_LONG_POLL_S, description="seconds to wait for a newer model")] = 0,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    if after_round is not None and wait > 0:
        await publisher.wait(after_round, wait)
    etag = f'"{federation.rounds_done}-{federation.state.global_sha256[:16]}"'
    headers = {"ETag": etag, H_ROUND: str(federation.rounds_done), H_SHA256: federation.state.global_sha256,
               H_SPEC: federation.spec_hash}
    if if_none_match == etag or (after_round is not None and federation.rounds_done <= after_round):
        return Response(status_code=304, headers=headers)
    return Response(encode_weights(federation.global_weights), media_type=CONTENT_TYPE, headers=headers)
