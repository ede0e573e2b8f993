"""Why is this job pending, or why did it land where it did: for ``ExplainJob``/``sgctl explain``.

Computed with the same snapshot builder and policy as a placement cycle, so the answer is what
the scheduler would decide now, per site.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.config import SchedulerConfig
from orchestrator.scheduler.model import Explanation
from orchestrator.scheduler.placement import DefaultPolicy, Policy
from orchestrator.scheduler.snapshot import job_request, read_snapshot, read_tenants
from orchestrator.states import JobState
from orchestrator.store import JobStore, pending_score

__all__ = ["JobExplanation", "explain_job"]


@dataclass(frozen=True)
class JobExplanation:
    """A job, every site's verdict on it, and its place in its queue."""

    job: types_pb2.Job
    explanation: Explanation
    queue_position: int
    queue_length: int
    summary: str


async def explain_job(
    store: JobStore,
    job_id: str,
    *,
    config: SchedulerConfig | None = None,
    policy: Policy | None = None,
) -> JobExplanation:
    """Explain one job against the store as it is now. Raises ``JobNotFoundError``."""
    config = config or SchedulerConfig()
    job = await store.get_job(job_id)
    tenants = await read_tenants(store)
    submit_ms = job.created_at.ToMilliseconds()
    request = job_request(
        job.id,
        job.attempt,
        job.spec,
        submit_order=pending_score(job.spec.priority, submit_ms),
        tenants=tenants,
    )
    snapshot = await read_snapshot(
        store,
        [request],
        tenants=tenants,
        stale_after=config.site_stale_after_seconds,
        preemption_window_seconds=config.preemption_window_seconds,
        weights=config.weights,
        with_running=False,
    )
    explanation = (policy or DefaultPolicy()).explain(request, snapshot)
    state = JobState(job.state)
    position, length = (0, 0)
    if state is JobState.PENDING:
        position, length = await store.queue_position(job)
        if explanation.unschedulable:
            summary = f"pending and unschedulable: {explanation.unschedulable}"
        else:
            where = f"position {position} of {length} in queue {job.spec.queue!r}"
            summary = f"pending ({job.reason or 'waiting for placement'}); {where}"
    elif state.is_terminal():
        summary = f"{state.name.lower()} on {job.site or 'no site'}: {job.reason}"
    else:
        summary = f"{state.name.lower()} on {job.site}"
    return JobExplanation(job, explanation, position, length, summary)
