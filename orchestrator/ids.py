"""Job ids: short, URL-safe, and sortable by creation time.

Within one process ids are strictly increasing (monotonic, as ULIDs are): a second id in the same
millisecond takes the previous random part plus one. Across API replicas, ids sort by
millisecond.
"""

from __future__ import annotations

import secrets
import threading
import time

__all__ = ["new_job_id"]

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_RAND_BITS = 30
_lock = threading.Lock()
_last = (0, 0)


def _b32(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        value, rem = divmod(value, 32)
        out.append(_ALPHABET[rem])
    return "".join(reversed(out))


def new_job_id(now: float | None = None) -> str:
    """A new id such as ``j-01jc3k9x7m-4f9d2q``: millisecond time, then 30 random bits."""
    global _last
    ms = int((time.time() if now is None else now) * 1000)
    with _lock:
        last_ms, last_rand = _last
        if ms <= last_ms:
            ms, rand = last_ms, last_rand + 1
            if rand >= 1 << _RAND_BITS:
                ms, rand = last_ms + 1, secrets.randbits(_RAND_BITS - 1)
        else:
            rand = secrets.randbits(_RAND_BITS - 1)  # leave room to count up within the ms
        _last = (ms, rand)
    return f"j-{_b32(ms, 10)}-{_b32(rand, 6)}"
