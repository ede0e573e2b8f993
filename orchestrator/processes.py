"""Child processes of the control plane's own (redis-server, demo agents, the supervisor), and
of the benchmarks and fault tests that start it as processes.

``stop_process`` is the one way a child is stopped: ask (SIGTERM, or another signal), wait a
grace period, then SIGKILL and reap. Every caller needs the same three steps and the same care
(a process that already ended is not signalled again, one that ignores the request is still
gone afterwards, and none is left a zombie), so they are written once.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

__all__ = ["pid_alive", "stop_process"]


def stop_process(
    proc: subprocess.Popen[Any],
    *,
    timeout: float,
    first: signal.Signals = signal.SIGTERM,
) -> int:
    """Send ``first`` (SIGTERM) to ``proc``, wait up to ``timeout`` seconds for it to exit, then
    SIGKILL it and wait until it has; no signal if it already ended. Returns its exit status.

    ``first=signal.SIGKILL`` kills at once (a crash, as fault tests make them); the wait then
    only reaps it.
    """
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(first)  # a no-op for a process that ended meanwhile
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie we could reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True
