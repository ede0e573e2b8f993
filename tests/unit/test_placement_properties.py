"""Invariants of ``place`` over random federations (Hypothesis).

Whatever the snapshot: no decision breaks a hard constraint, every job in the window gets exactly
one outcome, preemption only ever evicts eligible SURPLUS-class work, and the result depends on
the snapshot alone (not on the order of its window).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.scheduler.model import (
    JobRequest,
    PlacementResult,
    Priority,
    Reason,
    RunningJob,
    SitePolicy,
    SiteView,
    Snapshot,
    TenantView,
)
from orchestrator.scheduler.placement import explain, never_reason, place

JURISDICTIONS = ["NO", "SE", "US"]
COUNTRIES = ["NO", "SE", "US", "GB", ""]
TYPES = ["GB200", "H100"]
WATTS = {"H100": 700, "GB200": 1000}
TENANTS = ["t0", "t1", "t2", "t3"]
SITE_IDS = ["s0", "s1", "s2", "s3", "s4"]
NOW = 5_000.0
T = TypeVar("T")
WINDOW = 600.0


class Bits:
    """Decodes one drawn byte string into many small choices, a byte or two each: one Hypothesis
    draw per object keeps generation fast, and shrinking bytes towards zero still simplifies
    every field (a zero byte picks the first option of a choice)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def _next(self, n: int) -> int:
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return int.from_bytes(chunk, "big") if chunk else 0

    def num(self, lo: int, hi: int) -> int:
        span = hi - lo + 1
        return lo + self._next(1 if span <= 256 else 2) % span

    def pick(self, options: Sequence[T]) -> T:
        return options[self.num(0, len(options) - 1)]

    def often(self, percent: int) -> bool:
        """True in about ``percent`` out of 100 draws (and for a zero byte)."""
        return self._next(1) * 100 < percent * 256

    def subset(self, options: Sequence[T], most: int) -> frozenset[T]:
        return frozenset(o for o in options[: self.num(0, most)] if self.num(0, 1))


BIG = st.binary(min_size=64, max_size=64)


def site_view(b: Bits, site_id: str) -> SiteView:
    total = {t: b.pick([8, 16, 4, 12, 0]) for t in TYPES}
    used = {t: b.num(0, n) for t, n in total.items()}
    cpus = b.pick([64, 32, 16, 8])
    cap = None if b.often(60) else b.num(0, 30_000)
    home = frozenset() if b.often(50) else b.subset(["NO", "SE"], 2)
    restricted = not b.often(85)
    return SiteView(
        site_id=site_id,
        jurisdiction=b.pick(JURISDICTIONS),
        accepting=b.often(95),
        total_gpus=total,
        total_cpus=cpus,
        total_memory_mb=65536,
        used_gpus=used,
        used_cpus=b.num(0, cpus // 2),
        used_memory_mb=b.pick([0, 32768]),
        gpu_watts=WATTS,
        power_cap_watts=cap,
        used_watts=b.num(0, cap if cap is not None else 30_000),
        home_countries=home,
        policy=SitePolicy(
            allowed_tenant_countries=b.subset(COUNTRIES[:4], 3) if restricted else frozenset(),
            allowed_tenants=b.subset(TENANTS, 1) if restricted else frozenset(),
            surplus_gpus=None if b.often(40) else b.num(0, 16),
        ),
        used_gpus_nonhome=b.num(0, 12),
        renewable_share=b.num(0, 10) / 10,
        carbon_intensity=float(b.num(0, 500)),
        releasing_gpus={t: b.num(0, used[t]) if b.often(20) else 0 for t in TYPES},
        releasing_cpus=b.num(0, 8),
        releasing_memory_mb=b.pick([0, 4096]),
        releasing_watts=b.num(0, 5_000),
    )


def tenant_view(b: Bits, name: str) -> TenantView:
    return TenantView(
        tenant=name,
        country=b.pick(COUNTRIES),
        weight=b.pick([1.0, 0.5, 2.0]),
        quota_gpus=None if b.often(60) else b.num(0, 48),
        quota_gpus_by_jurisdiction=(
            {} if b.often(60) else {j: b.num(0, 24) for j in b.subset(JURISDICTIONS, 3)}
        ),
        used_gpus=b.num(0, 16),
        used_gpus_by_jurisdiction={j: b.num(0, 8) for j in b.subset(JURISDICTIONS, 3)},
        used_cpus=b.num(0, 64),
    )


def job_request(b: Bits, i: int) -> JobRequest:
    return JobRequest(
        job_id=f"j{i:02d}",
        attempt=b.num(1, 3),
        tenant=b.pick(TENANTS),
        priority=b.pick([Priority.NORMAL, Priority.SURPLUS, Priority.HIGH, Priority.CRITICAL]),
        submit_order=float(b.num(0, 5)),
        gpus=b.pick([1, 0, 2, 4, 8, 16]),
        gpu_type=b.pick(["", *TYPES]),
        cpus=b.num(1, 16),
        memory_mb=b.pick([0, 1024, 16384]),
        allowed_jurisdictions=frozenset() if b.often(50) else b.subset(JURISDICTIONS, 3),
        excluded_sites=frozenset() if b.often(80) else b.subset(SITE_IDS, 2),
        preferred_sites=() if b.often(70) else tuple(sorted(b.subset(SITE_IDS, 3))),
        tenant_country=b.pick(COUNTRIES),
    )


def running_job(b: Bits, i: int, site_ids: list[str]) -> RunningJob:
    gpu_type = b.pick(TYPES)
    gpus = b.num(1, 8)
    return RunningJob(
        job_id=f"r{i}",
        attempt=1,
        tenant=b.pick(TENANTS),
        site_id=b.pick(site_ids),
        priority=b.pick([Priority.SURPLUS, Priority.SURPLUS, Priority.NORMAL, Priority.HIGH]),
        gpu_type=gpu_type,
        gpus=gpus,
        cpus=b.num(0, 8),
        memory_mb=0,
        watts=gpus * WATTS[gpu_type],
        home_at_site=b.pick([False, True]),
        last_preempted_at=b.pick([None, NOW - 10, NOW - WINDOW, 0.0]),
    )


@st.composite
def snapshots(draw: st.DrawFn, max_jobs: int = 20) -> Snapshot:
    """A federation of 1-5 sites, some tenants, a window of jobs and preemption candidates;
    a third of them busy (sites full, more SURPLUS work running) to exercise preemption."""
    n_sites = draw(st.integers(1, 5))
    sites = [site_view(Bits(draw(BIG)), SITE_IDS[i]) for i in range(n_sites)]
    busy = draw(st.integers(0, 2)) == 0
    if busy:
        sites = [replace(s, used_gpus=dict(s.total_gpus)) for s in sites]
    tenants = {name: tenant_view(Bits(draw(BIG)), name) for name in TENANTS if draw(st.booleans())}
    window = [job_request(Bits(draw(BIG)), i) for i in range(draw(st.integers(1, max_jobs)))]
    ids = [s.site_id for s in sites]
    n_running = draw(st.integers(3 if busy else 0, 8))
    running = [running_job(Bits(draw(BIG)), i, ids) for i in range(n_running)]
    return Snapshot(window, sites, tenants, running, now=NOW, preemption_window_seconds=WINDOW)


def country_of(job: JobRequest, snap: Snapshot) -> str:
    view = snap.tenants.get(job.tenant)
    return job.tenant_country or (view.country if view else "")


def check_constraints(snap: Snapshot, result: PlacementResult) -> None:
    sites = {s.site_id: s for s in snap.sites}
    by_id = {j.job_id: j for j in snap.jobs}
    gpus: dict[tuple[str, str], int] = defaultdict(int)
    cpus: dict[str, int] = defaultdict(int)
    mem: dict[str, int] = defaultdict(int)
    watts: dict[str, int] = defaultdict(int)
    nonhome: dict[str, int] = defaultdict(int)
    tenant_gpus: dict[str, int] = defaultdict(int)
    tenant_jur: dict[tuple[str, str], int] = defaultdict(int)
    for d in result.decisions:
        job, s = by_id[d.job_id], sites[d.site_id]
        country = country_of(job, snap)
        assert d.attempt == job.attempt
        assert s.accepting
        assert s.site_id not in job.excluded_sites
        assert not job.allowed_jurisdictions or s.jurisdiction in job.allowed_jurisdictions
        pol = s.policy
        if pol.allowed_tenant_countries or pol.allowed_tenants:
            assert job.tenant in pol.allowed_tenants or country in pol.allowed_tenant_countries
        if job.gpus:
            assert d.gpu_type == (job.gpu_type or d.gpu_type) and s.total_gpus[d.gpu_type] > 0
            assert d.watts == job.gpus * WATTS[d.gpu_type]
            gpus[(s.site_id, d.gpu_type)] += job.gpus
            tenant_gpus[job.tenant] += job.gpus
            tenant_jur[(job.tenant, s.jurisdiction)] += job.gpus
            if country not in s.home_countries:
                nonhome[s.site_id] += job.gpus
        else:
            assert (d.gpu_type, d.watts) == ("", 0)
        cpus[s.site_id] += job.cpus
        mem[s.site_id] += job.memory_mb
        watts[s.site_id] += d.watts
    for (site_id, gpu_type), n in gpus.items():
        assert n <= sites[site_id].free_gpus(gpu_type)
    for site_id, s in sites.items():
        assert cpus[site_id] <= s.total_cpus - s.used_cpus or cpus[site_id] == 0
        assert mem[site_id] <= s.total_memory_mb - s.used_memory_mb or mem[site_id] == 0
        if s.power_cap_watts is not None and watts[site_id]:
            assert s.used_watts + watts[site_id] <= s.power_cap_watts
        limit = s.policy.surplus_gpus
        if s.home_countries and limit is not None and nonhome[site_id]:
            assert s.used_gpus_nonhome + nonhome[site_id] <= limit
    for name, n in tenant_gpus.items():
        view = snap.tenants.get(name)
        if view is None:
            continue
        if view.quota_gpus is not None:
            assert view.used_gpus + n <= view.quota_gpus
    for (name, jur), n in tenant_jur.items():
        view = snap.tenants.get(name)
        if view is not None and jur in view.quota_gpus_by_jurisdiction:
            used = view.used_gpus_by_jurisdiction.get(jur, 0)
            assert used + n <= view.quota_gpus_by_jurisdiction[jur]


def check_outcomes(snap: Snapshot, result: PlacementResult) -> None:
    decided = [d.job_id for d in result.decisions]
    never = [u[0] for u in result.unschedulable]
    outcomes = decided + never + list(result.waiting)
    assert sorted(outcomes) == sorted(j.job_id for j in snap.jobs)  # exactly one each
    by_id = {j.job_id: j for j in snap.jobs}
    for job_id, attempt, reason in result.unschedulable:
        job = by_id[job_id]
        assert attempt == job.attempt
        assert reason == never_reason(job, snap.sites, snap.tenants)
    for job_id in decided + list(result.waiting):
        assert never_reason(by_id[job_id], snap.sites, snap.tenants) is None
    assert all(result.waiting.values())


def check_preemptions(snap: Snapshot, result: PlacementResult) -> None:
    running = {r.job_id: r for r in snap.running}
    sites = {s.site_id: s for s in snap.sites}
    by_id = {j.job_id: j for j in snap.jobs}
    victims = [p.victim_job_id for p in result.preemptions]
    assert len(victims) == len(set(victims))  # each at most once
    for p in result.preemptions:
        v = running[p.victim_job_id]
        assert v.priority is Priority.SURPLUS
        assert (p.victim_attempt, p.site_id) == (v.attempt, v.site_id)
        assert v.last_preempted_at is None or snap.now - v.last_preempted_at >= WINDOW
        assert p.for_job_id in result.waiting  # the preemptor waits; it is not placed
        job = by_id[p.for_job_id]
        s = sites[p.site_id]
        assert s.accepting
        assert not job.allowed_jurisdictions or s.jurisdiction in job.allowed_jurisdictions
        if job.priority == Priority.SURPLUS:
            assert country_of(job, snap) in s.home_countries and not v.home_at_site
        else:
            assert job.priority > Priority.SURPLUS
        assert result.waiting[p.for_job_id].startswith("preempting ")


@settings(max_examples=1000, deadline=None)
@given(snap=snapshots())
def test_no_decision_breaks_a_hard_constraint_and_every_job_has_one_outcome(
    snap: Snapshot,
) -> None:
    result = place(snap)
    check_constraints(snap, result)
    check_outcomes(snap, result)
    check_preemptions(snap, result)


@settings(max_examples=300, deadline=None)
@given(snap=snapshots(), seed=st.integers(0, 2**16))
def test_place_depends_on_the_snapshot_only(snap: Snapshot, seed: int) -> None:
    first = place(snap)
    assert place(snap) == first
    shuffled = list(snap.jobs)
    random.Random(seed).shuffle(shuffled)
    again = place(Snapshot(shuffled, snap.sites, snap.tenants, snap.running, snap.now, WINDOW))
    assert again.decisions == first.decisions
    assert again.preemptions == first.preemptions
    assert again.waiting == first.waiting
    assert sorted(again.unschedulable) == sorted(first.unschedulable)


@settings(max_examples=500, deadline=None)
@given(snap=snapshots(max_jobs=3))
def test_a_lone_job_goes_where_explain_ranks_best(snap: Snapshot) -> None:
    for job in snap.jobs:
        alone = Snapshot([job], snap.sites, snap.tenants, now=NOW)
        result = place(alone)
        verdicts = explain(job, alone).verdicts
        feasible = [v for v in verdicts if v.reason is Reason.FEASIBLE]
        if result.decisions:
            [d] = result.decisions
            assert feasible and (d.site_id, d.score) == (feasible[0].site_id, feasible[0].score)
        else:
            assert not feasible
