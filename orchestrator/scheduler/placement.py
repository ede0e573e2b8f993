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

import gc
import heapq
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

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


class Policy(Protocol):
    """A placement policy: pure, deterministic, no I/O."""

    def place(self, snapshot: Snapshot) -> PlacementResult:
        """Decide placements, preemptions and waiting reasons for one cycle."""
        ...

    def explain(self, job: JobRequest, snapshot: Snapshot) -> Explanation:
        """Every site's verdict on ``job`` as the snapshot stands (nothing placed this cycle)."""
        ...


# Reason codes in verdict order: a site's reason is the first check it fails.
_STATE, _EXCLUDED, _RESIDENCY, _POLICY, _GPU_TYPE, _TOO_LARGE = 0, 1, 2, 3, 4, 5
_QUOTA, _SURPLUS, _POWER, _CAPACITY = 6, 7, 8, 9
_REASONS = (
    Reason.STATE,
    Reason.EXCLUDED,
    Reason.RESIDENCY,
    Reason.POLICY,
    Reason.GPU_TYPE,
    Reason.TOO_LARGE,
    Reason.QUOTA,
    Reason.SURPLUS,
    Reason.POWER,
    Reason.CAPACITY,
)
# How much a failure tells a waiting job's owner (higher wins): a full site beats a power cap,
# beats surplus, quota, a site that is down, and static misfits, which explain nothing.
_RANK = (5, 0, 0, 1, 2, 3, 6, 7, 8, 9)
_NO_LIMIT = 1 << 62
_MIN_WEIGHT = 1e-9
_MAX_NAMES = 8


# --------------------------------------------------------------------------- per-cycle state


class _Site:
    """A site's mutable state for one cycle (free capacity shrinks as jobs are placed)."""

    __slots__ = (
        "accepting",
        "allow_countries",
        "allow_tenants",
        "avail",
        "base",
        "cap",
        "free",
        "free_cpus",
        "free_mem",
        "home",
        "jurisdiction",
        "max_avail",
        "max_pool",
        "order",
        "power_room",
        "restricted",
        "site_id",
        "surplus_limit",
        "surplus_room",
        "total",
        "total_cpus",
        "total_mem",
        "types",
        "view",
        "watts",
    )

    def __init__(self, v: SiteView, w: Weights) -> None:
        self.view = v
        self.site_id = v.site_id
        self.jurisdiction = v.jurisdiction
        self.accepting = v.accepting
        total = self.total = v.total_gpus
        used = v.used_gpus
        if total:
            self.types = sorted([t for t, n in total.items() if n > 0])
            self.max_pool = max(total.values())
            self.free = {t: n - used.get(t, 0) for t, n in total.items()}
        else:
            self.types, self.max_pool, self.free = [], 0, {}
        self.total_cpus = v.total_cpus
        self.total_mem = v.total_memory_mb
        self.free_cpus = v.total_cpus - v.used_cpus
        self.free_mem = v.total_memory_mb - v.used_memory_mb
        self.watts = v.gpu_watts
        cap = self.cap = v.power_cap_watts
        self.power_room = _NO_LIMIT if cap is None else cap - v.used_watts
        home = self.home = v.home_countries
        pol = v.policy
        self.allow_countries = pol.allowed_tenant_countries
        self.allow_tenants = pol.allowed_tenants
        self.restricted = bool(pol.allowed_tenant_countries or pol.allowed_tenants)
        limit = self.surplus_limit = pol.surplus_gpus if home else None
        self.surplus_room = None if limit is None else limit - v.used_gpus_nonhome
        self.base = w.renewable * v.renewable_share - w.carbon * v.carbon_intensity
        self.order = 0
        self.avail: dict[str, int]
        self.max_avail: int
        self.refresh()

    def refresh(self) -> None:
        """Recompute ``avail``: GPUs of each type that capacity and power headroom both allow
        (a quick test that spares the full checks for sites that cannot fit a job)."""
        if self.cap is None:
            avail = self.avail = self.free
        else:
            room = self.power_room
            watts = self.watts
            avail = {
                t: min(n, room // watts[t]) if watts.get(t) else n for t, n in self.free.items()
            }
            self.avail = avail
        self.max_avail = max(avail.values()) if avail else 0


class _Tenant:
    """A tenant's mutable state for one cycle: quota headroom and usage for fair share."""

    __slots__ = (
        "country",
        "cpus",
        "gpus",
        "jq",
        "jq_room",
        "mem",
        "name",
        "quota",
        "quota_room",
        "share",
        "tag",
        "weight",
    )

    def __init__(self, name: str, v: TenantView | None) -> None:
        v = v or TenantView(name)
        self.name = name
        self.country = v.country
        self.weight = max(v.weight, _MIN_WEIGHT)
        self.quota = v.quota_gpus
        self.quota_room = None if v.quota_gpus is None else v.quota_gpus - v.used_gpus
        self.jq = v.quota_gpus_by_jurisdiction
        self.jq_room = {
            j: q - v.used_gpus_by_jurisdiction.get(j, 0)
            for j, q in v.quota_gpus_by_jurisdiction.items()
        }
        self.gpus = v.used_gpus
        self.cpus = v.used_cpus
        self.mem = v.used_memory_mb
        self.share = 0.0
        self.tag = name
        """The tenant in its jobs' keys, or "" when no site rule or quota singles it out."""


class _Key:
    """One job shape (see the module docstring) and its cursor over candidate sites."""

    __slots__ = (
        "allowed",
        "country",
        "cpus",
        "ctx",
        "dead",
        "excluded",
        "gpu_type",
        "gpus",
        "home",
        "mem",
        "never",
        "pos",
        "preempt",
        "preferred",
        "skip",
        "wait_text",
    )

    def __init__(self, job: JobRequest, country: str) -> None:
        self.gpus = max(job.gpus, 0)
        self.gpu_type = job.gpu_type if self.gpus else ""
        self.cpus = job.cpus
        self.mem = job.memory_mb
        self.allowed = job.allowed_jurisdictions
        self.excluded = job.excluded_sites
        self.preferred = frozenset(job.preferred_sites)
        self.country = country
        self.ctx: list[_Entry] = []
        """Candidate sites, best static score first; shared between keys, never mutated."""
        self.pos = 0
        """Candidates before ``pos`` no longer fit this shape (this cycle)."""
        self.skip: set[_Site] | None = None
        """Candidates after ``pos`` found not to fit by the packing lookahead."""
        self.never = False
        self.home = False
        self.dead = False
        self.wait_text = ""
        self.preempt: dict[bool, list[_Entry]] = {}


_Entry = tuple[float, str, _Site]
"""A candidate site: (minus its static score, its id, the site); sorts best first."""


def _country(job: JobRequest, t: _Tenant) -> str:
    return job.tenant_country or t.country


# --------------------------------------------------------------------------- the checks


def _fit(s: _Site, k: _Key, t: _Tenant) -> str | int:
    """The GPU type ``k`` would use at ``s`` now ("" for CPU-only), or the failing reason code."""
    if not s.accepting:
        return _STATE
    if k.excluded and s.site_id in k.excluded:
        return _EXCLUDED
    if k.allowed and s.jurisdiction not in k.allowed:
        return _RESIDENCY
    if s.restricted and t.name not in s.allow_tenants and k.country not in s.allow_countries:
        return _POLICY
    gpus = k.gpus
    gt = k.gpu_type
    if gpus:
        if gt:
            total = s.total.get(gt, 0)
            if total <= 0:
                return _GPU_TYPE
            if total < gpus:
                return _TOO_LARGE
        elif not s.types:
            return _GPU_TYPE
        elif s.max_pool < gpus:
            return _TOO_LARGE
    if s.total_cpus < k.cpus or s.total_mem < k.mem:
        return _TOO_LARGE
    if not gpus:
        if s.free_cpus < k.cpus or s.free_mem < k.mem:
            return _CAPACITY
        return ""
    if t.quota_room is not None and gpus > t.quota_room:
        return _QUOTA
    if t.jq_room:
        room = t.jq_room.get(s.jurisdiction)
        if room is not None and gpus > room:
            return _QUOTA
    if s.surplus_room is not None and gpus > s.surplus_room and k.country not in s.home:
        return _SURPLUS
    cpu_ok = s.free_cpus >= k.cpus and s.free_mem >= k.mem
    if gt:
        draw = gpus * s.watts.get(gt, 0)
        if draw and draw > s.power_room:
            return _POWER
        return gt if cpu_ok and s.free.get(gt, 0) >= gpus else _CAPACITY
    code = _POWER
    for gt in s.types:
        if s.total[gt] < gpus:
            continue
        draw = gpus * s.watts.get(gt, 0)
        if draw and draw > s.power_room:
            continue
        code = _CAPACITY
        if cpu_ok and s.free[gt] >= gpus:
            return gt
    return code


def _never(s: _Site, k: _Key, t: _Tenant, *, overall: bool = True) -> int | None:
    """Why ``s`` could not run ``k`` even empty and accepting, or None if it could.

    ``overall=False`` leaves out the tenant's overall quota (checked per job by ``place``, as
    tenants without per-site rules share keys)."""
    if k.excluded and s.site_id in k.excluded:
        return _EXCLUDED
    if k.allowed and s.jurisdiction not in k.allowed:
        return _RESIDENCY
    if s.restricted and t.name not in s.allow_tenants and k.country not in s.allow_countries:
        return _POLICY
    gpus = k.gpus
    gt = k.gpu_type
    if gpus:
        if gt:
            total = s.total.get(gt, 0)
            if total <= 0:
                return _GPU_TYPE
            if total < gpus:
                return _TOO_LARGE
        elif not s.types:
            return _GPU_TYPE
        elif s.max_pool < gpus:
            return _TOO_LARGE
    if s.total_cpus < k.cpus or s.total_mem < k.mem:
        return _TOO_LARGE
    if not gpus:
        return None
    if overall and t.quota is not None and gpus > t.quota:
        return _QUOTA
    limit = t.jq.get(s.jurisdiction)
    if limit is not None and gpus > limit:
        return _QUOTA
    if s.surplus_limit is not None and gpus > s.surplus_limit and k.country not in s.home:
        return _SURPLUS
    if s.cap is not None and not any(gpus * s.watts.get(x, 0) <= s.cap for x in _types_for(s, k)):
        return _POWER
    return None


def _types_for(s: _Site, k: _Key) -> list[str]:
    """GPU types ``k`` could use at ``s`` by size, in the order they are tried."""
    if k.gpu_type:
        return [k.gpu_type] if s.total.get(k.gpu_type, 0) >= k.gpus else []
    return [x for x in s.types if s.total[x] >= k.gpus]


def _static_score(s: _Site, k: _Key, w: Weights) -> float:
    score = s.base
    if k.country and k.country in s.home:
        score += w.home
    if s.site_id in k.preferred:
        score += w.preferred
    return score


def _packing(s: _Site, k: _Key, gt: str) -> float:
    """Share of the site's GPUs of ``gt`` (CPUs for a CPU-only job) in use after placing."""
    if gt:
        total = s.total[gt]
        return (total - s.free[gt] + k.gpus) / total
    if s.total_cpus <= 0:
        return 0.0
    return (s.total_cpus - s.free_cpus + k.cpus) / s.total_cpus


# --------------------------------------------------------------------------- human sentences


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _watts(w: float) -> str:
    """11200 -> "11.2 kW", 230_000_000 -> "230 MW"."""
    for unit, scale in (("MW", 1e6), ("kW", 1e3)):
        if abs(w) >= scale:
            return f"{_num(w / scale)} {unit}"
    return f"{_num(w)} W"


def _codes(codes: Iterable[str]) -> str:
    return ", ".join(sorted(codes))


def _names(sites: Sequence[_Site]) -> str:
    names = ", ".join(s.site_id for s in sites[:_MAX_NAMES])
    if len(sites) > _MAX_NAMES:
        names += f" and {len(sites) - _MAX_NAMES} more"
    return names


def _need(k: _Key) -> str:
    """Everything the job asks for: "8 x H100, 32 CPUs, 65536 MiB"."""
    if k.gpus:
        return f"{k.gpus} x {k.gpu_type or 'any GPU'}, {k.cpus} CPUs, {k.mem} MiB"
    return f"{k.cpus} CPUs and {k.mem} MiB"


def _first_type(s: _Site, k: _Key, *, powered: bool) -> str:
    """The type to talk about at ``s``: the first that fits by size (and by power if asked)."""
    types = _types_for(s, k)
    if powered:
        types = [x for x in types if not (k.gpus * s.watts.get(x, 0) > s.power_room)] or types
    return types[0] if types else (k.gpu_type or "GPU")


def _detail(code: int, s: _Site, k: _Key, t: _Tenant) -> str:
    """The sentence behind a reason code, with the numbers as they stand now."""
    if code == _STATE:
        return "site is not accepting work (not active, or not connected)"
    if code == _EXCLUDED:
        return "excluded by the job"
    if code == _RESIDENCY:
        return f"allows {_codes(k.allowed)}; site is in {s.jurisdiction}"
    if code == _POLICY:
        allowed = []
        if s.allow_countries:
            allowed.append(f"tenants from {_codes(s.allow_countries)}")
        if s.allow_tenants:
            allowed.append(f"tenants {_codes(s.allow_tenants)}")
        return (
            f"accepts {' and '.join(allowed)}; {t.name} is from {k.country or 'an unknown country'}"
        )
    if code == _GPU_TYPE:
        has = f"has {_codes(s.types)}" if s.types else "has no GPUs"
        return f"no {k.gpu_type or 'GPUs'} here ({has})"
    if code == _TOO_LARGE:
        if k.gpu_type and s.total.get(k.gpu_type, 0) < k.gpus:
            return f"needs {k.gpus} x {k.gpu_type}, site has {s.total.get(k.gpu_type, 0)}"
        if k.gpus and not k.gpu_type and s.max_pool < k.gpus:
            pools = ", ".join(f"{s.total[x]} x {x}" for x in s.types)
            return f"needs {k.gpus} GPUs of one type, site has {pools}"
        if s.total_cpus < k.cpus:
            return f"needs {k.cpus} CPUs, site has {s.total_cpus}"
        return f"needs {k.mem} MiB, site has {s.total_mem} MiB"
    if code == _QUOTA:
        if t.quota_room is not None and t.quota is not None and k.gpus > t.quota_room:
            used = t.quota - t.quota_room
            return f"tenant {t.name} holds {used} of its {t.quota} GPUs, needs {k.gpus}"
        j = s.jurisdiction
        used = t.jq[j] - t.jq_room[j]
        return f"tenant {t.name} holds {used} of its {t.jq[j]} GPUs in {j}, needs {k.gpus}"
    if code == _SURPLUS:
        limit = s.surplus_limit or 0
        used = limit - (s.surplus_room or 0)
        return f"non-home tenants hold {used} of the {limit} surplus GPUs offered, needs {k.gpus}"
    if code == _POWER:
        gt = _first_type(s, k, powered=False)
        cap = s.cap or 0
        used = cap - s.power_room
        draw = k.gpus * s.watts.get(gt, 0)
        return f"would draw {_watts(draw)} over the {_watts(cap)} cap with {_watts(used)} in use"
    # capacity
    if k.gpus:
        gt = _first_type(s, k, powered=True)
        free = s.free.get(gt, 0)
        if free < k.gpus:
            return f"needs {k.gpus} x {gt}, {free} free"
    if s.free_cpus < k.cpus:
        return f"needs {k.cpus} CPUs, {s.free_cpus} free"
    return f"needs {k.mem} MiB, {s.free_mem} MiB free"


def _short(code: int, s: _Site, k: _Key, t: _Tenant) -> str:
    """A waiting job's one-line reason from its most informative site."""
    if code == _CAPACITY:
        if k.gpus:
            gt = _first_type(s, k, powered=True)
            if s.free.get(gt, 0) < k.gpus:
                return f"no capacity: {s.site_id} full for {k.gpus} x {gt}"
        return f"no capacity: {s.site_id} full for {k.cpus} CPUs, {k.mem} MiB"
    if code == _POWER:
        return f"power cap at {s.site_id}: {_detail(code, s, k, t)}"
    if code == _SURPLUS:
        return f"surplus used up at {s.site_id}: {_detail(code, s, k, t)}"
    if code == _QUOTA:
        if t.quota_room is not None and k.gpus > t.quota_room:
            return _quota_short(t)
        j = s.jurisdiction
        return f"quota: tenant {t.name} at {t.jq[j] - t.jq_room[j]}/{t.jq[j]} GPUs in {j}"
    if code == _STATE:
        return f"no accepting site: {s.site_id} is not accepting work"
    return f"{_REASONS[code].value} at {s.site_id}: {_detail(code, s, k, t)}"


def _quota_short(t: _Tenant) -> str:
    quota = t.quota or 0
    return f"quota: tenant {t.name} at {quota - (t.quota_room or 0)}/{quota} GPUs"


def _never_sentence(job: JobRequest, k: _Key, t: _Tenant, sites: Sequence[_Site]) -> str | None:
    """Why no site in ``sites`` could ever run the job, or None if one could."""
    codes = [(s, _never(s, k, t)) for s in sites]
    if any(c is None for _, c in codes):
        return None
    allowed = [(s, c) for s, c in codes if c is not None and c not in (_EXCLUDED, _RESIDENCY)]
    if not allowed:
        if job.allowed_jurisdictions:
            text = (
                f"no registered site in allowed jurisdictions [{_codes(job.allowed_jurisdictions)}]"
            )
            if any(s.jurisdiction in job.allowed_jurisdictions for s, _ in codes):
                text += " that is not excluded"
            return text
        return "no registered site that is not excluded"
    names = _names([s for s, _ in allowed])
    kinds = {c for _, c in allowed}
    if kinds <= {_GPU_TYPE, _TOO_LARGE}:
        return f"no allowed site ({names}) has {_need(k)}"
    if kinds == {_POLICY}:
        country = f"from {k.country}" if k.country else "with no country"
        return f"no allowed site ({names}) accepts tenant {t.name} {country}"
    if kinds == {_QUOTA}:
        if t.quota is not None and k.gpus > t.quota:
            return f"needs {k.gpus} GPUs, more than tenant {t.name}'s quota of {t.quota}"
        return (
            f"needs {k.gpus} GPUs, more than tenant {t.name}'s quota at every allowed site "
            f"({names})"
        )
    if kinds == {_SURPLUS}:
        return (
            f"needs {k.gpus} GPUs, more than every allowed site ({names}) offers to non-home "
            f"tenants"
        )
    if kinds == {_POWER}:
        return f"{_need(k)} would draw more than the power cap of every allowed site ({names})"
    parts = [f"{s.site_id}: {_never_detail(c, s, k, t)}" for s, c in allowed[:_MAX_NAMES]]
    more = f"; and {len(allowed) - _MAX_NAMES} more" if len(allowed) > _MAX_NAMES else ""
    return f"no allowed site can ever run {_need(k)}: {'; '.join(parts)}{more}"


def _never_detail(code: int, s: _Site, k: _Key, t: _Tenant) -> str:
    if code == _QUOTA:
        limit = t.quota if t.quota is not None and k.gpus > t.quota else t.jq[s.jurisdiction]
        return f"over tenant {t.name}'s quota of {limit} GPUs"
    if code == _SURPLUS:
        return f"offers {s.surplus_limit} surplus GPUs to non-home tenants"
    if code == _POWER:
        gt = _first_type(s, k, powered=False)
        draw = k.gpus * s.watts.get(gt, 0)
        return f"would draw {_watts(draw)}, cap {_watts(s.cap or 0)}"
    return _detail(code, s, k, t)


# --------------------------------------------------------------------------- the cycle


class _Cycle:
    """Per-cycle state and caches: sites in score order, per jurisdiction set, per key."""

    def __init__(self, snapshot: Snapshot) -> None:
        w = snapshot.weights
        self.weights = w
        self.snapshot = snapshot
        sites = [_Site(v, w) for v in snapshot.sites]
        self.sites = sites
        self.by_id = {s.site_id: s for s in sites}
        entries = sorted([(-s.base, s.site_id, s) for s in sites])
        self.entries = entries
        self.ordered = [e[2] for e in entries]
        self.home_of: dict[str, list[_Site]] = {}
        self.named: set[str] = set()
        self.by_jur: dict[str, list[_Entry]] = {}
        tg = tc = tm = 0
        for i, entry in enumerate(entries):
            s = entry[2]
            s.order = i
            self.by_jur.setdefault(s.jurisdiction, []).append(entry)
            for c in s.home:
                self.home_of.setdefault(c, []).append(s)
            if s.allow_tenants:
                self.named |= s.allow_tenants
            tg += sum(s.total.values())
            tc += s.total_cpus
            tm += s.total_mem
        self.tenants: dict[str, _Tenant] = {}
        self.inv = (1 / tg if tg > 0 else 0.0, 1 / tc if tc > 0 else 0.0, 1 / tm if tm > 0 else 0.0)
        self._bases: dict[frozenset[str], list[_Entry]] = {}
        self._homes: dict[tuple[frozenset[str], str], list[_Site]] = {}
        self._ctx: dict[tuple[frozenset[str], str, frozenset[str]], list[_Entry]] = {}

    def tenant(self, name: str) -> _Tenant:
        t = self.tenants.get(name)
        if t is None:
            t = self.tenants[name] = _Tenant(name, self.snapshot.tenants.get(name))
            t.tag = name if t.jq or name in self.named else ""
            self.reshare(t)
        return t

    def reshare(self, t: _Tenant) -> None:
        """Recompute ``t``'s dominant share: max over resources of usage / total, / weight."""
        ig, ic, im = self.inv
        t.share = max(t.gpus * ig, t.cpus * ic, t.mem * im) / t.weight

    def base(self, allowed: frozenset[str]) -> list[_Entry]:
        """Sites in ``allowed`` (all for the empty set) by the score every job shares."""
        got = self._bases.get(allowed)
        if got is None:
            if allowed:
                got = []
                for j in allowed:
                    got += self.by_jur.get(j, ())
                got.sort()
            else:
                got = self.entries
            self._bases[allowed] = got
        return got

    def homes(self, allowed: frozenset[str], country: str) -> list[_Site]:
        """Sites in ``allowed`` where ``country`` is a home country."""
        got = self._homes.get((allowed, country))
        if got is None:
            got = [
                s for s in self.home_of.get(country, ()) if not allowed or s.jurisdiction in allowed
            ]
            self._homes[(allowed, country)] = got
        return got

    def context(self, k: _Key) -> list[_Entry]:
        """``k``'s candidate sites, best static score first (ties by site id)."""
        w = self.weights
        allowed = k.allowed
        homes = self.homes(allowed, k.country) if w.home and k.country else []
        prefs = []
        if k.preferred and w.preferred:
            for sid in sorted(k.preferred):
                s = self.by_id.get(sid)
                if s is not None and (not allowed or s.jurisdiction in allowed):
                    prefs.append(s)
        ck = (allowed, k.country if homes else "", frozenset(s.site_id for s in prefs))
        got = self._ctx.get(ck)
        if got is None:
            special = {s.site_id: s for s in homes + prefs}
            got = _splice(
                self.base(allowed), [(_static_score(s, k, w), s) for s in special.values()]
            )
            self._ctx[ck] = got
        return got

    def new_key(self, job: JobRequest, country: str, t: _Tenant) -> _Key:
        """A key for ``job``'s shape: could it ever run, is it home, its candidates."""
        k = _Key(job, country)
        k.never = True
        for _, _, s in self.base(k.allowed):
            if _never(s, k, t, overall=False) is None:
                k.never = False
                break
        if not k.never:
            k.home = bool(country) and any(
                _never(s, k, t, overall=False) is None for s in self.homes(k.allowed, country)
            )
            k.ctx = self.context(k)
        return k


def _splice(entries: list[_Entry], special: list[tuple[float, _Site]]) -> list[_Entry]:
    """``entries`` with the ``special`` sites (all among them) moved to where their own
    scores sort them: a few bisections and C-level slice copies, no Python loop over entries."""
    if not special:
        return entries
    front = sorted((-score, s.site_id, s) for score, s in special)
    if -front[-1][0] > -entries[0][0]:
        # every special site outscores every site (the usual case: home and preferred bonuses
        # dwarf renewable and carbon terms): put them first. Their own entries further down
        # are harmless duplicates: a walk reaches them only after the special entry failed.
        return front + entries
    removed = sorted(bisect_left(entries, (-s.base, s.site_id)) for _, s in special)
    out: list[_Entry] = []
    prev = 0
    ri = 0
    for entry in front:
        p = bisect_left(entries, entry[:2])
        while ri < len(removed) and removed[ri] < p:
            out += entries[prev : removed[ri]]
            prev = removed[ri] + 1
            ri += 1
        out += entries[prev:p]
        prev = max(prev, p)
        out.append(entry)
    for r in removed[ri:]:
        out += entries[prev:r]
        prev = r + 1
    out += entries[prev:]
    return out


def _choose(k: _Key, t: _Tenant, pw: float, lookahead: int) -> tuple[float, _Site, str] | None:
    """The best site for the next job of ``k`` now, or None; moves ``k``'s cursor past sites
    that no longer fit it (the quick ``avail`` test first, the full checks after)."""
    cands = k.ctx
    i = k.pos
    n = len(cands)
    gpus, gt, cpus, mem, skip = k.gpus, k.gpu_type, k.cpus, k.mem, k.skip
    while i < n:
        neg, _, s = cands[i]
        if (
            not s.accepting
            or (gpus and (s.avail.get(gt, 0) if gt else s.max_avail) < gpus)
            or s.free_cpus < cpus
            or s.free_mem < mem
            or (skip and s in skip)
        ):
            i += 1
            continue
        r = _fit(s, k, t)
        if isinstance(r, str):
            k.pos = i
            if pw and lookahead:
                return _lookahead(k, t, i, -neg, s, r, pw, lookahead)
            return -neg + pw * _packing(s, k, r), s, r
        i += 1
    k.pos = i
    return None


def _lookahead(
    k: _Key, t: _Tenant, i: int, static: float, s: _Site, gt: str, pw: float, lookahead: int
) -> tuple[float, _Site, str]:
    """The best by exact score (ties by site id) among the first feasible site, at ``i``, and
    up to ``lookahead`` sites after it that pass a quick capacity test and whose static score
    leaves packing a chance to lift them above it."""
    cands = k.ctx
    gpus, cpus, mem, typed = k.gpus, k.cpus, k.mem, k.gpu_type
    best, best_site, best_type = static + pw * _packing(s, k, gt), s, gt
    upper = pw if pw > 0 else 0.0
    seen = 0
    for j in range(i + 1, min(len(cands), i + 1 + 4 * lookahead)):
        neg2, _, s2 = cands[j]
        static2 = -neg2
        if static2 + upper < best:
            break
        if (
            not s2.accepting
            or (gpus and (s2.avail.get(typed, 0) if typed else s2.max_avail) < gpus)
            or s2.free_cpus < cpus
            or s2.free_mem < mem
            or (k.skip and s2 in k.skip)
        ):
            continue
        seen += 1
        if typed:
            # the exact score if it fits: only a winner is worth the full checks
            total = s2.total[typed]
            score = static2 + pw * ((total - s2.free[typed] + gpus) / total)
            if score < best or (score == best and s2.site_id > best_site.site_id):
                if seen >= lookahead:
                    break
                continue
        elif not gpus:
            score = static2 + pw * _packing(s2, k, "")
            if score < best or (score == best and s2.site_id > best_site.site_id):
                if seen >= lookahead:
                    break
                continue
        r2 = _fit(s2, k, t)
        if isinstance(r2, str):
            score = static2 + pw * _packing(s2, k, r2)
            if score > best or (score == best and s2.site_id < best_site.site_id):
                best, best_site, best_type = score, s2, r2
        else:
            if k.skip is None:
                k.skip = set()
            k.skip.add(s2)
        if seen >= lookahead:
            break
    return best, best_site, best_type


def _why(k: _Key, t: _Tenant) -> str:
    """Why a key that ran out of sites waits: its most informative site's reason."""
    best: tuple[int, int, _Site] | None = None
    for _, _, s in k.ctx:
        r = _fit(s, k, t)
        if isinstance(r, int) and (best is None or _RANK[r] > best[0]):
            best = (_RANK[r], r, s)
    if best is None:
        return "no site fits it now"
    return _short(best[1], best[2], k, t)


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
        sites = [_Site(v, w) for v in snapshot.sites]
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


def _releasing(v: SiteView) -> bool:
    """Whether jobs being preempted at ``v`` still hold capacity there."""
    return bool(
        v.releasing_cpus > 0
        or v.releasing_memory_mb > 0
        or v.releasing_watts > 0
        or any(n > 0 for n in v.releasing_gpus.values())
    )


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


class _Credit:
    """Capacity at a site on its way back (releasing, victims chosen this cycle) less what
    preemptors reserved this cycle, and the site's remaining preemption victims."""

    __slots__ = ("cpus", "gpus", "mem", "surplus", "victims", "watts")

    def __init__(self, v: SiteView) -> None:
        self.gpus: dict[str, int] = dict(v.releasing_gpus)
        self.cpus = v.releasing_cpus
        self.mem = v.releasing_memory_mb
        self.watts = v.releasing_watts
        self.surplus = 0
        self.victims: list[RunningJob] = []


_Need = tuple[int, int, int, int, int]
"""Shortfalls: GPUs of the type, CPUs, MiB, watts, surplus GPUs (for a non-home tenant)."""


class _Preemptor:
    """Preemption, after the normal pass, for the jobs still waiting (in the order considered).

    A job may evict SURPLUS-class running jobs at a site if its class is above SURPLUS, or if it
    is SURPLUS-class, its tenant is home at the site and the victims are not. Victims preempted
    within the snapshot's window are left alone; each is evicted at most once. Only sites that
    pass every check but capacity, power and the surplus limit (which victims may free) count,
    best static score first. Pass one: if free plus releasing capacity (less what earlier
    preemptors reserved) covers the job at some site, reserve it and wait. Pass two: at the
    first site where evicting eligible victims would cover it, evict a minimal set (biggest
    holders of the needed GPU type first, then drop any victim the others make unnecessary),
    reserve, and wait. The preemptor is not placed this cycle. Releasing capacity is not
    assumed to free a surplus offer (whose it was is unknown); an evicted non-home victim is.
    Reservations also count against the preemptor's quota, so that two preemptors of one tenant
    do not evict for GPUs its quota would not let both use.
    """

    def __init__(
        self, cyc: _Cycle, snapshot: Snapshot, out: list[Preemption], waiting: dict[str, str]
    ) -> None:
        self.cyc = cyc
        self.out = out
        self.waiting = waiting
        credit = {s.site_id: _Credit(s.view) for s in cyc.sites if _releasing(s.view)}
        now, window = snapshot.now, snapshot.preemption_window_seconds
        for v in snapshot.running:
            s = cyc.by_id.get(v.site_id)
            if s is None or v.priority != Priority.SURPLUS:
                continue
            if v.last_preempted_at is not None and now - v.last_preempted_at < window:
                continue
            c = credit.get(v.site_id)
            if c is None:
                c = credit[v.site_id] = _Credit(s.view)
            c.victims.append(v)
        self.credit = credit
        self.sites = sorted((cyc.by_id[site_id] for site_id in credit), key=lambda s: s.order)

    def run(self, left: list[tuple[JobRequest, _Key, _Tenant]]) -> None:
        if not self.sites:
            return
        for job, k, t in left:
            wide = job.priority > Priority.SURPLUS
            if not wide and job.priority != Priority.SURPLUS:
                continue
            if k.gpus and t.quota_room is not None and k.gpus > t.quota_room:
                continue  # evictions do not free quota (an earlier preemptor reserved it)
            cands = k.preempt.get(wide)
            if cands is None:
                cands = k.preempt[wide] = self._candidates(k, t, wide=wide)
            if cands:
                done = self._reuse(k, t, cands) or self._evict(job, k, t, cands, wide=wide)
                if done is not None:
                    self.waiting[job.job_id] = done

    def _candidates(self, k: _Key, t: _Tenant, *, wide: bool) -> list[_Entry]:
        w = self.cyc.weights
        out = [
            (-_static_score(s, k, w), s.site_id, s)
            for s in self.sites
            if s.accepting
            and _never(s, k, t, overall=False) is None
            and (wide or (k.country and k.country in s.home))
        ]
        out.sort()
        return out

    def _needs(self, s: _Site, k: _Key, t: _Tenant, gt: str) -> _Need | None:
        """Shortfalls at ``s`` using ``gt``, counting capacity on its way back; None if the
        tenant's quota there (which evictions do not free) rules the site out."""
        c = self.credit[s.site_id]
        gpus = k.gpus
        if gpus:
            room = t.jq_room.get(s.jurisdiction)
            if room is not None and gpus > room:
                return None
        surplus = 0
        if gpus and s.surplus_room is not None and k.country not in s.home:
            surplus = gpus - (s.surplus_room + c.surplus)
        draw = gpus * s.watts.get(gt, 0) if gt else 0
        return (
            gpus - (s.free.get(gt, 0) + c.gpus.get(gt, 0)) if gt else 0,
            k.cpus - (s.free_cpus + c.cpus),
            k.mem - (s.free_mem + c.mem),
            draw - (s.power_room + c.watts) if draw else 0,
            surplus,
        )

    def _reserve(self, s: _Site, k: _Key, t: _Tenant, gt: str) -> None:
        c = self.credit[s.site_id]
        gpus = k.gpus
        if gt:
            c.gpus[gt] = c.gpus.get(gt, 0) - gpus
            c.watts -= gpus * s.watts.get(gt, 0)
        c.cpus -= k.cpus
        c.mem -= k.mem
        if gpus:
            if s.surplus_room is not None and k.country not in s.home:
                c.surplus -= gpus
            if t.quota_room is not None:
                t.quota_room -= gpus
            if s.jurisdiction in t.jq_room:
                t.jq_room[s.jurisdiction] -= gpus

    def _reuse(self, k: _Key, t: _Tenant, cands: list[_Entry]) -> str | None:
        for _, _, s in cands:
            for gt in _types_for(s, k) if k.gpus else [""]:
                need = self._needs(s, k, t, gt)
                if need is not None and max(need) <= 0:
                    self._reserve(s, k, t, gt)
                    return f"waiting for preempted jobs at {s.site_id} to stop"
        return None

    def _evict(
        self,
        job: JobRequest,
        k: _Key,
        t: _Tenant,
        cands: list[_Entry],
        *,
        wide: bool,
    ) -> str | None:
        while cands:
            s = cands[0][2]
            c = self.credit[s.site_id]
            pool = [v for v in c.victims if wide or not v.home_at_site]
            for gt in _types_for(s, k) if k.gpus else [""]:
                need = self._needs(s, k, t, gt)
                chosen = None if need is None else _pick(pool, need, gt)
                if need is None or chosen is None:
                    continue
                for v in chosen:
                    c.victims.remove(v)
                    if v.gpu_type:
                        c.gpus[v.gpu_type] = c.gpus.get(v.gpu_type, 0) + v.gpus
                    c.cpus += v.cpus
                    c.mem += v.memory_mb
                    c.watts += v.watts
                    if not v.home_at_site:
                        c.surplus += v.gpus
                    self.out.append(Preemption(v.job_id, v.attempt, s.site_id, job.job_id))
                self._reserve(s, k, t, gt)
                if not chosen:  # covered by what is on its way back after all
                    return f"waiting for preempted jobs at {s.site_id} to stop"
                return f"preempting {len(chosen)} surplus job(s) at {s.site_id}"
            # not even every eligible victim would do, and victims only get fewer this cycle
            del cands[0]
        return None


def _frees(v: RunningJob, gt: str) -> _Need:
    return (
        v.gpus if gt and v.gpu_type == gt else 0,
        v.cpus,
        v.memory_mb,
        v.watts,
        0 if v.home_at_site else v.gpus,
    )


def _pick(pool: list[RunningJob], need: _Need, gt: str) -> list[RunningJob] | None:
    """A minimal set of victims covering every shortfall in ``need``, or None if none does."""
    frees = [(_frees(v, gt), v) for v in pool]
    if any(sum(f[d] for f, _ in frees) < need[d] for d in range(5)):
        return None
    # biggest holders of the needed type first (then of power, CPUs, memory)
    frees.sort(key=lambda fv: (-fv[0][0], -fv[0][3], -fv[0][1], -fv[0][2], fv[1].job_id))
    short = list(need)
    chosen: list[tuple[_Need, RunningJob]] = []
    for f, v in frees:
        if max(short) <= 0:
            break
        chosen.append((f, v))
        short = [short[d] - f[d] for d in range(5)]
    # then drop any victim the others already cover, smallest first
    for f, v in list(reversed(chosen)):
        if all(short[d] + f[d] <= 0 for d in range(5)):
            chosen.remove((f, v))
            short = [short[d] + f[d] for d in range(5)]
    return [v for _, v in chosen]


# --------------------------------------------------------------------------- module surface

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
    return _never_sentence(job, k, t, [_Site(v, w) for v in sites])
