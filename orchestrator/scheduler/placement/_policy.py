"""The policy: ``DefaultPolicy`` (place, explain) and the module-level functions.

Part of ``orchestrator.scheduler.placement``; see its docstring for how a cycle works.
"""

from __future__ import annotations

import gc
import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from orchestrator.scheduler.model import (
    Explanation,
    JobRequest,
    Placed,
    PlacementResult,
    Preemption,
    Reason,
    SiteVerdict,
    SiteView,
    Snapshot,
    TenantView,
    Weights,
)
from orchestrator.scheduler.placement._checks import _fit, _packing, _static_score
from orchestrator.scheduler.placement._cycle import _choose, _Cycle, _why
from orchestrator.scheduler.placement._messages import _detail, _never_sentence, _quota_short
from orchestrator.scheduler.placement._preempt import _Preemptor
from orchestrator.scheduler.placement._state import (
    _REASONS,
    _country,
    _Key,
    _releasing,
    _sites,
    _Tenant,
)


class Policy(Protocol):
    """A placement policy: pure, deterministic, no I/O."""

    def place(self, snapshot: Snapshot) -> PlacementResult:
        """Decide placements, preemptions and waiting reasons for one cycle."""
        ...

    def explain(self, job: JobRequest, snapshot: Snapshot) -> Explanation:
        """Every site's verdict on ``job`` as the snapshot stands (nothing placed this cycle)."""
        ...


@dataclass(frozen=True, slots=True)
class DefaultPolicy:
    """The federation's scheduling policy (see the module docstring)."""

    packing_lookahead: int = 4
    """Most feasible sites after the first one compared on exact score (packing); 0 turns the
    packing term into a pure reporting term (first feasible site by static score wins)."""
    pause_gc: bool = True
    """Pause Python's cyclic garbage collector while a cycle runs. A cycle allocates tens of
    thousands of short-lived objects but no reference cycles, and the full collections those
    allocations trigger walk the whole heap (the snapshot, and whatever else the process holds):
    on a busy scheduler that can cost more than the cycle itself. The collector's previous state
    is restored afterwards; results do not depend on this."""

    def place(self, snapshot: Snapshot) -> PlacementResult:
        """Decide one cycle: placements, preemptions, unschedulable jobs and waiting reasons."""
        if not (self.pause_gc and gc.isenabled()):
            return self._place(snapshot)
        gc.disable()
        try:
            return self._place(snapshot)
        finally:
            gc.enable()

    def _place(self, snapshot: Snapshot) -> PlacementResult:
        cyc = _Cycle(snapshot)
        unschedulable: list[tuple[str, int, str]] = []
        tiers = _queue(cyc, snapshot.jobs, unschedulable)
        decisions: list[Placed] = []
        waiting: dict[str, str] = {}
        left: list[tuple[JobRequest, _Key, _Tenant]] = []
        pw = snapshot.weights.packing
        lookahead = self.packing_lookahead
        heappop, heapreplace = heapq.heappop, heapq.heapreplace
        reshare = cyc.reshare
        tenants = cyc.tenants
        for tier in sorted(tiers, key=lambda pk: (-pk[0], not pk[1])):
            queues = tiers[tier]
            heap = []
            for name, q in queues.items():
                q.sort(reverse=True)
                heap.append((tenants[name].share, q[-1][0], q[-1][1], name))
            heapq.heapify(heap)
            while heap:
                name = heap[0][3]
                q = queues[name]
                entry = q.pop()
                job, k = entry[3], entry[4]
                t = tenants[name]
                gpus = k.gpus
                if gpus and t.quota_room is not None and gpus > t.quota_room:
                    waiting[job.job_id] = _quota_short(t)
                elif k.dead:
                    waiting[job.job_id] = k.wait_text
                    left.append((job, k, t))
                elif (found := _choose(k, t, pw, lookahead)) is None:
                    k.dead = True
                    k.wait_text = waiting[job.job_id] = _why(k, t)
                    left.append((job, k, t))
                else:
                    score, s, gt = found
                    draw = 0
                    if gpus:
                        s.free[gt] -= gpus
                        draw = gpus * s.watts.get(gt, 0)
                        s.power_room -= draw
                        s.refresh()
                        if s.surplus_room is not None and k.country not in s.home:
                            s.surplus_room -= gpus
                        t.gpus += gpus
                        if t.quota_room is not None:
                            t.quota_room -= gpus
                        if s.jurisdiction in t.jq_room:
                            t.jq_room[s.jurisdiction] -= gpus
                    s.free_cpus -= k.cpus
                    s.free_mem -= k.mem
                    t.cpus += k.cpus
                    t.mem += k.mem
                    reshare(t)
                    decisions.append(Placed(job.job_id, job.attempt, s.site_id, gt, draw, score))
                if q:
                    head = q[-1]
                    heapreplace(heap, (t.share, head[0], head[1], name))
                else:
                    heappop(heap)
        preemptions: list[Preemption] = []
        if left and (snapshot.running or any(map(_releasing, snapshot.sites))):
            _Preemptor(cyc, snapshot, preemptions, waiting).run(left)
        return PlacementResult(decisions, preemptions, unschedulable, waiting)

    def explain(self, job: JobRequest, snapshot: Snapshot) -> Explanation:
        """Every site's verdict on ``job`` now: feasible ones by score, then the rest by id."""
        w = snapshot.weights
        sites = _sites(snapshot.sites, w)
        t = _Tenant(job.tenant, snapshot.tenants.get(job.tenant))
        k = _Key(job, _country(job, t))
        feasible: list[SiteVerdict] = []
        others: list[SiteVerdict] = []
        for s in sites:
            r = _fit(s, k, t)
            if isinstance(r, str):
                score = _static_score(s, k, w) + w.packing * _packing(s, k, r)
                what = f" on {r}" if r else ""
                feasible.append(
                    SiteVerdict(s.site_id, Reason.FEASIBLE, f"score {score:.1f}{what}", score)
                )
            else:
                others.append(SiteVerdict(s.site_id, _REASONS[r], _detail(r, s, k, t)))
        feasible.sort(key=lambda v: (-(v.score or 0.0), v.site_id))
        others.sort(key=lambda v: v.site_id)
        return Explanation(job.job_id, feasible + others, _never_sentence(job, k, t, sites))


_Queued = tuple[float, str, int, JobRequest, _Key]


def _queue(
    cyc: _Cycle, jobs: Sequence[JobRequest], unschedulable: list[tuple[str, int, str]]
) -> dict[tuple[int, bool], dict[str, list[_Queued]]]:
    """The window by (class, home) tier and tenant; jobs no site could ever run go to
    ``unschedulable`` instead."""
    tenant = cyc.tenant
    known = cyc.tenants
    keys: dict[tuple[object, ...], _Key] = {}
    never_text: dict[tuple[_Key, str], str] = {}
    tiers: dict[tuple[int, bool], dict[str, list[_Queued]]] = {}
    for idx, job in enumerate(jobs):
        t = known.get(job.tenant) or tenant(job.tenant)
        country = job.tenant_country or t.country
        gpus = job.gpus
        key = (
            gpus,
            job.gpu_type if gpus > 0 else "",
            job.cpus,
            job.memory_mb,
            job.allowed_jurisdictions,
            job.excluded_sites,
            job.preferred_sites,
            country,
            t.tag,
        )
        k = keys.get(key)
        if k is None:
            k = keys[key] = cyc.new_key(job, country, t)
        if k.never or (gpus > 0 and t.quota is not None and gpus > t.quota):
            reason = never_text.get((k, job.tenant))
            if reason is None:
                reason = _never_sentence(job, k, t, cyc.sites) or "no site can ever run it"
                never_text[(k, job.tenant)] = reason
            unschedulable.append((job.job_id, job.attempt, reason))
            continue
        queue = tiers.setdefault((job.priority, k.home), {}).setdefault(job.tenant, [])
        queue.append((job.submit_order, job.job_id, idx, job, k))
    return tiers


_DEFAULT = DefaultPolicy()


def place(snapshot: Snapshot) -> PlacementResult:
    """Place with the default policy."""
    return _DEFAULT.place(snapshot)


def explain(job: JobRequest, snapshot: Snapshot) -> Explanation:
    """Explain ``job`` with the default policy."""
    return _DEFAULT.explain(job, snapshot)


def never_reason(
    job: JobRequest,
    sites: Sequence[SiteView],
    tenants: Mapping[str, TenantView] | None = None,
) -> str | None:
    """Why no registered site could ever run ``job`` (even empty and accepting), or None.

    Site state and current usage are ignored; residency, exclusions, site policy, GPU type and
    size, and the job alone against a site's power cap, its surplus offer (for a non-home
    tenant) and the tenant's quotas are not.
    """
    w = Weights()
    t = _Tenant(job.tenant, (tenants or {}).get(job.tenant))
    k = _Key(job, _country(job, t))
    return _never_sentence(job, k, t, _sites(sites, w))
