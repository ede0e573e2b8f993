"""Load the Lua scripts in ``lua/``, each prefixed with the shared helpers in ``_lib.lua``."""

from __future__ import annotations

from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

__all__ = ["SCRIPT_NAMES", "Scripts"]

SCRIPT_NAMES = (
    "submit",
    "commit",
    "take_outbox",
    "ack",
    "status",
    "cancel",
    "mark_unschedulable",
    "reconsider",
    "register_site",
    "set_site_state",
    "preempt",
    "put_tenant",
    "note_waiting",
    "seen",
    "lose_site",
    "reconcile",
    "apply_policy",
    "withdraw",
    "usage",
    "read_pending",
    "site_rows",
    "cycle_view",
)


def _source(name: str) -> str:
    return (resources.files("orchestrator.store") / "lua" / f"{name}.lua").read_text()


class Scripts:
    """The registered scripts of one Redis client; call as ``await scripts.run(name, args)``."""

    def __init__(self, client: Redis) -> None:
        lib = _source("_lib")
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(lib + "\n" + _source(name)) for name in SCRIPT_NAMES
        }

    async def run(self, name: str, args: list[Any]) -> Any:
        """Run script ``name`` with ARGV ``args`` (no KEYS: scripts build them from the prefix)."""
        return await self._scripts[name](keys=[], args=args)
