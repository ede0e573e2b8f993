"""Preemption: priority work evicts SURPLUS-class work, and nothing else, ever."""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.scheduler.model import (
    JobRequest,
    PlacementResult,
    Preemption,
    Priority,
    RunningJob,
    SitePolicy,
    SiteView,
    Snapshot,
    TenantView,
)
from orchestrator.scheduler.placement import place

NOW = 10_000.0


def narvik(
    *,
    used: int = 8,
    total: int = 8,
    cap: int | None = None,
    used_watts: int = 0,
    surplus: int | None = None,
    nonhome: int = 0,
    releasing: Mapping[str, int] | None = None,
    releasing_watts: int = 0,
    site_id: str = "narvik",
    jurisdiction: str = "NO",
) -> SiteView:
    return SiteView(
        site_id=site_id,
        jurisdiction=jurisdiction,
        accepting=True,
        total_gpus={"H100": total},
        total_cpus=256,
        total_memory_mb=1 << 20,
        used_gpus={"H100": used},
        used_cpus=8 * used,
        used_memory_mb=0,
        gpu_watts={"H100": 1000},
        power_cap_watts=cap,
        used_watts=used_watts,
        home_countries=frozenset({"NO"}),
        policy=SitePolicy(surplus_gpus=surplus),
        used_gpus_nonhome=nonhome,
        releasing_gpus=releasing or {},
        releasing_cpus=8 * sum((releasing or {}).values()),
        releasing_watts=releasing_watts,
    )


def victim(
    job_id: str,
    gpus: int = 8,
    *,
    home: bool = False,
    prio: Priority = Priority.SURPLUS,
    preempted_at: float | None = None,
    site_id: str = "narvik",
) -> RunningJob:
    return RunningJob(
        job_id=job_id,
        attempt=1,
        tenant="cam-ml",
        site_id=site_id,
        priority=prio,
        gpu_type="H100",
        gpus=gpus,
        cpus=8 * gpus,
        memory_mb=0,
        watts=1000 * gpus,
        home_at_site=home,
        last_preempted_at=preempted_at,
    )


def want(
    job_id: str,
    gpus: int = 8,
    *,
    prio: Priority = Priority.HIGH,
    country: str = "GB",
    tenant: str = "imperial",
    order: float = 0.0,
    allowed: frozenset[str] = frozenset(),
) -> JobRequest:
    return JobRequest(
        job_id=job_id,
        attempt=1,
        tenant=tenant,
        priority=prio,
        submit_order=order,
        gpus=gpus,
        gpu_type="H100",
        cpus=8 * gpus,
        memory_mb=0,
        tenant_country=country,
        allowed_jurisdictions=allowed,
    )


def cycle(
    jobs: list[JobRequest],
    sites: list[SiteView],
    running: list[RunningJob],
    tenants: Mapping[str, TenantView] | None = None,
) -> PlacementResult:
    return place(Snapshot(jobs, sites, tenants or {}, running, now=NOW))


def evicted(result: PlacementResult) -> list[str]:
    return [p.victim_job_id for p in result.preemptions]


def test_a_high_job_evicts_surplus_work_and_waits_for_it() -> None:
    result = cycle([want("hi")], [narvik()], [victim("v")])
    assert result.preemptions == [Preemption("v", 1, "narvik", "hi")]
    assert result.decisions == []  # the preemptor is not placed in the same cycle
    assert result.waiting == {"hi": "preempting 1 surplus job(s) at narvik"}


def test_never_preempt_for_a_job_that_can_be_placed_now() -> None:
    sites = [narvik(), narvik(site_id="lulea", jurisdiction="SE", used=0)]
    result = cycle([want("hi")], sites, [victim("v")])
    assert result.preemptions == [] and [d.site_id for d in result.decisions] == ["lulea"]


def test_only_surplus_class_work_is_ever_evicted() -> None:
    running = [victim("normal", prio=Priority.NORMAL), victim("high", prio=Priority.HIGH)]
    result = cycle([want("crit", prio=Priority.CRITICAL)], [narvik()], running)
    assert result.preemptions == []
    assert result.waiting == {"crit": "no capacity: narvik full for 8 x H100"}


def test_normal_class_preempts_but_surplus_from_abroad_does_not() -> None:
    assert evicted(cycle([want("n", prio=Priority.NORMAL)], [narvik()], [victim("v")])) == ["v"]
    assert evicted(cycle([want("s", prio=Priority.SURPLUS)], [narvik()], [victim("v")])) == []


def test_home_surplus_job_evicts_only_non_home_surplus_work() -> None:
    home_job = want("s", prio=Priority.SURPLUS, country="NO", tenant="uio")
    assert evicted(cycle([home_job], [narvik()], [victim("abroad")])) == ["abroad"]
    assert evicted(cycle([home_job], [narvik()], [victim("local", home=True)])) == []
    # a higher class may evict home surplus work too
    assert evicted(cycle([want("hi", country="NO")], [narvik()], [victim("local", home=True)])) == [
        "local"
    ]


def test_recently_preempted_work_is_left_alone_for_the_window() -> None:
    recent = victim("v", preempted_at=NOW - 599)
    assert evicted(cycle([want("hi")], [narvik()], [recent])) == []
    old = victim("v", preempted_at=NOW - 600)
    assert evicted(cycle([want("hi")], [narvik()], [old])) == ["v"]


def test_releasing_capacity_is_reused_before_anything_new_is_evicted() -> None:
    site = narvik(releasing={"H100": 8})
    jobs = [want("first", order=0), want("second", order=1)]
    result = cycle(jobs, [site], [victim("v")])
    # the first waits for the capacity already on its way back; only the second evicts
    assert result.waiting["first"] == "waiting for preempted jobs at narvik to stop"
    assert result.preemptions == [Preemption("v", 1, "narvik", "second")]
    assert result.waiting["second"] == "preempting 1 surplus job(s) at narvik"


def test_each_victim_is_evicted_at_most_once() -> None:
    jobs = [want(f"hi{i}", order=i) for i in range(3)]
    result = cycle(jobs, [narvik()], [victim("v")])
    assert evicted(result) == ["v"]
    assert result.waiting["hi0"] == "preempting 1 surplus job(s) at narvik"
    assert result.waiting["hi1"] == result.waiting["hi2"] == "no capacity: narvik full for 8 x H100"


def test_victims_freed_for_one_job_serve_the_next_before_more_are_evicted() -> None:
    jobs = [want("a", 4, order=0), want("b", 4, order=1)]
    result = cycle(jobs, [narvik()], [victim("big", 8), victim("other", 8)])
    assert evicted(result) == ["big"]
    assert result.waiting == {
        "a": "preempting 1 surplus job(s) at narvik",
        "b": "waiting for preempted jobs at narvik to stop",
    }


def test_a_minimal_set_biggest_holders_first() -> None:
    running = [victim("v2", 2), victim("v8", 8), victim("v4a", 4), victim("v4b", 4)]
    site = narvik(total=18, used=18)
    assert evicted(cycle([want("hi", 8)], [site], running)) == ["v8"]
    assert sorted(evicted(cycle([want("hi", 12)], [site], running))) == ["v4a", "v8"]
    assert sorted(evicted(cycle([want("hi", 18)], [site], running))) == ["v2", "v4a", "v4b", "v8"]


def test_not_enough_to_evict_means_no_eviction_at_all() -> None:
    result = cycle([want("hi", 8)], [narvik()], [victim("v", 4)])
    assert result.preemptions == []


def test_victims_free_power_too() -> None:
    # 8 GPUs free but the cap leaves room for 4 more: evicting a 4-GPU victim frees 4 kW
    site = narvik(total=16, used=8, cap=12_000, used_watts=8_000)
    result = cycle([want("hi", 8)], [site], [victim("v", 4)])
    assert evicted(result) == ["v"]


def test_victims_free_the_surplus_offer_for_a_non_home_priority_job() -> None:
    site = narvik(total=32, used=8, surplus=8, nonhome=8)
    result = cycle([want("hi", 8, prio=Priority.NORMAL)], [site], [victim("v", 8)])
    assert result.decisions == [] and evicted(result) == ["v"]


def test_quota_is_not_freed_by_evicting_others() -> None:
    tenants = {"imperial": TenantView("imperial", quota_gpus=8, used_gpus=8)}
    result = cycle([want("hi")], [narvik()], [victim("v")], tenants)
    assert result.preemptions == []
    assert result.waiting == {"hi": "quota: tenant imperial at 8/8 GPUs"}


def test_preemption_respects_residency() -> None:
    job = want("hi", allowed=frozenset({"SE"}))
    sites = [narvik(), narvik(site_id="lulea", jurisdiction="SE", used=8)]
    result = cycle([job], sites, [victim("v")])
    assert result.preemptions == []


def test_victims_elsewhere_are_not_touched() -> None:
    sites = [narvik(), narvik(site_id="lulea", jurisdiction="SE")]
    result = cycle([want("hi", allowed=frozenset({"NO"}))], sites, [victim("v", site_id="lulea")])
    assert result.preemptions == []


def test_a_reservation_counts_against_the_preemptors_quota() -> None:
    # room in the quota for one more 8-GPU job: one eviction, not two
    tenants = {"imperial": TenantView("imperial", quota_gpus=16, used_gpus=8)}
    jobs = [want("a", order=0), want("b", order=1)]
    result = cycle(jobs, [narvik(total=16, used=16)], [victim("v1"), victim("v2")], tenants)
    assert evicted(result) == ["v1"]
    assert result.waiting["b"] == "no capacity: narvik full for 8 x H100"
    # with room for both, both evict
    tenants = {"imperial": TenantView("imperial", quota_gpus=24, used_gpus=8)}
    result = cycle(jobs, [narvik(total=16, used=16)], [victim("v1"), victim("v2")], tenants)
    assert sorted(evicted(result)) == ["v1", "v2"]
