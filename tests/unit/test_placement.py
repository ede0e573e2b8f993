"""The placement policy, rule by rule: hard constraints, verdicts, scoring, ordering, phrasing.

Preemption, the Hypothesis invariants and the fair-share simulation have files of their own
(``test_placement_*.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest

from orchestrator.scheduler.model import (
    JobRequest,
    Priority,
    Reason,
    SitePolicy,
    SiteView,
    Snapshot,
    TenantView,
    Weights,
)
from orchestrator.scheduler.placement import DefaultPolicy, Policy, explain, never_reason, place


def site(
    site_id: str,
    jurisdiction: str = "NO",
    *,
    gpus: Mapping[str, int] | None = None,
    used: Mapping[str, int] | None = None,
    cpus: int = 512,
    mem: int = 1 << 22,
    used_cpus: int = 0,
    used_mem: int = 0,
    accepting: bool = True,
    watts: Mapping[str, int] | None = None,
    cap: int | None = None,
    used_watts: int = 0,
    home: Iterable[str] = (),
    countries: Iterable[str] = (),
    tenants: Iterable[str] = (),
    surplus: int | None = None,
    nonhome: int = 0,
    renewable: float = 0.0,
    carbon: float = 0.0,
) -> SiteView:
    return SiteView(
        site_id=site_id,
        jurisdiction=jurisdiction,
        accepting=accepting,
        total_gpus={"H100": 8} if gpus is None else gpus,
        total_cpus=cpus,
        total_memory_mb=mem,
        used_gpus=used or {},
        used_cpus=used_cpus,
        used_memory_mb=used_mem,
        gpu_watts={"H100": 1400, "GB200": 2000} if watts is None else watts,
        power_cap_watts=cap,
        used_watts=used_watts,
        home_countries=frozenset(home),
        policy=SitePolicy(frozenset(countries), frozenset(tenants), surplus),
        used_gpus_nonhome=nonhome,
        renewable_share=renewable,
        carbon_intensity=carbon,
    )


def job(
    job_id: str,
    *,
    tenant: str = "acme",
    country: str = "",
    gpus: int = 0,
    gpu_type: str = "",
    cpus: int = 1,
    mem: int = 1024,
    prio: Priority = Priority.NORMAL,
    order: float = 0.0,
    allowed: Iterable[str] = (),
    excluded: Iterable[str] = (),
    preferred: tuple[str, ...] = (),
) -> JobRequest:
    return JobRequest(
        job_id=job_id,
        attempt=1,
        tenant=tenant,
        priority=prio,
        submit_order=order,
        gpus=gpus,
        gpu_type=gpu_type,
        cpus=cpus,
        memory_mb=mem,
        allowed_jurisdictions=frozenset(allowed),
        excluded_sites=frozenset(excluded),
        preferred_sites=preferred,
        tenant_country=country,
    )


def placed(jobs: list[JobRequest], sites: list[SiteView], **kw: object) -> dict[str, str]:
    """Job id -> site id of this cycle's decisions."""
    result = place(Snapshot(jobs, sites, **kw))  # type: ignore[arg-type]
    return {d.job_id: d.site_id for d in result.decisions}


def verdict(j: JobRequest, sites: list[SiteView], site_id: str, **kw: object) -> tuple[Reason, str]:
    """One site's (reason, detail) for ``j``."""
    [v] = [v for v in explain(j, Snapshot([j], sites, **kw)).verdicts if v.site_id == site_id]  # type: ignore[arg-type]
    return v.reason, v.detail


def test_default_policy_satisfies_the_policy_protocol() -> None:
    policy: Policy = DefaultPolicy()
    s = [site("narvik")]
    assert policy.place(Snapshot([job("j")], s)).decisions[0].site_id == "narvik"
    assert policy.explain(job("j"), Snapshot([], s)).verdicts[0].reason is Reason.FEASIBLE


# --------------------------------------------------------------------------- hard constraints


def test_site_not_accepting_gets_nothing_but_the_job_waits_rather_than_failing() -> None:
    sites = [site("narvik", accepting=False)]
    result = place(Snapshot([job("j", gpus=1)], sites))
    assert result.decisions == [] and result.unschedulable == []
    assert result.waiting == {"j": "no accepting site: narvik is not accepting work"}
    assert verdict(job("j"), sites, "narvik")[0] is Reason.STATE


def test_excluded_site_is_skipped() -> None:
    sites = [site("a", renewable=1.0), site("b")]
    assert placed([job("j", excluded=["a"])], sites) == {"j": "b"}
    assert verdict(job("j", excluded=["a"]), sites, "a") == (Reason.EXCLUDED, "excluded by the job")


def test_residency_keeps_a_norway_job_in_norway_even_when_the_us_site_is_better() -> None:
    sites = [site("abilene", "US", renewable=1.0), site("narvik", "NO")]
    assert placed([job("j", gpus=1, allowed=["NO"])], sites) == {"j": "narvik"}
    assert verdict(job("j", allowed=["NO"]), sites, "abilene") == (
        Reason.RESIDENCY,
        "allows NO; site is in US",
    )


def test_full_allowed_site_means_waiting_not_elsewhere() -> None:
    sites = [site("abilene", "US", gpus={"H100": 64}), site("narvik", "NO", gpus={"H100": 2})]
    jobs = [job(f"j{i}", gpus=2, gpu_type="H100", allowed=["NO"], order=i) for i in range(3)]
    result = place(Snapshot(jobs, sites))
    assert [(d.job_id, d.site_id) for d in result.decisions] == [("j0", "narvik")]
    assert result.waiting == {
        "j1": "no capacity: narvik full for 2 x H100",
        "j2": "no capacity: narvik full for 2 x H100",
    }


def test_site_policy_by_country_and_by_tenant_name() -> None:
    sites = [site("narvik", countries=["NO", "SE"], tenants=["cam-ml"])]
    assert placed([job("no", country="NO")], sites) == {"no": "narvik"}
    assert placed([job("named", tenant="cam-ml", country="GB")], sites) == {"named": "narvik"}
    reason, detail = verdict(job("gb", tenant="imperial", country="GB"), sites, "narvik")
    assert reason is Reason.POLICY
    assert detail == "accepts tenants from NO, SE and tenants cam-ml; imperial is from GB"
    assert never_reason(job("gb", tenant="imperial", country="GB"), sites) == (
        "no allowed site (narvik) accepts tenant imperial from GB"
    )


def test_tenant_country_falls_back_to_the_tenant_view() -> None:
    sites = [site("narvik", countries=["NO"])]
    tenants = {"uio": TenantView("uio", country="NO")}
    assert placed([job("j", tenant="uio")], sites, tenants=tenants) == {"j": "narvik"}


@pytest.mark.parametrize(
    ("gpus", "gpu_type", "site_gpus", "reason", "detail"),
    [
        (1, "H100", {"GB200": 8}, Reason.GPU_TYPE, "no H100 here (has GB200)"),
        (1, "", {}, Reason.GPU_TYPE, "no GPUs here (has no GPUs)"),
        (16, "H100", {"H100": 8}, Reason.TOO_LARGE, "needs 16 x H100, site has 8"),
        (
            16,
            "",
            {"H100": 8, "GB200": 8},
            Reason.TOO_LARGE,
            "needs 16 GPUs of one type, site has 8 x GB200, 8 x H100",
        ),
    ],
)
def test_gpu_type_and_size(
    gpus: int, gpu_type: str, site_gpus: dict[str, int], reason: Reason, detail: str
) -> None:
    j = job("j", gpus=gpus, gpu_type=gpu_type)
    assert verdict(j, [site("s", gpus=site_gpus)], "s") == (reason, detail)


def test_cpus_and_memory_count_against_totals_and_free_capacity() -> None:
    big = site("s", cpus=64, mem=65536, used_cpus=60)
    assert verdict(job("j", cpus=128), [big], "s") == (
        Reason.TOO_LARGE,
        "needs 128 CPUs, site has 64",
    )
    assert verdict(job("j", cpus=8), [big], "s") == (Reason.CAPACITY, "needs 8 CPUs, 4 free")
    assert verdict(job("j", mem=1 << 20), [big], "s") == (
        Reason.TOO_LARGE,
        "needs 1048576 MiB, site has 65536 MiB",
    )


def test_capacity_counts_what_this_cycle_already_placed() -> None:
    sites = [site("s", gpus={"H100": 8}, used={"H100": 0})]
    jobs = [job(f"j{i}", gpus=3, gpu_type="H100", order=i) for i in range(3)]
    assert placed(jobs, sites) == {"j0": "s", "j1": "s"}
    assert verdict(job("x", gpus=3, gpu_type="H100"), [site("s", used={"H100": 6})], "s") == (
        Reason.CAPACITY,
        "needs 3 x H100, 2 free",
    )


def test_a_gang_goes_whole_to_one_site_or_nowhere() -> None:
    sites = [site("a", gpus={"H100": 16}), site("b", gpus={"H100": 16})]
    gang = JobRequest("g", 1, "acme", gpus=32, gpu_type="H100", nodes=4)
    result = place(Snapshot([gang], sites))
    assert result.decisions == []
    [(job_id, _, reason)] = result.unschedulable
    assert job_id == "g" and reason == "no allowed site (a, b) has 32 x H100, 1 CPUs, 1024 MiB"
    fits = [site("a", gpus={"H100": 16}), site("c", gpus={"H100": 32})]
    [d] = place(Snapshot([gang], fits)).decisions
    assert (d.site_id, d.gpu_type) == ("c", "H100")


def test_power_cap_counts_use_and_this_cycle_and_an_exact_fit_is_allowed() -> None:
    # 8 x H100 draw 11.2 kW; 20 kW left: one job fits, the second would not
    capped = site("capped", gpus={"H100": 64}, cap=100_000, used_watts=80_000)
    jobs = [job(f"j{i}", gpus=8, gpu_type="H100", order=i) for i in range(2)]
    result = place(Snapshot(jobs, [capped]))
    assert [(d.job_id, d.watts) for d in result.decisions] == [("j0", 11_200)]
    assert result.waiting["j1"].startswith("power cap at capped")
    exact = site("exact", gpus={"H100": 64}, cap=91_200, used_watts=80_000)
    assert placed([jobs[0]], [exact]) == {"j0": "exact"}


def test_power_detail_reads_like_a_sentence() -> None:
    narvik = site("narvik", cap=230_000_000, used_watts=229_990_000)
    reason, detail = verdict(job("j", gpus=8, gpu_type="H100"), [narvik], "narvik")
    assert reason is Reason.POWER
    assert detail == "would draw 11.2 kW over the 230 MW cap with 229.99 MW in use"


def test_surplus_limits_non_home_tenants_only_and_counts_this_cycle() -> None:
    narvik = site("narvik", gpus={"H100": 64}, home=["NO"], surplus=16, nonhome=4)
    gb = [job(f"gb{i}", tenant=f"gb{i}", country="GB", gpus=8, gpu_type="H100") for i in range(2)]
    home = [job(f"no{i}", tenant=f"no{i}", country="NO", gpus=8, gpu_type="H100") for i in range(3)]
    result = place(Snapshot(gb + home, [narvik]))
    done = {d.job_id for d in result.decisions}
    assert done == {"gb0", "no0", "no1", "no2"}  # 4 + 8 <= 16, 4 + 16 > 16
    assert result.waiting["gb1"] == (
        "surplus used up at narvik: non-home tenants hold 12 of the 16 surplus GPUs offered, "
        "needs 8"
    )


def test_surplus_limit_ignored_at_sites_without_home_countries() -> None:
    plain = site("plain", gpus={"H100": 64}, surplus=0)
    assert placed([job("j", country="GB", gpus=8, gpu_type="H100")], [plain]) == {"j": "plain"}


def test_quota_overall_and_per_jurisdiction() -> None:
    sites = [
        site("narvik", "NO", gpus={"H100": 64}),
        site("lulea", "SE", gpus={"H100": 64}, carbon=500),
    ]
    tenants = {"acme": TenantView("acme", quota_gpus=24, quota_gpus_by_jurisdiction={"NO": 8})}
    jobs = [job(f"j{i}", gpus=8, gpu_type="H100", order=i) for i in range(4)]
    result = place(Snapshot(jobs, sites, tenants))
    assert {(d.job_id, d.site_id) for d in result.decisions} == {
        ("j0", "narvik"),
        ("j1", "lulea"),
        ("j2", "lulea"),
    }
    assert result.waiting == {"j3": "quota: tenant acme at 24/24 GPUs"}


def test_quota_detail_and_waiting_reason_for_a_jurisdiction() -> None:
    tenants = {
        "acme": TenantView(
            "acme", quota_gpus_by_jurisdiction={"NO": 8}, used_gpus_by_jurisdiction={"NO": 8}
        )
    }
    sites = [site("narvik")]
    j = job("j", gpus=1, gpu_type="H100")
    assert verdict(j, sites, "narvik", tenants=tenants) == (
        Reason.QUOTA,
        "tenant acme holds 8 of its 8 GPUs in NO, needs 1",
    )
    assert place(Snapshot([j], sites, tenants)).waiting == {
        "j": "quota: tenant acme at 8/8 GPUs in NO"
    }


def test_cpu_only_jobs_are_not_stopped_by_gpu_limits() -> None:
    # over its GPU quota, at a site over its cap and its surplus offer: adds nothing to any of them
    s = site("s", cap=100, used_watts=200, home=["NO"], surplus=0, nonhome=4)
    tenants = {"acme": TenantView("acme", country="GB", quota_gpus=0, used_gpus=5)}
    result = place(Snapshot([job("cpu", cpus=4)], [s], tenants))
    assert [(d.site_id, d.gpu_type, d.watts) for d in result.decisions] == [("s", "", 0)]


def test_any_type_job_takes_the_first_type_in_sorted_order_that_fits() -> None:
    both = site("s", gpus={"H100": 8, "GB200": 8})
    [d] = place(Snapshot([job("j", gpus=4)], [both])).decisions
    assert d.gpu_type == "GB200"
    # GB200 full: H100
    full = site("s", gpus={"H100": 8, "GB200": 8}, used={"GB200": 6})
    [d] = place(Snapshot([job("j", gpus=4)], [full])).decisions
    assert d.gpu_type == "H100"
    # GB200 would break the power cap (8 kW), H100 (5.6 kW) does not
    capped = site("s", gpus={"H100": 8, "GB200": 8}, cap=6_000)
    [d] = place(Snapshot([job("j", gpus=4)], [capped])).decisions
    assert (d.gpu_type, d.watts) == ("H100", 5_600)


# --------------------------------------------------------------------------- verdict order


@pytest.mark.parametrize(
    ("site_kw", "job_kw", "tenant", "reason"),
    [
        ({"accepting": False, "jurisdiction": "US"}, {"allowed": ["NO"]}, None, Reason.STATE),
        ({"jurisdiction": "US"}, {"allowed": ["NO"], "excluded": ["s"]}, None, Reason.EXCLUDED),
        ({"jurisdiction": "US", "countries": ["US"]}, {"allowed": ["NO"]}, None, Reason.RESIDENCY),
        ({"countries": ["US"], "gpus": {}}, {"gpus": 1, "gpu_type": "H100"}, None, Reason.POLICY),
        ({"gpus": {"GB200": 1}}, {"gpu_type": "H100", "gpus": 16}, None, Reason.GPU_TYPE),
        ({"used": {"H100": 8}}, {"gpus": 16}, TenantView("acme", quota_gpus=0), Reason.TOO_LARGE),
        (
            {"home": ["NO"], "surplus": 0},
            {"gpus": 8},
            TenantView("acme", quota_gpus=4),
            Reason.QUOTA,
        ),
        ({"home": ["NO"], "surplus": 0, "cap": 0}, {"gpus": 8}, None, Reason.SURPLUS),
        ({"cap": 0, "used": {"H100": 8}}, {"gpus": 8}, None, Reason.POWER),
        ({"used": {"H100": 8}}, {"gpus": 8}, None, Reason.CAPACITY),
        ({}, {"gpus": 8}, None, Reason.FEASIBLE),
    ],
)
def test_a_site_reports_the_first_check_it_fails(
    site_kw: dict[str, object], job_kw: dict[str, object], tenant: TenantView | None, reason: Reason
) -> None:
    j = job("j", country="GB", **job_kw)  # type: ignore[arg-type]
    tenants = {"acme": tenant} if tenant else {}
    assert verdict(j, [site("s", **site_kw)], "s", tenants=tenants)[0] is reason  # type: ignore[arg-type]


def test_explain_lists_feasible_sites_by_score_then_the_rest_by_id() -> None:
    sites = [
        site("zeta", "US"),
        site("green", renewable=1.0),
        site("brown", carbon=700),
        site("alpha", "US"),
        site("full", used={"H100": 8}),
    ]
    j = job("j", gpus=1, gpu_type="H100", allowed=["NO"])
    got = explain(j, Snapshot([j], sites))
    assert [(v.site_id, v.reason) for v in got.verdicts] == [
        ("green", Reason.FEASIBLE),
        ("brown", Reason.FEASIBLE),
        ("alpha", Reason.RESIDENCY),
        ("full", Reason.CAPACITY),
        ("zeta", Reason.RESIDENCY),
    ]
    green = got.verdicts[0]
    assert green.score == pytest.approx(10.0 + 5.0 / 8) and green.detail == "score 10.6 on H100"
    assert got.unschedulable is None


def test_explain_names_the_unschedulable_reason() -> None:
    j = job("j", allowed=["JP"])
    assert explain(j, Snapshot([j], [site("narvik")])).unschedulable == (
        "no registered site in allowed jurisdictions [JP]"
    )


# --------------------------------------------------------------------------- scoring


def test_home_site_beats_a_greener_one_and_preferred_beats_green() -> None:
    sites = [site("narvik", home=["NO"]), site("green", "SE", renewable=1.0)]
    assert placed([job("j", country="NO")], sites) == {"j": "narvik"}
    assert placed([job("j", country="GB")], sites) == {"j": "green"}
    assert placed([job("j", country="GB", preferred=("narvik",))], sites) == {"j": "narvik"}


def test_renewable_share_and_carbon_intensity_trade_off() -> None:
    # 10 x 0.5 - 0.01 x 100 = 4 against 10 x 0.8 - 0.01 x 500 = 3
    sites = [site("a", renewable=0.5, carbon=100), site("b", renewable=0.8, carbon=500)]
    assert placed([job("j")], sites) == {"j": "a"}
    heavier = Weights(carbon=0.0)
    assert placed([job("j")], sites, weights=heavier) == {"j": "b"}


def test_packing_prefers_the_fuller_site_and_the_score_includes_it() -> None:
    sites = [site("empty", gpus={"H100": 8}), site("fuller", gpus={"H100": 8}, used={"H100": 4})]
    [d] = place(Snapshot([job("j", gpus=2, gpu_type="H100")], sites)).decisions
    assert d.site_id == "fuller" and d.score == pytest.approx(5.0 * 6 / 8)
    # packing can outweigh a slightly better static score ...
    sites[0] = site("empty", gpus={"H100": 8}, renewable=0.1)
    assert placed([job("j", gpus=2, gpu_type="H100")], sites) == {"j": "fuller"}
    # ... but not a much better one
    sites[0] = site("empty", gpus={"H100": 8}, renewable=0.9)
    assert placed([job("j", gpus=2, gpu_type="H100")], sites) == {"j": "empty"}


def test_packing_for_cpu_only_jobs_uses_cpus() -> None:
    sites = [site("idle", cpus=100), site("busy", cpus=100, used_cpus=50)]
    assert placed([job("j", cpus=10)], sites) == {"j": "busy"}


def test_lookahead_zero_takes_the_first_feasible_site_by_static_score() -> None:
    sites = [site("empty", gpus={"H100": 8}, renewable=0.1), site("fuller", used={"H100": 4})]
    result = DefaultPolicy(packing_lookahead=0).place(Snapshot([job("j", gpus=2)], sites))
    assert [d.site_id for d in result.decisions] == ["empty"]


def test_ties_go_to_the_smaller_site_id() -> None:
    sites = [site("b"), site("a"), site("c")]
    assert placed([job("j", gpus=1)], sites) == {"j": "a"}


# --------------------------------------------------------------------------- ordering


def one_slot() -> list[SiteView]:
    return [site("s", gpus={"H100": 8}, home=["NO"])]


def winner(jobs: list[JobRequest], sites: list[SiteView] | None = None, **kw: object) -> str:
    [d] = place(Snapshot(jobs, sites or one_slot(), **kw)).decisions  # type: ignore[arg-type]
    return d.job_id


def test_higher_class_goes_first_whatever_the_submit_order() -> None:
    jobs = [
        job("normal", gpus=8, order=0),
        job("critical", gpus=8, order=3, prio=Priority.CRITICAL),
        job("high", gpus=8, order=1, prio=Priority.HIGH),
    ]
    assert winner(jobs) == "critical"
    assert winner([jobs[0], job("surplus", gpus=8, prio=Priority.SURPLUS)]) == "normal"


def test_home_jobs_go_first_within_a_class_but_not_across_classes() -> None:
    jobs = [
        job("gb", tenant="cam", country="GB", gpus=8, order=0),
        job("no", tenant="uio", country="NO", gpus=8, order=5),
    ]
    assert winner(jobs) == "no"
    jobs[0] = job("gb", tenant="cam", country="GB", gpus=8, prio=Priority.HIGH)
    assert winner(jobs) == "gb"


def test_home_means_home_at_a_site_the_job_could_run_at() -> None:
    sites = [site("s", "SE", gpus={"H100": 8}), site("narvik", "NO", gpus={"H100": 8}, home=["NO"])]
    # the NO tenant's job may only run in Sweden: not home there, so submit order decides
    jobs = [
        job("gb", tenant="cam", country="GB", gpus=8, order=0, allowed=["SE"]),
        job("no", tenant="uio", country="NO", gpus=8, order=5, allowed=["SE"]),
    ]
    assert winner(jobs, sites) == "gb"


def test_dominant_resource_fair_share_picks_the_tenant_using_less() -> None:
    fed = [*one_slot(), site("other", "SE", gpus={"H100": 56}, used={"H100": 56})]
    tenants = {"big": TenantView("big", used_gpus=32), "small": TenantView("small", used_gpus=8)}
    jobs = [job("b", tenant="big", gpus=8, order=0), job("s", tenant="small", gpus=8, order=9)]
    assert winner(jobs, fed, tenants=tenants) == "s"
    # CPUs can be the dominant resource: 'small' holds most of the federation's CPUs
    tenants = {"big": TenantView("big", used_gpus=32), "small": TenantView("small", used_cpus=900)}
    assert winner(jobs, fed, tenants=tenants) == "b"


def test_weight_divides_the_dominant_share() -> None:
    fed = [*one_slot(), site("other", "SE", gpus={"H100": 56}, used={"H100": 56})]
    tenants = {
        "heavy": TenantView("heavy", weight=4.0, used_gpus=24),
        "light": TenantView("light", weight=1.0, used_gpus=8),
    }
    jobs = [job("l", tenant="light", gpus=8, order=0), job("h", tenant="heavy", gpus=8, order=9)]
    assert winner(jobs, fed, tenants=tenants) == "h"


def test_in_cycle_usage_updates_shares_so_tenants_alternate() -> None:
    s = [site("s", gpus={"H100": 6})]
    jobs = [job(f"a{i}", tenant="a", gpus=1, order=i) for i in range(5)]
    jobs += [job(f"b{i}", tenant="b", gpus=1, order=10 + i) for i in range(5)]
    result = place(Snapshot(jobs, s))
    assert [d.job_id for d in result.decisions] == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_submit_order_then_job_id_within_a_tenant() -> None:
    jobs = [job("j3", gpus=8, order=2), job("j2", gpus=8, order=1), job("j1", gpus=8, order=1)]
    assert winner(jobs) == "j1"


# --------------------------------------------------------------------------- unschedulable


def test_no_site_in_allowed_jurisdictions_phrasing_sorts_the_codes() -> None:
    sites = [site("narvik")]
    assert never_reason(job("j", allowed=["KR", "JP"]), sites) == (
        "no registered site in allowed jurisdictions [JP, KR]"
    )
    result = place(Snapshot([job("j", allowed=["JP"])], sites))
    assert result.unschedulable == [("j", 1, "no registered site in allowed jurisdictions [JP]")]
    assert "j" not in result.waiting


def test_all_sites_excluded_phrasing() -> None:
    sites = [site("a"), site("b")]
    assert never_reason(job("j", excluded=["a", "b"]), sites) == (
        "no registered site that is not excluded"
    )
    assert never_reason(job("j", excluded=["a", "b"], allowed=["NO"]), sites) == (
        "no registered site in allowed jurisdictions [NO] that is not excluded"
    )


def test_too_large_everywhere_names_the_allowed_sites_and_the_shape() -> None:
    sites = [site("narvik", "NO"), site("abilene", "US"), site("uae", "AE")]
    j = job("j", gpus=16, gpu_type="H100", cpus=32, mem=65536, allowed=["NO", "US"])
    assert never_reason(j, sites) == (
        "no allowed site (narvik, abilene) has 16 x H100, 32 CPUs, 65536 MiB"
    )
    assert never_reason(job("j", cpus=4096), sites[:1]) == (
        "no allowed site (narvik) has 4096 CPUs and 1024 MiB"
    )


def test_never_reason_ignores_state_and_current_usage() -> None:
    down_and_full = site("narvik", accepting=False, used={"H100": 8}, used_watts=10**9, cap=20_000)
    assert never_reason(job("j", gpus=8, gpu_type="H100"), [down_and_full]) is None


def test_alone_over_the_power_cap_surplus_offer_or_quota_is_unschedulable() -> None:
    j = job("j", country="GB", gpus=8, gpu_type="H100")
    assert never_reason(j, [site("s", cap=10_000)]) == (
        "8 x H100, 1 CPUs, 1024 MiB would draw more than the power cap of every allowed site (s)"
    )
    assert never_reason(j, [site("s", home=["NO"], surplus=4)]) == (
        "needs 8 GPUs, more than every allowed site (s) offers to non-home tenants"
    )
    tenants = {"acme": TenantView("acme", quota_gpus=4)}
    assert never_reason(j, [site("s")], tenants) == (
        "needs 8 GPUs, more than tenant acme's quota of 4"
    )
    result = place(Snapshot([j], [site("s")], tenants))
    assert result.unschedulable == [("j", 1, "needs 8 GPUs, more than tenant acme's quota of 4")]
    # a home tenant is not held to the surplus offer
    assert never_reason(job("n", country="NO", gpus=8), [site("s", home=["NO"], surplus=4)]) is None


def test_mixed_reasons_name_each_site() -> None:
    sites = [site("a", gpus={"H100": 4}), site("b", countries=["SE"])]
    assert never_reason(job("j", country="GB", gpus=8, gpu_type="H100"), sites) == (
        "no allowed site can ever run 8 x H100, 1 CPUs, 1024 MiB: a: needs 8 x H100, site has 4; "
        "b: accepts tenants from SE; acme is from GB"
    )


def test_many_sites_are_summarised() -> None:
    sites = [site(f"s{i:02d}", gpus={"H100": 1}) for i in range(12)]
    reason = never_reason(job("j", gpus=8, gpu_type="H100"), sites)
    assert reason is not None and "s07 and 4 more)" in reason and "s08" not in reason


# --------------------------------------------------------------------------- waiting


def test_waiting_reason_prefers_a_full_site_over_a_site_that_is_down() -> None:
    sites = [site("down", accepting=False), site("full", used={"H100": 8})]
    result = place(Snapshot([job("j", gpus=8, gpu_type="H100")], sites))
    assert result.waiting == {"j": "no capacity: full full for 8 x H100"}


def test_every_job_of_an_exhausted_shape_waits_with_the_same_reason() -> None:
    s = [site("narvik", gpus={"H100": 8})]
    jobs = [job(f"j{i}", gpus=8, gpu_type="H100", order=i) for i in range(50)]
    result = place(Snapshot(jobs, s))
    assert len(result.decisions) == 1
    assert set(result.waiting.values()) == {"no capacity: narvik full for 8 x H100"}
    assert len(result.waiting) == 49


def test_waiting_for_cpus_names_them() -> None:
    s = [site("narvik", cpus=64, used_cpus=60)]
    assert place(Snapshot([job("j", gpus=1, cpus=8)], s)).waiting == {
        "j": "no capacity: narvik full for 8 CPUs, 1024 MiB"
    }


def test_place_is_deterministic_and_ignores_window_order() -> None:
    sites = [site(f"s{i}", gpus={"H100": 8, "GB200": 8}, renewable=i / 10) for i in range(4)]
    jobs = [
        job(f"j{i}", tenant=f"t{i % 3}", gpus=i % 5, order=i // 2, prio=Priority(1 + i % 4))
        for i in range(40)
    ]
    first = place(Snapshot(jobs, sites))
    assert place(Snapshot(jobs, sites)) == first
    again = place(Snapshot(jobs[::-1], sites))
    assert again.decisions == first.decisions and again.waiting == first.waiting
