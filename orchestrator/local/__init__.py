"""The embedded default (``sgctl up``): everything on one machine with no configuration."""

from orchestrator.local.state import UpState, pid_alive, read_state, state_path, write_state

__all__ = ["UpState", "pid_alive", "read_state", "state_path", "write_state"]
