"""What the placement function sees and says: plain, immutable data, no I/O.

The scheduler builds a ``Snapshot`` from the store each cycle; ``placement.place`` turns it into a
``PlacementResult``; ``placement.explain`` answers "why is this job pending / why there" for one
job. All counts are totals over a job's nodes (a gang of 4 nodes x 8 GPUs asks for 32 GPUs, all
at one site).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Explanation",
    "JobRequest",
    "Placed",
    "PlacementResult",
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
]


class Priority(enum.IntEnum):
    """Priority classes; values match ``orchestrator.v1.PriorityClass``. Higher goes first."""

    SURPLUS = 1
    NORMAL = 2
    HIGH = 3
    CRITICAL = 4


class Reason(enum.StrEnum):
    """Why a site does not take a job (the first constraint that rejects it), or that it can."""

    STATE = "state"
    """The site is not ACTIVE (cordoned, draining, lost) or not connected."""
    EXCLUDED = "excluded"
    """The job excludes the site by name."""
    RESIDENCY = "residency"
    """The site's jurisdiction is not among the job's allowed jurisdictions."""
    POLICY = "policy"
    """The site's owner does not accept this tenant (by name or home country)."""
    GPU_TYPE = "gpu_type"
    """The site has no GPUs of the type the job needs (or none at all)."""
    TOO_LARGE = "too_large"
    """The site is too small for the job even when empty (GPUs, CPUs or memory)."""
    POWER = "power"
    """The job's draw would take the site over its power cap."""
    SURPLUS = "surplus"
    """The site's surplus offer to non-home tenants is used up."""
    QUOTA = "quota"
    """The tenant's GPU quota (overall or for the site's jurisdiction) would be exceeded."""
    CAPACITY = "capacity"
    """Not enough free GPUs, CPUs or memory right now."""
    FEASIBLE = "feasible"
    """The site can take the job now (the verdict carries its score)."""


@dataclass(frozen=True, slots=True)
class JobRequest:
    """One pending job."""

    job_id: str
    attempt: int
    tenant: str
    priority: Priority = Priority.NORMAL
    submit_order: float = 0.0
    """Smaller is earlier (the store's submit time in ms)."""
    gpus: int = 0
    """GPUs in all (per node x nodes)."""
    gpu_type: str = ""
    """Required GPU type; "" means any type the site has (CPU-only when gpus == 0)."""
    cpus: int = 1
    memory_mb: int = 1024
    nodes: int = 1
    allowed_jurisdictions: frozenset[str] = frozenset()
    """Country codes, groups already expanded; empty means anywhere."""
    excluded_sites: frozenset[str] = frozenset()
    preferred_sites: tuple[str, ...] = ()
    tenant_country: str = ""
    """Home country of the tenant ("" when unknown): home-ecosystem priority and site policy."""


@dataclass(frozen=True, slots=True)
class RunningJob:
    """A placed, unfinished job that could be preempted (only SURPLUS-class jobs are listed)."""

    job_id: str
    attempt: int
    tenant: str
    site_id: str
    priority: Priority
    gpu_type: str
    gpus: int
    cpus: int
    memory_mb: int
    watts: int
    """Power it draws at its site (what placing it added to the site's used watts)."""
    home_at_site: bool
    """Whether its tenant's country is one of its site's home countries."""
    last_preempted_at: float | None = None
    """When this job was last preempted (seconds, same clock as ``Snapshot.now``)."""


@dataclass(frozen=True, slots=True)
class SitePolicy:
    """What a site's owner allows."""

    allowed_tenant_countries: frozenset[str] = frozenset()
    """Tenants from these home countries may run here; empty means any country."""
    allowed_tenants: frozenset[str] = frozenset()
    """These tenants may run here regardless of country; with both sets empty, anyone may."""
    surplus_gpus: int | None = None
    """Most GPUs non-home tenants may hold here at once; None means no limit. Only matters at
    sites with home countries."""


@dataclass(frozen=True, slots=True)
class SiteView:
    """One site at the start of the cycle."""

    site_id: str
    jurisdiction: str
    accepting: bool
    """ACTIVE and connected; a site that is not still counts for "could ever run"."""
    total_gpus: Mapping[str, int] = field(default_factory=dict)
    total_cpus: int = 0
    total_memory_mb: int = 0
    used_gpus: Mapping[str, int] = field(default_factory=dict)
    used_cpus: int = 0
    used_memory_mb: int = 0
    gpu_watts: Mapping[str, int] = field(default_factory=dict)
    """Watts per GPU by type (all-in: server share and cooling). A type not listed draws 0."""
    power_cap_watts: int | None = None
    """None means no cap."""
    used_watts: int = 0
    home_countries: frozenset[str] = frozenset()
    policy: SitePolicy = field(default_factory=SitePolicy)
    used_gpus_nonhome: int = 0
    """GPUs held here by tenants whose country is not a home country of the site."""
    renewable_share: float = 0.0
    """0..1."""
    carbon_intensity: float = 0.0
    """Grams of CO2 per kWh of the site's supply."""
    releasing_gpus: Mapping[str, int] = field(default_factory=dict)
    """GPUs (by type) held by jobs being preempted here: still in ``used_gpus``, free soon."""
    releasing_cpus: int = 0
    releasing_memory_mb: int = 0
    releasing_watts: int = 0

    def free_gpus(self, gpu_type: str) -> int:
        """GPUs of ``gpu_type`` not in use."""
        return self.total_gpus.get(gpu_type, 0) - self.used_gpus.get(gpu_type, 0)


@dataclass(frozen=True, slots=True)
class TenantView:
    """One tenant: fair-share weight, quotas and what it holds now."""

    tenant: str
    country: str = ""
    weight: float = 1.0
    quota_gpus: int | None = None
    """Most GPUs held at once across all sites; None means no quota."""
    quota_gpus_by_jurisdiction: Mapping[str, int] = field(default_factory=dict)
    """Most GPUs held at once in one jurisdiction (country code); absent means no quota there."""
    used_gpus: int = 0
    used_gpus_by_jurisdiction: Mapping[str, int] = field(default_factory=dict)
    used_cpus: int = 0
    used_memory_mb: int = 0


@dataclass(frozen=True, slots=True)
class Weights:
    """Site scoring among feasible sites; higher score wins."""

    home: float = 100.0
    """Bonus when the job's tenant is from one of the site's home countries."""
    preferred: float = 50.0
    """Bonus for a site the job prefers."""
    renewable: float = 10.0
    """Times the site's renewable share (0..1)."""
    carbon: float = 0.01
    """Penalty per gCO2/kWh."""
    packing: float = 5.0
    """Times the share of the site's GPUs of that type already in use (fuller first)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one cycle decides from."""

    jobs: Sequence[JobRequest]
    """The pending window, in any order: placement orders it."""
    sites: Sequence[SiteView]
    tenants: Mapping[str, TenantView] = field(default_factory=dict)
    """Tenants not listed have weight 1, no quota, no usage, no country."""
    running: Sequence[RunningJob] = ()
    """Preemption candidates (SURPLUS-class jobs placed and not finished)."""
    now: float = 0.0
    preemption_window_seconds: float = 600.0
    """A job preempted less than this long ago is not preempted again."""
    weights: Weights = field(default_factory=Weights)


@dataclass(frozen=True, slots=True)
class Placed:
    """Put a job (attempt) on a site, using GPUs of ``gpu_type`` and drawing ``watts``."""

    job_id: str
    attempt: int
    site_id: str
    gpu_type: str
    watts: int
    score: float


@dataclass(frozen=True, slots=True)
class Preemption:
    """Evict ``victim_job_id`` (attempt) at ``site_id`` to make room for ``for_job_id``."""

    victim_job_id: str
    victim_attempt: int
    site_id: str
    for_job_id: str


@dataclass(frozen=True, slots=True)
class SiteVerdict:
    """What one site says to one job."""

    site_id: str
    reason: Reason
    detail: str
    """Human-readable, e.g. "needs 8 x H100, 2 free" or "score 92.5"."""
    score: float | None = None
    """Set when ``reason`` is FEASIBLE."""


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a job is where it is (or is not anywhere yet)."""

    job_id: str
    verdicts: list[SiteVerdict]
    """One per site, best first (feasible by score, then the others by site id)."""
    unschedulable: str | None
    """Why no registered site could ever run the job, or None if one could."""


@dataclass(frozen=True, slots=True)
class PlacementResult:
    """One cycle's output."""

    decisions: list[Placed]
    preemptions: list[Preemption]
    unschedulable: list[tuple[str, int, str]]
    """(job id, attempt, reason) for jobs no registered site could ever run."""
    waiting: dict[str, str]
    """Job id -> short reason for jobs that stay pending this cycle."""
