"""A node that is not in config.yaml's ``workers`` enrolls with the fleet's credential and gets its own identity.

``python -m services.worker --id pump-17`` on a node of a fleet: the settings are ``enrollment.node`` with the id
filled in, and the identity lives in the node's state dir (``identity.json``: its id and the token it made for
itself). The first start makes the token, writes it (temp, fsync, rename) and only then asks the aggregator to
enroll its SHA-256 (``POST /v1/enroll``, with the bootstrap token ``enrollment.token`` or, with tls, the node's
certificate ``tls.dir/<id>.crt`` whose common name is the id), so a crash or a lost answer at any moment leaves a
token that the next attempt enrolls again with the same request. Later starts read the identity and skip all this.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import httpx

from services import atomic
from services.config import ConfigError, Settings, WorkerSettings
from services.protocol import errors
from services.protocol.errors import error_of
from services.security.tls import client_context
from services.security.tokens import new_token

log = logging.getLogger("fedad.worker")
IDENTITY = "identity.json"
MAX_BACKOFF_S = 15.0
FINAL = {errors.ENROLLMENT_DISABLED.code, errors.BAD_ENROLLMENT_CREDENTIAL.code, errors.CERTIFICATE_MISMATCH.code,
         errors.REVOKED.code, errors.ALREADY_ENROLLED.code, errors.MISSING_TOKEN.code, errors.INVALID_REQUEST.code}


class EnrollmentRefused(Exception):
    """The aggregator refused the enrollment for a reason no retry cures (its code says which)."""


def enrolled_worker(settings: Settings, node_id: str, attempts: int | None = None) -> WorkerSettings:
    """This node's settings with its own token, enrolling it first if it never was (retried with capped backoff,
    ``attempts`` times at most; None: until it works)."""
    enrollment = settings.enrollment
    if enrollment.token is None and not (enrollment.certificates and settings.tls.enabled):
        raise ConfigError(f"workers: no worker with id {node_id!r}, and this node has no enrollment credential "
                          "(enrollment.token, or enrollment.certificates with tls.enabled)")
    template = settings.enrolled_worker(node_id, token="-" * 16)
    path = Path(template.state_dir) / IDENTITY
    identity = atomic.read_json(path)
    if identity is not None and identity.get("node_id") != node_id:
        raise ConfigError(f"{path} holds the identity of {identity.get('node_id')!r}, not {node_id!r}: give each "
                          "node its own state dir")
    if identity is None:
        identity = {"node_id": node_id, "token": new_token(), "enrolled": False}
        atomic.write_json(path, identity)  # the token exists on disk before the aggregator hears of it
    if not identity["enrolled"]:
        enroll(settings, node_id, identity["token"], attempts)
        identity = {**identity, "enrolled": True}
        atomic.write_json(path, identity)
    return settings.enrolled_worker(node_id, identity["token"])


def enroll(settings: Settings, node_id: str, token: str, attempts: int | None = None) -> dict:
    body = {"token_sha256": hashlib.sha256(token.encode()).hexdigest(), "node_id": node_id}
    headers = {"Authorization": f"Bearer {settings.enrollment.token}"} if settings.enrollment.token else {}
    verify = client_context(settings.tls, node_id)
    backoff, tried = 0.5, 0
    with httpx.Client(base_url=settings.aggregator.url, timeout=30, verify=verify) as client:
        while True:
            tried += 1
            try:
                answer = client.post("/v1/enroll", json=body, headers=headers)
            except httpx.HTTPError as exc:
                problem = f"aggregator unreachable at {settings.aggregator.url}: {exc}"
            else:
                if answer.is_success:
                    enrolled = answer.json()
                    log.info("enrolled as %s (%s)", enrolled["node_id"], enrolled["via"])
                    return enrolled
                refusal = error_of(answer.content)
                problem = f"enrollment refused ({answer.status_code} {refusal.code}): {refusal.detail}"
                if refusal.code in FINAL:
                    raise EnrollmentRefused(problem)
            if attempts is not None and tried >= attempts:
                raise EnrollmentRefused(problem)
            log.warning("%s; retrying in %.1fs", problem, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
