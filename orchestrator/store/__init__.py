"""The queue store on Redis: key schema, Lua transitions, and the embedded server."""

from orchestrator.store.keys import Keys
from orchestrator.store.redis_server import LocalRedis, find_redis_server, free_port
from orchestrator.store.store import (
    Ack,
    Assignment,
    Decision,
    JobStore,
    PendingRef,
    SiteRecord,
    StatusReport,
    pending_score,
)

__all__ = [
    "Ack",
    "Assignment",
    "Decision",
    "JobStore",
    "Keys",
    "LocalRedis",
    "PendingRef",
    "SiteRecord",
    "StatusReport",
    "find_redis_server",
    "free_port",
    "pending_score",
]
