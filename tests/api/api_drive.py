"""Test helpers: a site registration, and driving a job as the scheduler and an agent would."""

from __future__ import annotations

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.states import JobState
from orchestrator.store import Decision, JobStore, StatusReport


def site_pb(site_id: str = "narvik", *, endpoint: str = "127.0.0.1:1") -> types_pb2.Site:
    site = types_pb2.Site(
        id=site_id,
        name=site_id.title(),
        jurisdiction="NO",
        cpus=64,
        memory_mb=65536,
        endpoint=endpoint,
    )
    site.gpus.add(type="H100", count=8)
    return site


async def place(store: JobStore, job_id: str, site: str = "narvik") -> None:
    """Drive a PENDING job to DISPATCHED at ``site``, as the scheduler and dispatcher would."""
    job = await store.get_job(job_id)
    assert await store.commit([Decision(job_id, job.attempt, site)]) == ["ok"]
    taken = await store.take_outbox(site, limit=100, resend=False)
    assert job_id in [a.job_id for a in taken]


async def finish(
    store: JobStore, job_id: str, state: JobState, *, exit_code: int = 0, site: str = "narvik"
) -> None:
    """Report a dispatched job RUNNING, then ``state``, as its agent would."""
    job = await store.get_job(job_id)
    await store.apply_status(site, [StatusReport(job_id, job.attempt, JobState.RUNNING)])
    report = StatusReport(job_id, job.attempt, state, exit_code=exit_code, message="done")
    assert await store.apply_status(site, [report]) == ["ok"]
