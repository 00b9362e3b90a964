"""Worker bearer tokens. The aggregator keeps only their SHA-256 and compares digests in constant time.

Why plain SHA-256 and not a slow password hash: the tokens are random machine secrets (``make`` writes 24 random
bytes), not passwords a person picks, so there is nothing for a dictionary attack to guess; a fast hash lets the
aggregator check every request without a per-request key-stretching cost (GitHub stores its tokens the same way).
Use tokens of at least 16 random bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from services.config import hash_token as hash_token  # the digest rule lives with token_sha256, in the config


def new_token() -> str:
    return secrets.token_hex(24)


class TokenTable:
    """Worker id by token: hashes the offered token once, compares it with every stored digest (no early exit,
    so the time taken says nothing about which digest, or how much of one, matched)."""

    def __init__(self, digests: dict[str, str]):
        self._digests = {worker: bytes.fromhex(d) for worker, d in digests.items()}

    @classmethod
    def from_settings(cls, workers) -> TokenTable:
        return cls({w.id: w.token_sha256 or hash_token(w.token) for w in workers})

    def identify(self, offered: str) -> str | None:
        digest = hashlib.sha256(offered.encode()).digest()
        found = None
        for worker, stored in self._digests.items():
            if hmac.compare_digest(digest, stored) and found is None:
                found = worker
        return found
