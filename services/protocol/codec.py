"""Weights travel as raw little-endian float32 bytes (no JSON float lists): 4 bytes a parameter, nothing else.

The body's SHA-256 goes in a header, so a truncated or corrupted upload is refused instead of averaged.
"""

from __future__ import annotations

import hashlib

import numpy as np

from services.protocol.errors import HASH_MISMATCH, INVALID_UPDATE, NON_FINITE, ErrorCode

CONTENT_TYPE = "application/octet-stream"
WIRE_DTYPE = np.dtype("<f4")


class CodecError(ValueError):
    """The body is not a valid weight vector for this model; the message says why, ``error`` names it."""

    def __init__(self, error: ErrorCode, message: str):
        super().__init__(message)
        self.error = error


def encode_weights(flat: np.ndarray) -> bytes:
    return np.ascontiguousarray(flat, dtype=WIRE_DTYPE).tobytes()


def decode_weights(body: bytes, n_params: int, sha256: str | None = None, body_hash: str | None = None) -> np.ndarray:
    """Check size, hash and finiteness; return a float32 vector of ``n_params`` values. ``body_hash``: the body's
    SHA-256 if the caller has already computed it (hashing is most of the cost for large models)."""
    expected = n_params * WIRE_DTYPE.itemsize
    if len(body) != expected:
        raise CodecError(INVALID_UPDATE, f"weight body has {len(body)} bytes, the model needs {expected} "
                                         f"({n_params} float32 values)")
    if sha256 is not None and (body_hash or content_hash(body)) != sha256.lower():
        raise CodecError(HASH_MISMATCH, "weight body does not match its X-Content-SHA256 header "
                                        "(truncated or corrupted upload)")
    flat = np.frombuffer(body, dtype=WIRE_DTYPE).astype(np.float32)
    if not np.all(np.isfinite(flat)):
        raise CodecError(NON_FINITE, f"weight body holds {int(np.sum(~np.isfinite(flat)))} non-finite values "
                                     "(NaN or inf)")
    return flat


def content_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
