"""The operator's identity for control requests: one admin token, kept as its SHA-256 like the worker tokens.

Separate from the worker tokens on purpose: a worker (or whoever holds its token) may join and send updates, never
start rounds, roll models back or pin them. Used as a FastAPI dependency by the aggregator and the workers alike.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from services.config import AdminSettings
from services.protocol.errors import ADMIN_DISABLED, MISSING_TOKEN, NOT_ADMIN, ProtocolError


class AdminCheck:
    def __init__(self, settings: AdminSettings):
        digest = settings.digest
        self._digest = bytes.fromhex(digest) if digest else None

    def verify(self, authorization: str | None) -> None:
        """Returns if ``authorization`` carries the admin token, else raises a ProtocolError saying why."""
        if self._digest is None:
            raise ProtocolError(ADMIN_DISABLED, "no admin token is configured here (admin.token or "
                                                "admin.token_sha256): control requests are refused")
        if not authorization or not authorization.startswith("Bearer "):
            raise ProtocolError(MISSING_TOKEN, "missing bearer token: send 'Authorization: Bearer <admin token>'")
        offered = hashlib.sha256(authorization.removeprefix("Bearer ").strip().encode()).digest()
        if not hmac.compare_digest(offered, self._digest):
            raise ProtocolError(NOT_ADMIN, "this is not the admin token (control requests need admin.token)")


async def require_admin(
    request: Request,
    authorization: Annotated[str | None, Header(description="Bearer <admin token>")] = None,
) -> None:
    """Route dependency: the app must have ``app.state.admin`` (an AdminCheck)."""
    request.app.state.admin.verify(authorization)


def verify_admin(request: Request) -> None:
    """The same check on a bare request: a route class calls it before the body is read
    (services/protocol/bodies.limited_body)."""
    request.app.state.admin.verify(request.headers.get("authorization"))


Admin = Depends(require_admin)
