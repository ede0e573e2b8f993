"""The pure placement function: hard constraints hold for any snapshot (Hypothesis)."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.scheduler.placement import (
    JobRequest,
    SiteView,
    Snapshot,
    never_reason,
    place,
)

COUNTRIES = ["NO", "AE", "US", "GB", "SE"]
GPU_TYPES = ["H100", "GB200"]


def site(
    site_id: str,
    j: str,
    *,
    h100: int = 8,
    accepting: bool = True,
    cpus: int = 64,
    mem: int = 1 << 20,
) -> SiteView:
    return SiteView(site_id, j, accepting, {"H100": h100}, cpus, mem, {"H100": h100}, cpus, mem)


def test_residency_keeps_a_norway_job_on_the_norwegian_site() -> None:
    sites = [site("abilene", "US"), site("narvik", "NO")]
    job = JobRequest("j1", 1, gpus=1, gpu_type="H100", allowed_jurisdictions=frozenset({"NO"}))
    result = place(Snapshot([job], sites))
    assert [(d.job_id, d.site_id) for d in result.decisions] == [("j1", "narvik")]


def test_full_allowed_site_means_waiting_not_elsewhere() -> None:
    sites = [site("abilene", "US", h100=64), site("narvik", "NO", h100=2)]
    jobs = [
        JobRequest(f"j{i}", 1, gpus=2, gpu_type="H100", allowed_jurisdictions=frozenset({"NO"}))
        for i in range(3)
    ]
    result = place(Snapshot(jobs, sites))
    assert [d.site_id for d in result.decisions] == ["narvik"]
    assert set(result.waiting) == {"j1", "j2"}
    assert result.unschedulable == []


def test_jurisdiction_with_no_site_is_unschedulable_with_reason() -> None:
    job = JobRequest("j1", 1, allowed_jurisdictions=frozenset({"JP"}))
    result = place(Snapshot([job], [site("narvik", "NO")]))
    assert result.decisions == []
    [(job_id, attempt, reason)] = result.unschedulable
    assert (job_id, attempt) == ("j1", 1)
    assert "[JP]" in reason


def test_too_big_for_any_site_is_unschedulable() -> None:
    job = JobRequest("j1", 1, gpus=16, gpu_type="H100")
    reason = never_reason(job, [site("narvik", "NO", h100=8)])
    assert reason is not None and "16 x H100" in reason
    assert never_reason(JobRequest("j2", 1, gpus=8, gpu_type="H100"), [site("n", "NO")]) is None


def test_site_not_accepting_gets_nothing_but_still_counts_as_possible() -> None:
    sites = [site("narvik", "NO", accepting=False)]
    result = place(Snapshot([JobRequest("j1", 1, gpus=1)], sites))
    assert result.decisions == [] and result.unschedulable == []
    assert "j1" in result.waiting


def test_preferred_and_excluded_sites() -> None:
    sites = [site("a", "NO"), site("b", "NO"), site("c", "NO")]
    pref = JobRequest("p", 1, preferred_sites=("c",))
    excl = JobRequest("e", 1, excluded_sites=frozenset({"a"}))
    decisions = {d.job_id: d.site_id for d in place(Snapshot([pref, excl], sites)).decisions}
    assert decisions == {"p": "c", "e": "b"}


def test_any_gpu_type_picks_a_type_the_site_has() -> None:
    s = SiteView("x", "US", True, {"GB200": 4}, 8, 1 << 20, {"GB200": 4}, 8, 1 << 20)
    [d] = place(Snapshot([JobRequest("j", 1, gpus=4)], [s])).decisions
    assert d.gpu_type == "GB200"


sites_st = st.lists(
    st.builds(
        lambda i, j, free, cap, cpus, acc: SiteView(
            f"s{i}",
            j,
            acc,
            {t: cap[t] for t in GPU_TYPES},
            cpus,
            1 << 20,
            {t: min(free[t], cap[t]) for t in GPU_TYPES},
            cpus,
            1 << 20,
        ),
        st.integers(0, 1000),
        st.sampled_from(COUNTRIES),
        st.fixed_dictionaries({t: st.integers(0, 32) for t in GPU_TYPES}),
        st.fixed_dictionaries({t: st.integers(0, 32) for t in GPU_TYPES}),
        st.integers(0, 64),
        st.booleans(),
    ),
    max_size=6,
    unique_by=lambda s: s.site_id,
)
jobs_st = st.lists(
    st.builds(
        lambda i, gpus, t, cpus, allowed, excluded: JobRequest(
            f"j{i}",
            1,
            gpus=gpus,
            gpu_type=t if gpus else "",
            cpus=cpus,
            memory_mb=1024,
            allowed_jurisdictions=frozenset(allowed),
            excluded_sites=frozenset(excluded),
        ),
        st.integers(0, 10_000),
        st.integers(0, 16),
        st.sampled_from(["", *GPU_TYPES]),
        st.integers(1, 16),
        st.sets(st.sampled_from(COUNTRIES), max_size=2),
        st.sets(st.sampled_from([f"s{i}" for i in range(5)]), max_size=2),
    ),
    max_size=40,
    unique_by=lambda j: j.job_id,
)


@settings(max_examples=300, deadline=None)
@given(sites=sites_st, jobs=jobs_st)
def test_no_decision_violates_a_hard_constraint(
    sites: list[SiteView], jobs: list[JobRequest]
) -> None:
    result = place(Snapshot(jobs, sites))
    by_site = {s.site_id: s for s in sites}
    by_job = {j.job_id: j for j in jobs}
    used_gpus: dict[tuple[str, str], int] = defaultdict(int)
    used_cpus: dict[str, int] = defaultdict(int)
    seen = set()
    for d in result.decisions:
        job, s = by_job[d.job_id], by_site[d.site_id]
        assert d.job_id not in seen  # placed at most once, whole (gang jobs never split)
        seen.add(d.job_id)
        assert s.accepting
        assert not job.allowed_jurisdictions or s.jurisdiction in job.allowed_jurisdictions
        assert s.site_id not in job.excluded_sites
        if job.gpus:
            assert not job.gpu_type or d.gpu_type == job.gpu_type
            used_gpus[(s.site_id, d.gpu_type)] += job.gpus
        used_cpus[s.site_id] += job.cpus
    for (site_id, t), n in used_gpus.items():
        assert n <= by_site[site_id].free_gpus[t]
    for site_id, n in used_cpus.items():
        assert n <= by_site[site_id].free_cpus
    # every job gets exactly one outcome
    outcomes = [d.job_id for d in result.decisions] + [u[0] for u in result.unschedulable]
    outcomes += list(result.waiting)
    assert sorted(outcomes) == sorted(by_job)
    # unschedulable really means no registered site could ever take it
    for job_id, _, _ in result.unschedulable:
        job = by_job[job_id]
        for s in sites:
            if (not job.allowed_jurisdictions or s.jurisdiction in job.allowed_jurisdictions) and (
                s.site_id not in job.excluded_sites
            ):
                fits = job.gpus == 0 or any(
                    n >= job.gpus and (not job.gpu_type or t == job.gpu_type)
                    for t, n in s.total_gpus.items()
                )
                assert not (fits and s.total_cpus >= job.cpus)
