"""Routes whose JSON body is small (a report, a control request): the caller is checked first, then a body announced
or streamed beyond the route's limit is refused with 413 ``too_large`` before FastAPI reads and parses it, so a huge
body costs neither memory nor time, and cannot slip through as a valid request padded with fields the model
ignores; a stranger learns nothing from how its body is judged."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from services.protocol import errors
from services.protocol.errors import ProtocolError


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ProtocolError(errors.TOO_LARGE, f"body of {declared} bytes exceeds the {limit} bytes this route takes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ProtocolError(errors.TOO_LARGE, f"body exceeds the {limit} bytes this route takes")
    except ClientDisconnect:
        raise ProtocolError(errors.CLIENT_DISCONNECTED, "the client disconnected before its body was complete: "
                                                        "nothing was taken") from None
    return bytes(body)


def limited_body(limit: int, authorize: Callable[[Request], object]) -> type[APIRoute]:
    """An APIRoute class for routers whose bodies are at most ``limit`` bytes; ``authorize(request)`` raises a
    ProtocolError for a caller the route refuses, before the body is read (the route's own dependencies check again,
    which also documents them in the OpenAPI)."""

    class LimitedBodyRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def limited_handler(request: Request):
                authorize(request)
                if request.method in ("POST", "PUT", "PATCH"):
                    request._body = await read_limited(request, limit)  # FastAPI reads the body from here
                return await handler(request)

            return limited_handler

    return LimitedBodyRoute
