"""Per-cycle state: reason codes, and the mutable view of each site, tenant and job shape.

Part of ``orchestrator.scheduler.placement``; see its docstring for how a cycle works.
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.scheduler.model import (
    JobRequest,
    Reason,
    SiteView,
    TenantView,
    Weights,
)

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


#: ``_Site`` slots built on first use (see ``_Site.__getattr__``).
_LAZY = frozenset(
    {
        "accepting", "allow_countries", "allow_tenants", "restricted", "total_cpus",
        "total_mem", "types", "max_pool", "free", "free_cpus", "free_mem", "watts", "cap",
        "power_room", "capped", "max_capped", "surplus_limit", "surplus_room", "avail",
        "max_avail",
    }
)  # fmt: skip


class _Site:
    """A site's mutable state for one cycle (free capacity shrinks as jobs are placed)."""

    __slots__ = (
        "accepting",
        "allow_countries",
        "allow_tenants",
        "avail",
        "base",
        "cap",
        "capped",
        "free",
        "free_cpus",
        "free_mem",
        "home",
        "jurisdiction",
        "max_avail",
        "max_capped",
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

    def __init__(self, v: SiteView, base: float) -> None:
        # What ordering needs for every site, set now; the rest is built on first use
        # (``__getattr__``), so a cycle pays only for the sites it touches.
        self.view = v
        self.site_id = v.site_id
        self.jurisdiction = v.jurisdiction
        self.total = v.total_gpus
        self.home = v.home_countries
        self.base = base
        self.order = 0

    def __getattr__(self, name: str) -> object:
        # Called only for a slot not yet set: build the capacity state once, then answer.
        if name not in _LAZY:
            raise AttributeError(name)
        self._load()
        return object.__getattribute__(self, name)

    def _load(self) -> None:
        v = self.view
        self.accepting = v.accepting
        pol = v.policy
        self.allow_countries = pol.allowed_tenant_countries
        self.allow_tenants = pol.allowed_tenants
        self.restricted = bool(pol.allowed_tenant_countries or pol.allowed_tenants)
        self.total_cpus = v.total_cpus
        self.total_mem = v.total_memory_mb
        total = self.total
        used = v.used_gpus
        watts = self.watts = v.gpu_watts
        cap = self.cap = v.power_cap_watts
        if total:
            self.types = sorted([t for t, n in total.items() if n > 0])
            self.max_pool = max(total.values())
            self.free = {t: n - used.get(t, 0) for t, n in total.items()}
        else:
            self.types, self.max_pool, self.free = [], 0, {}
        # GPUs of each type the site could run at once under its power cap alone (never more
        # than it has): what ``_never`` checks a job's size against.
        if cap is None:
            self.capped = total
        else:
            self.capped = {
                t: min(n, cap // watts[t]) if watts.get(t) else n for t, n in total.items()
            }
        self.max_capped = max(self.capped.values()) if self.capped else 0
        self.free_cpus = v.total_cpus - v.used_cpus
        self.free_mem = v.total_memory_mb - v.used_memory_mb
        self.power_room = _NO_LIMIT if cap is None else cap - v.used_watts
        limit = self.surplus_limit = pol.surplus_gpus if self.home else None
        self.surplus_room = None if limit is None else limit - v.used_gpus_nonhome
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
        "rest",
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
        self.rest: list[_Entry] | None = None
        """All candidates, to walk once ``ctx`` (then only the special sites) is used up."""
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


def _sites(views: Sequence[SiteView], w: Weights) -> list[_Site]:
    """A cycle's sites, each with the static score every job shares."""
    r, c = w.renewable, w.carbon
    return [_Site(v, r * v.renewable_share - c * v.carbon_intensity) for v in views]


def _country(job: JobRequest, t: _Tenant) -> str:
    return job.tenant_country or t.country


def _releasing(v: SiteView) -> bool:
    """Whether jobs being preempted at ``v`` still hold capacity there."""
    return bool(
        v.releasing_cpus > 0
        or v.releasing_memory_mb > 0
        or v.releasing_watts > 0
        or any(n > 0 for n in v.releasing_gpus.values())
    )
