"""Job ids: short, URL-safe, and sortable by creation time."""

from __future__ import annotations

import secrets
import time

__all__ = ["new_job_id"]

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _b32(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        value, rem = divmod(value, 32)
        out.append(_ALPHABET[rem])
    return "".join(reversed(out))


def new_job_id(now: float | None = None) -> str:
    """A new id such as ``j-01jc3k9x7m-4f9d2q``: millisecond time, then 30 random bits."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"j-{_b32(ms, 10)}-{_b32(secrets.randbits(30), 6)}"
