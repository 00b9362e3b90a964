"""The two requests every node of a fleet sends each round, answered ahead of the framework: ``POST
/v1/rounds/{round}/updates`` and ``GET /v1/round``.

``AggregatorApp.__call__`` (services/aggregator/app.py) hands these two paths to ``answered`` before the framework
sees them: no route scan, no dependency solving, no middleware chain around every ``send``. Measured
with 1,000 sampled nodes posting at once (benchmarks/fleet.py), the framework's share was larger than the work
itself. Everything else, and a round that is not a number, goes to the app as before. The handlers are the FastAPI
routes' own (updates.take, round_state.answer), which also document them in the OpenAPI; parameters are validated by
pydantic with FastAPI's wording ("header X-Sample-Count: Field required"); refusals are logged, counted and answered
as the app's exception handlers do (services/aggregator/app.py ``refuse``).
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

import orjson
from pydantic import Field, TypeAdapter, ValidationError
from starlette.requests import Request

from services import logs
from services.aggregator.deps import worker_of
from services.aggregator.routes import round_state, updates
from services.protocol import errors
from services.protocol.errors import ProtocolError
from services.protocol.messages import H_LOSS, H_SAMPLES, H_SHA256

log = logging.getLogger("fedad.aggregator")
UPDATES = re.compile(r"^/v1/rounds/([0-9]{1,9})/updates$")
_INT = TypeAdapter(int)
_FLOAT = TypeAdapter(float)
_COUNT = TypeAdapter(Annotated[int, Field(ge=0)])
_WAIT = TypeAdapter(Annotated[float, Field(ge=0, le=round_state.MAX_LONG_POLL_S)])
_REQUIRED = object()
JSON = [(b"content-type", b"application/json")]


def _param(value: str | None, adapter: TypeAdapter, where: str, default: Any = _REQUIRED) -> Any:
    if value is None:
        if default is _REQUIRED:
            raise ProtocolError(errors.INVALID_REQUEST, f"{where}: Field required")
        return default
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise ProtocolError(errors.INVALID_REQUEST, f"{where}: {exc.errors()[0]['msg']}") from None


async def update(request: Request, round_no: int) -> bytes:
    caller = worker_of(request, request.headers.get("authorization"))
    logs.worker_context.set(caller)
    headers = request.headers
    sample_count = _param(headers.get(H_SAMPLES), _INT, f"header {H_SAMPLES}")
    loss = _param(headers.get(H_LOSS), _FLOAT, f"header {H_LOSS}")
    return orjson.dumps(await updates.take(request, round_no, caller, sample_count, loss, headers.get(H_SHA256)))


async def get_round(request: Request) -> bytes:
    caller = worker_of(request, request.headers.get("authorization"))
    logs.worker_context.set(caller)
    query = request.query_params
    after = _param(query.get("after"), _COUNT, "query after", None)
    wait = _param(query.get("wait"), _WAIT, "query wait", 0.0)
    directive = _param(query.get("directive"), _COUNT, "query directive", None)
    state = request.app.state
    answer = await round_state.answer(state.federation, state.publisher, caller, after, wait, directive)
    return answer.model_dump_json().encode()


async def answered(app, scope, receive, send) -> bool:
    """Answer the request if it is one of the two per-round requests; False: the app's to answer."""
    if scope["type"] != "http":
        return False
    path, method = scope["path"], scope["method"]
    if method == "POST" and (match := UPDATES.match(path)):
        round_no = int(match.group(1))
        await _answer(app, scope, receive, send, lambda request: update(request, round_no))
        return True
    if method == "GET" and path == "/v1/round":
        await _answer(app, scope, receive, send, get_round)
        return True
    return False


async def _answer(app, scope, receive, send, handler) -> None:
    scope["app"] = app
    request = Request(scope, receive)
    token = logs.worker_context.set(None)
    try:
        status, body = 200, await handler(request)
    except ProtocolError as exc:
        log.warning("%s %s refused (%d): %s [%s]", scope["method"], scope["path"], exc.status, exc.detail, exc.code)
        app.state.observer.refused(scope["path"], exc.status, exc.code)
        status, body = exc.status, orjson.dumps(exc.body())
    except Exception as exc:  # a bug: the traceback to the log, the client gets the code
        log.exception("%s %s failed", scope["method"], scope["path"])
        status = 500
        body = orjson.dumps({"code": errors.INTERNAL_ERROR.code, "detail": f"internal error ({type(exc).__name__})"})
    finally:
        logs.worker_context.reset(token)
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
