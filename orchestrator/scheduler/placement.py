"""Placement: a pure function from a snapshot of pending jobs and sites to decisions.

No I/O, deterministic for a given snapshot. The scheduler calls it through the ``Policy``
protocol, so a richer policy (fair share, power, preemption) replaces ``FirstFit`` without
touching the loop around it. Hard constraints are checked here and again by the store's commit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from orchestrator._pb.orchestrator.v1 import types_pb2

__all__ = [
    "FirstFit",
    "JobRequest",
    "PlacementResult",
    "Policy",
    "SiteView",
    "Snapshot",
    "never_reason",
    "place",
]


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What placement needs to know of one pending job (totals over all its nodes)."""

    job_id: str
    attempt: int
    gpus: int = 0
    gpu_type: str = ""
    cpus: int = 1
    memory_mb: int = 1024
    allowed_jurisdictions: frozenset[str] = frozenset()
    excluded_sites: frozenset[str] = frozenset()
    preferred_sites: tuple[str, ...] = ()

    @classmethod
    def from_spec(cls, job_id: str, attempt: int, spec: types_pb2.JobSpec) -> JobRequest:
        """Build from a normalised spec."""
        res = spec.resources
        nodes = max(res.nodes, 1)
        return cls(
            job_id=job_id,
            attempt=attempt,
            gpus=res.gpus * nodes,
            gpu_type=res.gpu_type,
            cpus=max(res.cpus, 1) * nodes,
            memory_mb=res.memory_mb * nodes,
            allowed_jurisdictions=frozenset(spec.placement.allowed_jurisdictions),
            excluded_sites=frozenset(spec.placement.excluded_sites),
            preferred_sites=tuple(spec.placement.preferred_sites),
        )


@dataclass(frozen=True, slots=True)
class SiteView:
    """One site's capacity as the snapshot saw it.

    ``accepting`` is False for sites that take no new work now (not ACTIVE, or not connected);
    such sites still count when deciding whether a job could *ever* run.
    """

    site_id: str
    jurisdiction: str
    accepting: bool
    total_gpus: Mapping[str, int] = field(default_factory=dict)
    total_cpus: int = 0
    total_memory_mb: int = 0
    free_gpus: Mapping[str, int] = field(default_factory=dict)
    free_cpus: int = 0
    free_memory_mb: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Pending jobs in queue order, and every registered site."""

    jobs: Sequence[JobRequest]
    sites: Sequence[SiteView]


@dataclass(frozen=True, slots=True)
class Placed:
    """Put ``job_id`` (attempt) on ``site_id`` using GPUs of ``gpu_type``."""

    job_id: str
    attempt: int
    site_id: str
    gpu_type: str


@dataclass(frozen=True, slots=True)
class PlacementResult:
    """Decisions, jobs that can never run (with why), and why the rest wait."""

    decisions: list[Placed]
    unschedulable: list[tuple[str, int, str]]
    waiting: dict[str, str]


class Policy(Protocol):
    """A placement policy: pure, deterministic, no I/O."""

    def place(self, snapshot: Snapshot) -> PlacementResult:
        """Decide placements for one cycle."""
        ...


def _allowed(job: JobRequest, site: SiteView) -> bool:
    if site.site_id in job.excluded_sites:
        return False
    return not job.allowed_jurisdictions or site.jurisdiction in job.allowed_jurisdictions


def _gpu_type_fits(job: JobRequest, gpus: Mapping[str, int]) -> str | None:
    """The GPU type to use if ``gpus`` has enough for the job, else None ('' for CPU-only)."""
    if job.gpus == 0:
        return ""
    if job.gpu_type:
        return job.gpu_type if gpus.get(job.gpu_type, 0) >= job.gpus else None
    for gpu_type in sorted(gpus):
        if gpus[gpu_type] >= job.gpus:
            return gpu_type
    return None


def never_reason(job: JobRequest, sites: Sequence[SiteView]) -> str | None:
    """Why no registered site could ever run ``job`` (even empty), or None if one could."""
    allowed = [s for s in sites if _allowed(job, s)]
    if not allowed:
        if job.allowed_jurisdictions:
            codes = ", ".join(sorted(job.allowed_jurisdictions))
            return f"no registered site in allowed jurisdictions [{codes}]"
        return "no registered site that is not excluded"
    for site in allowed:
        if (
            _gpu_type_fits(job, site.total_gpus) is not None
            and site.total_cpus >= job.cpus
            and site.total_memory_mb >= job.memory_mb
        ):
            return None
    names = ", ".join(s.site_id for s in allowed)
    if job.gpus:
        what = f"{job.gpus} x {job.gpu_type or 'any GPU'}"
        return f"no allowed site ({names}) has {what}, {job.cpus} CPUs, {job.memory_mb} MiB"
    return f"no allowed site ({names}) has {job.cpus} CPUs and {job.memory_mb} MiB"


@dataclass(slots=True)
class _Room:
    gpus: dict[str, int]
    cpus: int
    memory_mb: int


class FirstFit:
    """Jobs in queue order; each to its first preferred, then first by id, site that fits now."""

    def place(self, snapshot: Snapshot) -> PlacementResult:
        free = {
            s.site_id: _Room(dict(s.free_gpus), s.free_cpus, s.free_memory_mb)
            for s in snapshot.sites
            if s.accepting
        }
        by_id = {s.site_id: s for s in snapshot.sites}
        ordered = sorted(snapshot.sites, key=lambda s: s.site_id)
        decisions: list[Placed] = []
        unschedulable: list[tuple[str, int, str]] = []
        waiting: dict[str, str] = {}
        for job in snapshot.jobs:
            never = never_reason(job, snapshot.sites)
            if never is not None:
                unschedulable.append((job.job_id, job.attempt, never))
                continue
            candidates = [by_id[s] for s in job.preferred_sites if s in by_id]
            candidates += [s for s in ordered if s.site_id not in job.preferred_sites]
            placed = False
            for site in candidates:
                room = free.get(site.site_id)
                if room is None or not _allowed(job, site):
                    continue
                gpu_type = _gpu_type_fits(job, room.gpus)
                if gpu_type is None or room.cpus < job.cpus or room.memory_mb < job.memory_mb:
                    continue
                if gpu_type:
                    room.gpus[gpu_type] -= job.gpus
                room.cpus -= job.cpus
                room.memory_mb -= job.memory_mb
                decisions.append(Placed(job.job_id, job.attempt, site.site_id, gpu_type))
                placed = True
                break
            if not placed:
                waiting[job.job_id] = "no allowed site has free capacity now"
        return PlacementResult(decisions, unschedulable, waiting)


_DEFAULT = FirstFit()


def place(snapshot: Snapshot) -> PlacementResult:
    """Place with the default policy."""
    return _DEFAULT.place(snapshot)
