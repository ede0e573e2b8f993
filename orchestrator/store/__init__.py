"""The queue store on Redis: key schema, Lua transitions, and the embedded server."""

from orchestrator.store.epoch import EpochGuard, Rollback
from orchestrator.store.keys import Keys
from orchestrator.store.redis_server import LocalRedis, find_redis_server, free_port
from orchestrator.store.store import (
    MAX_SUBMIT_BATCH,
    Ack,
    Assignment,
    CycleView,
    Decision,
    HeldAttempt,
    JobStore,
    PendingJob,
    PendingRef,
    Reconciliation,
    RunningRecord,
    SiteRecord,
    SiteWork,
    StatusReport,
    Submitted,
    TenantRecord,
    Victim,
    pending_score,
)

__all__ = [
    "MAX_SUBMIT_BATCH",
    "Ack",
    "Assignment",
    "CycleView",
    "Decision",
    "EpochGuard",
    "HeldAttempt",
    "JobStore",
    "Keys",
    "LocalRedis",
    "PendingJob",
    "PendingRef",
    "Reconciliation",
    "Rollback",
    "RunningRecord",
    "SiteRecord",
    "SiteWork",
    "StatusReport",
    "Submitted",
    "TenantRecord",
    "Victim",
    "find_redis_server",
    "free_port",
    "pending_score",
]
