"""Build the placement model (``orchestrator.scheduler.model``) from the store's records.

Shared by the scheduler loop and the API's ``ExplainJob``, so that an explanation is computed
from exactly what a placement cycle sees.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.jurisdictions import expand
from orchestrator.scheduler.model import (
    JobRequest,
    Priority,
    RunningJob,
    SitePolicy,
    SiteView,
    Snapshot,
    TenantView,
    Weights,
)
from orchestrator.store import JobStore, RunningRecord, SiteRecord, TenantRecord

__all__ = [
    "job_request",
    "read_snapshot",
    "read_tenants",
    "running_job",
    "site_view",
    "tenant_view",
]


def job_request(
    job_id: str,
    attempt: int,
    spec: types_pb2.JobSpec,
    *,
    submit_order: float,
    tenants: Mapping[str, TenantView],
) -> JobRequest:
    """The placement view of a normalised spec (totals over its nodes, groups expanded)."""
    res = spec.resources
    nodes = max(res.nodes, 1)
    tenant_id = spec.tenant
    tenant = tenants.get(tenant_id)
    placement = spec.placement
    excluded = placement.excluded_sites
    preferred = placement.preferred_sites
    return JobRequest(
        job_id=job_id,
        attempt=attempt,
        tenant=tenant_id,
        priority=_PRIORITIES.get(spec.priority) or Priority(spec.priority),
        submit_order=submit_order,
        gpus=res.gpus * nodes,
        gpu_type=res.gpu_type,
        cpus=max(res.cpus, 1) * nodes,
        memory_mb=res.memory_mb * nodes,
        nodes=nodes,
        allowed_jurisdictions=_expanded(tuple(placement.allowed_jurisdictions)),
        # most jobs exclude and prefer no site: share the empty ones
        excluded_sites=frozenset(excluded) if excluded else _NO_SITES,
        preferred_sites=tuple(preferred) if preferred else (),
        tenant_country=tenant.country if tenant else "",
    )


_PRIORITIES = {int(p): p for p in Priority} | {0: Priority.NORMAL}
"""Priority of a spec's class (0, unset, is NORMAL): a lookup, not an enum call per job."""
_NO_SITES: frozenset[str] = frozenset()


@functools.lru_cache(maxsize=1024)
def _expanded(codes: tuple[str, ...]) -> frozenset[str]:
    """``expand(codes)``, once per distinct list: jobs name few of them, and expanding groups
    per job was a tenth of a busy scheduler's time."""
    return expand(codes)


def site_view(rec: SiteRecord, *, now: float, stale_after: float) -> SiteView:
    """A site accepts work when ACTIVE, connected and heard from within ``stale_after``."""
    site = rec.site
    fresh = rec.last_heartbeat is not None and now - rec.last_heartbeat <= stale_after
    accepting = rec.state == types_pb2.SITE_STATE_ACTIVE and bool(rec.connected_by) and fresh
    # the effective policy (base policy with the capacity offers that hold), as commit.lua
    # enforces it; a site recorded before offers existed has only its registration's
    policy = rec.policy if rec.policy is not None else site.policy
    return SiteView(
        site_id=site.id,
        jurisdiction=site.jurisdiction,
        accepting=accepting,
        total_gpus=rec.capacity_gpus,
        total_cpus=rec.capacity_cpus,
        total_memory_mb=rec.capacity_memory_mb,
        used_gpus=rec.used_gpus,
        used_cpus=rec.used_cpus,
        used_memory_mb=rec.used_memory_mb,
        gpu_watts={pool.type: pool.watts for pool in site.gpus if pool.watts},
        power_cap_watts=int(site.power_cap_mw * 1_000_000) if site.power_cap_mw > 0 else None,
        used_watts=rec.used_watts,
        home_countries=frozenset(site.home_countries),
        policy=SitePolicy(
            allowed_tenant_countries=frozenset(policy.allowed_tenant_countries),
            allowed_tenants=frozenset(policy.allowed_tenants),
            surplus_gpus=policy.surplus_gpus if policy.has_surplus_limit else None,
        ),
        used_gpus_nonhome=rec.used_gpus_nonhome,
        renewable_share=site.renewable_share,
        carbon_intensity=site.carbon_intensity,
        releasing_gpus=rec.releasing_gpus or {},
        releasing_cpus=rec.releasing_cpus,
        releasing_memory_mb=rec.releasing_memory_mb,
        releasing_watts=rec.releasing_watts,
    )


def tenant_view(rec: TenantRecord) -> TenantView:
    """The placement view of a tenant."""
    t = rec.tenant
    return TenantView(
        tenant=t.id,
        country=t.country,
        weight=t.weight or 1.0,
        quota_gpus=t.quota_gpus if t.has_quota_gpus else None,
        quota_gpus_by_jurisdiction=dict(t.quota_gpus_by_jurisdiction),
        used_gpus=rec.used_gpus,
        used_gpus_by_jurisdiction=rec.used_gpus_by_jurisdiction,
        used_cpus=rec.used_cpus,
        used_memory_mb=rec.used_memory_mb,
    )


def running_job(rec: RunningRecord) -> RunningJob:
    """The placement view of a preemptible (SURPLUS-class) running job."""
    return RunningJob(
        job_id=rec.job_id,
        attempt=rec.attempt,
        tenant=rec.tenant,
        site_id=rec.site,
        priority=Priority.SURPLUS,
        gpu_type=rec.gpu_type,
        gpus=rec.gpus,
        cpus=rec.cpus,
        memory_mb=rec.memory_mb,
        watts=rec.watts,
        home_at_site=not rec.nonhome,
        last_preempted_at=rec.preempted_at,
    )


async def read_snapshot(
    store: JobStore,
    jobs: Sequence[JobRequest],
    *,
    tenants: Mapping[str, TenantView],
    stale_after: float,
    preemption_window_seconds: float,
    weights: Weights | None = None,
    with_running: bool = True,
    records: Sequence[SiteRecord] | None = None,
    running: Sequence[RunningRecord] | None = None,
) -> Snapshot:
    """Sites (``records``, else read now), tenants and (optionally) preemption candidates
    (``running``, else read now)."""
    now = time.time()
    if records is None:
        records = await store.site_records()
    sites = [site_view(rec, now=now, stale_after=stale_after) for rec in records]
    candidates: list[RunningJob] = []
    if with_running:
        if running is None:
            running = await store.surplus_running()
        candidates = [running_job(r) for r in running]
    return Snapshot(
        jobs=jobs,
        sites=sites,
        tenants=tenants,
        running=candidates,
        now=now,
        preemption_window_seconds=preemption_window_seconds,
        weights=weights or Weights(),
    )


async def read_tenants(store: JobStore) -> dict[str, TenantView]:
    """Every tenant's placement view, by id."""
    return {r.tenant.id: tenant_view(r) for r in await store.tenant_records()}
