"""Worker bearer tokens. The aggregator keeps only their SHA-256 and finds the worker by that digest.

Why plain SHA-256 and not a slow password hash: the tokens are random machine secrets (``make`` writes 24 random
bytes), not passwords a person picks, so there is nothing for a dictionary attack to guess; a fast hash lets the
aggregator check every request without a per-request key-stretching cost (GitHub stores its tokens the same way).
Use tokens of at least 16 random bytes.

Why a lookup by digest is safe from timing attacks: the table is keyed by the SHA-256 of the offered token, so how
long a lookup takes depends on that digest, which an attacker cannot steer towards a stored one without breaking the
hash. Comparing with every stored digest instead (the constant-time loop this replaced) made each request O(workers):
at 10,000 nodes, milliseconds per request.
"""

from __future__ import annotations

import hashlib
import secrets

from services.config import hash_token as hash_token  # the digest rule lives with token_sha256, in the config


def new_token() -> str:
    return secrets.token_hex(24)


def token_digest(offered: str) -> bytes:
    return hashlib.sha256(offered.encode()).digest()


class TokenTable:
    """Worker id by the digest of its token."""

    def __init__(self, digests: dict[str, str]):
        self._by_digest = {bytes.fromhex(d): worker for worker, d in digests.items()}
        self._ids = set(digests)

    @classmethod
    def from_settings(cls, workers) -> TokenTable:
        return cls({w.id: w.token_sha256 or hash_token(w.token) for w in workers})

    def identify(self, offered: str) -> str | None:
        return self._by_digest.get(token_digest(offered))

    def identify_digest(self, digest: bytes) -> str | None:
        return self._by_digest.get(digest)

    def __contains__(self, worker_id: str) -> bool:
        return worker_id in self._ids
