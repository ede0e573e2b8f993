"""Child processes of the control plane's own (redis-server, demo agents, the supervisor)."""

from __future__ import annotations

import os
import subprocess

__all__ = ["pid_alive", "stop_process"]


def stop_process(proc: subprocess.Popen[bytes], *, timeout: float) -> None:
    """SIGTERM ``proc``, wait up to ``timeout`` seconds, then SIGKILL it (no-op if it ended)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
