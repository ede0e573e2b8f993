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


class _Clock:
    """The last (millisecond, random part) handed out, to keep ids increasing."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last_ms = 0
        self.last_rand = 0

    def next(self, ms: int) -> tuple[int, int]:
        with self.lock:
            if ms <= self.last_ms:
                ms, rand = self.last_ms, self.last_rand + 1
                if rand >= 1 << _RAND_BITS:
                    ms, rand = self.last_ms + 1, secrets.randbits(_RAND_BITS - 1)
            else:
                rand = secrets.randbits(_RAND_BITS - 1)  # room to count up within the ms
            self.last_ms, self.last_rand = ms, rand
            return ms, rand


_clock = _Clock()


def _b32(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        value, rem = divmod(value, 32)
        out.append(_ALPHABET[rem])
    return "".join(reversed(out))


def new_job_id(now: float | None = None) -> str:
    """A new id such as ``j-01jc3k9x7m-4f9d2q``: millisecond time, then 30 random bits."""
    ms, rand = _clock.next(int((time.time() if now is None else now) * 1000))
    return f"j-{_b32(ms, 10)}-{_b32(rand, 6)}"
