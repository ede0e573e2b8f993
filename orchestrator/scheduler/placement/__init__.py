"""Placement: a pure function from one cycle's snapshot to decisions, and its explanations.

No I/O, deterministic for a given snapshot. The scheduler calls it through the ``Policy``
protocol; ``DefaultPolicy`` implements the federation's scheduling policy (ARCHITECTURE.md,
"Scheduling policy"). Hard constraints are checked here and again by the store's commit.

How a cycle works (``DefaultPolicy.place``):

1. **Shape keys.** Jobs that ask for the same thing (GPUs, type, CPUs, memory, allowed
   jurisdictions, excluded and preferred sites, tenant country, and the tenant itself only when
   a site names tenants or the tenant has per-jurisdiction quotas) share one key. Once per key
   and cycle: whether any registered site could ever run it (else it is unschedulable), whether
   it is "home" (its country is a home country of a site it could run at), and its candidate
   sites in static-score order (home, preferred, renewable share, carbon). Candidates come from
   a per-jurisdiction-set list sorted once by the score all jobs share (renewable and carbon);
   a key's few home and preferred sites go in front of it (or are spliced in by bisection when
   their bonuses do not outweigh every other site), so a key costs a C-level list copy at most,
   never a Python loop over the federation.
2. **Ordering.** Priority class (high first); within a class, home jobs first; then dominant
   resource fairness between tenants: a heap of tenants keyed by current dominant share, each
   with its own queue in (submit order, job id). Shares are updated as jobs are placed.
3. **Placing a job** moves its key's cursor past candidates that no longer fit (a cheap free
   capacity test first, the full checks after) and stops at the first that does. Within a
   cycle capacity, power headroom, surplus and quota only shrink, so a site passed over never
   fits that shape again. A key whose cursor runs off the end is exhausted: its waiting reason
   is worked out once (from its most informative site) and its later jobs wait without a scan.
4. **Packing (the one approximation).** A site's score is its static score + ``packing`` x the
   share of its GPUs of the type (CPUs for a CPU-only job) in use after placing. Rather than
   scoring every feasible site, the first feasible candidate is compared with at most
   ``DefaultPolicy.packing_lookahead`` (default 4) further candidates that pass the quick
   capacity test and whose static score leaves packing a chance to win; the best exact score
   among them wins, ties by site id. With that few contenders (small federations, or sites whose
   static scores differ by more than ``packing``) this is the exact maximum that ``explain``
   would rank first; with many near-equal sites, a fuller site further down can be missed.
5. **Preemption**, after the normal pass, for the jobs still waiting, in the order they were
   considered: see ``_Preemptor``.

Conventions: a job that adds nothing to a limit (a CPU-only job and GPU quotas, surplus or
power) is not stopped by that limit. A tenant's country is ``JobRequest.tenant_country``, or
its ``TenantView.country`` when that is empty. A non-positive weight counts as a tiny one.
"""

from __future__ import annotations

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
from orchestrator.scheduler.placement._policy import (
    DefaultPolicy,
    Policy,
    explain,
    never_reason,
    place,
)

__all__ = [
    "DefaultPolicy",
    "Explanation",
    "JobRequest",
    "Placed",
    "PlacementResult",
    "Policy",
    "Preemption",
    "Priority",
    "Reason",
    "RunningJob",
    "SitePolicy",
    "SiteVerdict",
    "SiteView",
    "Snapshot",
    "TenantView",
    "Weights",
    "explain",
    "never_reason",
    "place",
]
