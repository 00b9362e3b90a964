"""Request bodies read within a limit, for both services: a body announced (Content-Length) or streamed beyond it is
refused with 413 ``too_large`` before it costs memory or time, a client that hangs up mid-body with 400
``client_disconnected``; nothing of such a body is ever taken.

``refuse_announced`` is the check before reading (the one place a Content-Length header is judged), ``read_limited``
reads the body in chunks, and ``limited_body`` makes an APIRoute class for routers whose JSON bodies are small (a
report, a control request): the caller is checked first, then the body is read within the limit, then FastAPI parses
it, so a stranger costs nothing and learns nothing from how its body is judged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from services.protocol import errors
from services.protocol.errors import ProtocolError


def announced_length(headers: Mapping[str, str]) -> int | None:
    """The body size a request announces, or None without a usable Content-Length (chunked, or not a number)."""
    declared = headers.get("content-length", "")
    return int(declared) if declared.isdigit() else None


def refuse_announced(headers: Mapping[str, str], limit: int, what: str = "body",
                     allowed: str | None = None) -> None:
    """Raise 413 ``too_large`` when the announced body is larger than ``limit`` bytes; ``allowed`` says the limit
    in words (default: the limit of N bytes)."""
    size = announced_length(headers)
    if size is not None and size > limit:
        allowed = allowed or f"the limit of {limit} bytes"
        raise ProtocolError(errors.TOO_LARGE, f"{what} of {size} bytes exceeds {allowed}")


async def read_limited(request: Request, limit: int, what: str = "body", allowed: str | None = None,
                       on_read: Callable[[int], None] | None = None) -> bytes:
    """The body, refused as soon as it is known to exceed ``limit`` bytes (announced, then as it streams in).
    ``on_read`` hears how many bytes were read, whatever the outcome (a metric of bytes received)."""
    refuse_announced(request.headers, limit, what, allowed)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ProtocolError(errors.TOO_LARGE, f"{what} exceeds {allowed or f'the limit of {limit} bytes'}")
    except ClientDisconnect:
        raise ProtocolError(errors.CLIENT_DISCONNECTED, f"the client disconnected after {len(body)} bytes of its "
                                                        f"{what}: nothing was accepted") from None
    finally:
        if on_read is not None:
            on_read(len(body))
    return bytes(body)


def limited_body(limit: int, authorize: Callable[[Request], object], allowed: str | None = None) -> type[APIRoute]:
    """An APIRoute class for routers whose bodies are at most ``limit`` bytes; ``authorize(request)`` raises a
    ProtocolError for a caller the route refuses, before the body is read (the route's own dependencies check again,
    which also documents them in the OpenAPI)."""
    allowed = allowed or f"the {limit} bytes this route takes"

    class LimitedBodyRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def limited_handler(request: Request):
                authorize(request)
                if request.method in ("POST", "PUT", "PATCH"):
                    request._body = await read_limited(request, limit, allowed=allowed)  # FastAPI reads it from here
                return await handler(request)

            return limited_handler

    return LimitedBodyRoute
