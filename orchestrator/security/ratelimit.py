"""Per-key token-bucket rate limiting, in bounded memory.

Each key (a principal's name, say) has a bucket of ``burst`` tokens refilled at
``rate_per_second``; a call takes one token. Over any interval of ``t`` seconds a key is granted
at most ``burst + rate_per_second * t`` calls. At most ``max_keys`` buckets are kept: beyond
that the least recently used is forgotten (and starts full if its key comes back).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from orchestrator.errors import InvalidSpecError

__all__ = ["RateLimiter"]

# Tokens short of a whole one that still count as whole: a caller that waits exactly the time
# acquire() told it must not be refused over a rounding error.
_EPSILON = 1e-9


class RateLimiter:
    """Token buckets keyed by caller; see the module docstring."""

    def __init__(self, rate_per_second: float, burst: int, *, max_keys: int = 100_000) -> None:
        if not rate_per_second > 0:  # also refuses NaN
            raise InvalidSpecError("rate_per_second", "must be positive")
        if burst < 1:
            raise InvalidSpecError("burst", "must be at least 1")
        if max_keys < 1:
            raise InvalidSpecError("max_keys", "must be at least 1")
        self.rate = float(rate_per_second)
        """Tokens added to each bucket per second."""
        self.burst = burst
        """Most tokens a bucket holds."""
        self.max_keys = max_keys
        """Most buckets kept."""
        # key -> [tokens, time of last refill]; most recently used last.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Buckets kept now."""
        return len(self._buckets)

    def acquire(self, key: str, now: float | None = None) -> float:
        """Take a token from ``key``'s bucket: 0.0 when granted, else the seconds until one
        will be free (nothing is taken then). ``now`` is a monotonic time in seconds."""
        t = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = [float(self.burst), t]
                self._buckets[key] = bucket
                while len(self._buckets) > self.max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                tokens, last = bucket
                if t > last:  # a clock that went back refills nothing
                    bucket[0] = min(float(self.burst), tokens + (t - last) * self.rate)
                    bucket[1] = t
            if bucket[0] >= 1.0 - _EPSILON:
                bucket[0] -= 1.0
                return 0.0
            return max((1.0 - bucket[0]) / self.rate, _EPSILON)
