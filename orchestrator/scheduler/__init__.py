"""Placement: the pure policy (``place``, ``explain``), its data model, and the scheduler loop."""

from orchestrator.scheduler.explain import JobExplanation, explain_job
from orchestrator.scheduler.model import (
    Explanation,
    JobRequest,
    Placed,
    PlacementResult,
    Preemption,
    Priority,
    Reason,
    RunningJob,
    SitePolicy,
    SiteVerdict,
    SiteView,
    Snapshot,
    TenantView,
    Weights,
)
from orchestrator.scheduler.placement import DefaultPolicy, Policy, explain, never_reason, place
from orchestrator.scheduler.scheduler import CycleStats, Scheduler

__all__ = [
    "CycleStats",
    "DefaultPolicy",
    "Explanation",
    "JobExplanation",
    "JobRequest",
    "Placed",
    "PlacementResult",
    "Policy",
    "Preemption",
    "Priority",
    "Reason",
    "RunningJob",
    "Scheduler",
    "SitePolicy",
    "SiteVerdict",
    "SiteView",
    "Snapshot",
    "TenantView",
    "Weights",
    "explain",
    "explain_job",
    "never_reason",
    "place",
]
