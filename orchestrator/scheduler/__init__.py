"""Placement: the pure placement function and the scheduler loop that runs it."""

from orchestrator.scheduler.placement import (
    FirstFit,
    JobRequest,
    PlacementResult,
    Policy,
    SiteView,
    Snapshot,
    never_reason,
    place,
)
from orchestrator.scheduler.scheduler import CycleStats, Scheduler

__all__ = [
    "CycleStats",
    "FirstFit",
    "JobRequest",
    "PlacementResult",
    "Policy",
    "Scheduler",
    "SiteView",
    "Snapshot",
    "never_reason",
    "place",
]
