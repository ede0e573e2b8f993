"""Named crash points for fault testing: ``SG_CRASH_AT=name[:n]`` kills this process with
SIGKILL the n-th time (default the first) the code passes ``crash_point(name)``.

Read once at import; with the variable unset, ``crash_point`` is one dict lookup. The points
are where a crash tests a promise (after a commit and before the send, after the send and
before the ack, mid-cancel); the fault harness sets the variable on the process it wants to
crash there and restarts it.
"""

from __future__ import annotations

import logging
import os
import signal

__all__ = ["POINTS", "crash_point"]

log = logging.getLogger(__name__)

POINTS = frozenset(
    {
        "scheduler.after_commit",
        "dispatcher.after_take",
        "dispatcher.after_send",
        "dispatcher.after_cancel_sent",
        "dispatcher.after_status_applied",
    }
)
"""Every crash point in the code, so that a misspelt ``SG_CRASH_AT`` fails loudly."""


def _parse(value: str) -> dict[str, int]:
    if not value:
        return {}
    name, _, nth = value.partition(":")
    if name not in POINTS:
        raise ValueError(f"SG_CRASH_AT: unknown crash point {name!r}; known: {sorted(POINTS)}")
    count = int(nth) if nth else 1
    if count < 1:
        raise ValueError(f"SG_CRASH_AT: the count must be >= 1, got {nth!r}")
    return {name: count}


_armed = _parse(os.environ.get("SG_CRASH_AT", ""))


def crash_point(name: str) -> None:
    """SIGKILL this process here if ``SG_CRASH_AT`` names this point and its count is reached."""
    left = _armed.get(name)
    if left is None:
        return
    if left > 1:
        _armed[name] = left - 1
        return
    log.warning("crash point %s reached: SIGKILL", name)
    os.kill(os.getpid(), signal.SIGKILL)
