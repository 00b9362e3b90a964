"""The two routes every node of a fleet calls each round, served by plain Starlette routes placed first: ``POST
/v1/rounds/{round}/updates`` and ``GET /v1/round``.

They skip FastAPI's per-request dependency solving and its scan of the other routes, which cost more than the work
itself once a thousand nodes send at once (benchmarks/fleet.py; the worker's /detect does the same). They share their
handlers with the FastAPI routes in updates.py and round_state.py, which document them in the OpenAPI and still serve
what these do not match (a round that is not a number gets FastAPI's 422). Parameters are validated by pydantic with
FastAPI's wording ("header X-Sample-Count: Field required"); middleware and exception handlers apply alike.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import Field, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.aggregator.deps import worker_of
from services.aggregator.routes import round_state, updates
from services.protocol import errors
from services.protocol.errors import ProtocolError
from services.protocol.messages import H_LOSS, H_SAMPLES, H_SHA256

_INT = TypeAdapter(int)
_FLOAT = TypeAdapter(float)
_AFTER = TypeAdapter(Annotated[int, Field(ge=0)])
_WAIT = TypeAdapter(Annotated[float, Field(ge=0, le=round_state.MAX_LONG_POLL_S)])
_REQUIRED = object()


def _param(value: str | None, adapter: TypeAdapter, where: str, default: Any = _REQUIRED) -> Any:
    if value is None:
        if default is _REQUIRED:
            raise ProtocolError(errors.INVALID_REQUEST, f"{where}: Field required")
        return default
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise ProtocolError(errors.INVALID_REQUEST, f"{where}: {exc.errors()[0]['msg']}") from None


def _json(document) -> Response:
    return Response(orjson.dumps(document), media_type="application/json")


async def update(request: Request) -> Response:
    caller = worker_of(request, request.headers.get("authorization"))
    headers = request.headers
    sample_count = _param(headers.get(H_SAMPLES), _INT, f"header {H_SAMPLES}")
    loss = _param(headers.get(H_LOSS), _FLOAT, f"header {H_LOSS}")
    return _json(await updates.take(request, request.path_params["round_no"], caller, sample_count, loss,
                                    headers.get(H_SHA256)))


async def get_round(request: Request) -> Response:
    caller = worker_of(request, request.headers.get("authorization"))
    query = request.query_params
    after = _param(query.get("after"), _AFTER, "query after", None)
    wait = _param(query.get("wait"), _WAIT, "query wait", 0.0)
    directive = _param(query.get("directive"), _AFTER, "query directive", None)
    state = request.app.state
    answer = await round_state.answer(state.federation, state.publisher, caller, after, wait, directive)
    return Response(answer.model_dump_json(), media_type="application/json")


def routes() -> list[Route]:
    """Insert these first in the app's routes."""
    return [Route("/v1/rounds/{round_no:int}/updates", update, methods=["POST"], include_in_schema=False),
            Route("/v1/round", get_round, methods=["GET"], include_in_schema=False)]
