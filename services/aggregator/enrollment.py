"""The enrolled nodes: who may join besides the ``workers`` of config.yaml, kept durably and revocable.

A node enrolls once with a fleet credential (the bootstrap token every node of the fleet is given, or a client
certificate from the federation's CA whose common name is its id) and from then on acts under its own identity: its
id and its own token. The node makes that token itself and sends only its SHA-256 (``token_sha256``), having written
the token to its state dir first, so the secret never crosses the wire in an answer, and an enrollment whose answer
was lost is simply sent again: the same id with the same digest is the same enrollment.

Rules: a new id (or none: the aggregator names the node ``node-`` + 12 hex digits of the digest) is enrolled; the
same id with the same digest is answered again; the same id with another digest is refused (409 ``already_enrolled``)
unless the node's certificate proves the id, which replaces the token (a node that lost its state dir); a revoked id
is refused for good (403 ``revoked``), and so is its token on every route.

Stored in ``nodes.log`` in the aggregator's state dir (services/aggregator/journal.py: one line per enrollment, synced
by group commit before the answer), so joining costs the same at the 10,000th node as at the first.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from pathlib import Path

from services.aggregator.journal import Journal
from services.protocol import errors
from services.protocol.errors import ProtocolError

NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Enrolled:
    node_id: str
    new: bool  # False: this enrollment was already on record (an answer sent again)
    via: str  # "token" | "certificate"
    at: float


class NodeRegistry:
    def __init__(self, state_dir: Path, clock=time.time):
        self.journal = Journal(Path(state_dir) / "nodes.log")
        self.clock = clock
        self._by_digest = {bytes.fromhex(v["sha256"]): k for k, v in self.journal.items()}
        self.revoked = sum(1 for _, v in self.journal.items() if v.get("revoked_at"))
        self.counts: collections.Counter[str] = collections.Counter()  # enrollments by result, for /metrics
        self._writing: dict[str, asyncio.Future] = {}  # node → the write of its record, until durable

    def __len__(self) -> int:
        return len(self.journal)

    def __contains__(self, node_id: str) -> bool:
        return node_id in self.journal

    def identify(self, digest: bytes) -> str | None:
        """The node whose token has this SHA-256 digest, or None; raises 403 ``revoked`` for a revoked node."""
        node_id = self._by_digest.get(digest)
        if node_id is None:
            return None
        if self.journal.entries[node_id].get("revoked_at"):
            raise ProtocolError(errors.REVOKED, f"node {node_id} was revoked: its identity is refused")
        return node_id

    def enroll(self, token_sha256: str, node_id: str | None, certificate_id: str | None,
               configured: set[str] | frozenset[str] = frozenset()) -> tuple[Enrolled, asyncio.Future | None]:
        """Enroll (or answer again) a node; ``certificate_id``: the common name of the client certificate that
        vouches for it, None when the bootstrap token did. Returns the enrollment and the future of its write."""
        if not DIGEST.match(token_sha256 or ""):
            raise ProtocolError(errors.INVALID_REQUEST, "token_sha256 must be the SHA-256 of the node's own token, "
                                                        "64 lowercase hex digits")
        if certificate_id is not None:
            if node_id is not None and node_id != certificate_id:
                raise ProtocolError(errors.CERTIFICATE_MISMATCH, f"node id {node_id!r} differs from the certificate's "
                                                                 f"common name {certificate_id!r}")
            node_id = certificate_id
        if node_id is None:
            node_id = f"node-{token_sha256[:12]}"
        if not NODE_ID.match(node_id):
            raise ProtocolError(errors.INVALID_REQUEST, f"node id {node_id!r} is not 1-63 letters, digits and _ . - "
                                                        "(starting with a letter or digit)")
        if node_id in configured:
            raise ProtocolError(errors.ALREADY_ENROLLED, f"{node_id} is a worker of config.yaml: it has its token "
                                                         "there")
        digest = bytes.fromhex(token_sha256)
        holder = self._by_digest.get(digest)
        if holder is not None and holder != node_id:
            raise ProtocolError(errors.ALREADY_ENROLLED, "this token is enrolled under another id: make a new token")
        record = self.journal.get(node_id)
        if record is not None:
            if record.get("revoked_at"):
                raise ProtocolError(errors.REVOKED, f"node {node_id} was revoked: enroll under another id")
            if record["sha256"] == token_sha256:  # answered again once the first write is durable
                self.counts["again"] += 1
                return Enrolled(node_id, False, record["via"], record["at"]), self._writing.get(node_id)
            if certificate_id is None:
                raise ProtocolError(errors.ALREADY_ENROLLED, f"node {node_id} is enrolled with another token; only "
                                                             "its certificate may replace it")
            del self._by_digest[bytes.fromhex(record["sha256"])]
        via = "certificate" if certificate_id is not None else "token"
        at = self.clock()
        write = self._put(node_id, {"sha256": token_sha256, "via": via, "at": at})
        self.counts["enrolled"] += 1
        return Enrolled(node_id, True, via, at), write

    def revoke(self, node_id: str) -> asyncio.Future | None:
        """Refuse the node's identity from now on (its record stays, so the id cannot be enrolled again)."""
        record = self.journal.get(node_id)
        if record is None:
            raise ProtocolError(errors.NOT_FOUND, f"no enrolled node {node_id}")
        if record.get("revoked_at"):
            return None
        self.revoked += 1
        return self._put(node_id, {**record, "revoked_at": self.clock()})

    def listing(self, offset: int = 0, limit: int = 100, revoked: bool | None = None) -> dict:
        """A page of the enrolled nodes in enrollment order (never their digests)."""
        entries = [(k, v) for k, v in self.journal.items() if revoked is None or bool(v.get("revoked_at")) == revoked]
        page = [{"node_id": k, "via": v["via"], "enrolled_at": v["at"], "revoked_at": v.get("revoked_at")}
                for k, v in entries[offset:offset + limit]]
        return {"total": len(entries), "offset": offset, "nodes": page}

    def _put(self, node_id: str, record: dict) -> asyncio.Future | None:
        digest = bytes.fromhex(record["sha256"])
        self._by_digest[digest] = node_id
        try:
            write = self.journal.put(node_id, record)
        except OSError:
            self._reindex(node_id, digest)
            raise
        if write is not None:
            self._writing[node_id] = write

            def done(f: asyncio.Future) -> None:
                if self._writing.get(node_id) is f:
                    del self._writing[node_id]
                if not f.cancelled() and f.exception() is not None:
                    self._reindex(node_id, digest)

            write.add_done_callback(done)
        return write

    def _reindex(self, node_id: str, digest: bytes) -> None:
        """A write that failed: the journal put the node's entry back as it was; the digest index follows it."""
        if self._by_digest.get(digest) == node_id:
            del self._by_digest[digest]
        record = self.journal.get(node_id)
        if record is not None:
            self._by_digest[bytes.fromhex(record["sha256"])] = node_id


class EnrollmentCheck:
    """Is this request's credential the fleet's enrollment credential? The bootstrap token (compared by its
    SHA-256, in constant time) or a client certificate verified by the TLS layer."""

    def __init__(self, digest: str | None, certificates: bool):
        self._digest = bytes.fromhex(digest) if digest else None
        self.certificates = certificates

    @property
    def enabled(self) -> bool:
        return self._digest is not None or self.certificates

    def verify(self, authorization: str | None, certificate_id: str | None) -> str | None:
        """Returns the certificate's id when a certificate vouches, None when the token does; else raises."""
        if not self.enabled:
            raise ProtocolError(errors.ENROLLMENT_DISABLED, "this aggregator enrolls no nodes: set enrollment.token "
                                                            "or enrollment.certificates")
        if self.certificates and certificate_id is not None:
            return certificate_id
        if not authorization or not authorization.startswith("Bearer "):
            raise ProtocolError(errors.MISSING_TOKEN, "missing credential: send 'Authorization: Bearer <enrollment "
                                                      "token>' or a client certificate from the federation's CA")
        offered = hashlib.sha256(authorization.removeprefix("Bearer ").strip().encode()).digest()
        if self._digest is None or not hmac.compare_digest(offered, self._digest):
            raise ProtocolError(errors.BAD_ENROLLMENT_CREDENTIAL, "this is not the fleet's enrollment token (and no "
                                                                  "client certificate vouches for the node)")
        return None
