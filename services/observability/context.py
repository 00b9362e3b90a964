"""Per-request log context on the aggregator: which worker a request comes from, for every line it logs."""

from __future__ import annotations

from typing import Callable

from services.logs import worker_context


class WorkerLogContext:
    """Pure ASGI middleware: the worker is the owner of the bearer token (``identify``), or none. A path id alone is
    not trusted: a refused caller with another worker's id in the path must not be logged as that worker."""

    def __init__(self, app, identify: Callable[[str], str | None]):
        self.app = app
        self.identify = identify

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        worker = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                text = value.decode("latin-1")
                if text.startswith("Bearer "):
                    worker = self.identify(text.removeprefix("Bearer ").strip())
                break
        token = worker_context.set(worker)
        try:
            await self.app(scope, receive, send)
        finally:
            worker_context.reset(token)
