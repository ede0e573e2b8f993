"""The embedded default's state file (``<state dir>/up.json``): where things run, for the CLI."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.processes import pid_alive

__all__ = ["UpState", "pid_alive", "read_state", "state_path", "write_state"]

STATE_FILE = "up.json"


@dataclass(frozen=True)
class UpState:
    """What ``sgctl up`` started."""

    pid: int
    """The supervisor process (its process group holds everything it started)."""
    api: str
    """Address of the API server."""
    redis_url: str
    """The queue store (any password masked)."""
    state_dir: str
    """Absolute state dir."""
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Site id -> {"pid", "endpoint"} of each demo agent."""
    redis_pid: int | None = None
    """The embedded redis-server, if this started one."""
    ca: str = ""
    """CA certificate (PEM) the API's and agents' certificates chain to; "" when insecure."""
    token_file: str = ""
    """The operator token ``sgctl up`` issued (a file readable by its owner only)."""


def state_path(state_dir: Path) -> Path:
    """Path of the state file in ``state_dir``."""
    return state_dir / STATE_FILE


def write_state(state_dir: Path, state: UpState) -> None:
    """Write atomically (a reader never sees half a file)."""
    path = state_path(state_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(path)


def read_state(state_dir: Path) -> UpState | None:
    """The state file's content, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(state_path(state_dir).read_text())
        return UpState(**data)
    except (OSError, ValueError, TypeError):
        return None
