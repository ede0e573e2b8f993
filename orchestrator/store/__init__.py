"""The queue store on Redis: key schema, Lua transitions, and the embedded server."""

from orchestrator.store.keys import Keys
from orchestrator.store.redis_server import LocalRedis, find_redis_server, free_port
from orchestrator.store.store import (
    Ack,
    Assignment,
    Decision,
    JobStore,
    PendingRef,
    RunningRecord,
    SiteRecord,
    StatusReport,
    TenantRecord,
    Victim,
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
    "RunningRecord",
    "SiteRecord",
    "StatusReport",
    "TenantRecord",
    "Victim",
    "find_redis_server",
    "free_port",
    "pending_score",
]
