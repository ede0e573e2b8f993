"""Capacity offers (orchestrator.federation): hour windows, countries, the effective policy."""

from __future__ import annotations

import ast
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

import orchestrator.federation
from orchestrator._pb.orchestrator.v1 import federation_pb2, types_pb2
from orchestrator.federation import (
    NO_COUNTRY,
    effective_policy,
    offer_active,
    offer_countries,
    offer_gpus,
    utc_hour,
)
from orchestrator.jurisdictions import GROUPS

HOUR = 3600.0
DAY = 24 * HOUR
COUNTRIES = ["NO", "SE", "DK", "GB", "US", "AE", "DE"]


def offer(
    *,
    countries: tuple[str, ...] = (),
    jurisdictions: tuple[str, ...] = (),
    hours: tuple[tuple[int, int], ...] = (),
    gpus: dict[str, int] | None = None,
    offer_id: str = "o-1",
) -> federation_pb2.CapacityOffer:
    o = federation_pb2.CapacityOffer(
        id=offer_id,
        site_id="narvik",
        tenant_countries=list(countries),
        jurisdictions=list(jurisdictions),
    )
    for start, end in hours:
        o.hours.add(start_hour=start, end_hour=end)
    for gpu_type, count in (gpus or {}).items():
        o.gpus.add(type=gpu_type, count=count)
    return o


def at(hour: int, minute: int = 0, day: int = 20_000) -> float:
    """Epoch seconds at ``hour``:``minute`` UTC on some day."""
    return day * DAY + hour * HOUR + minute * 60


def lets_in(policy: types_pb2.SitePolicy, tenant: str, country: str) -> bool:
    """The policy check of placement and commit.lua."""
    countries, tenants = policy.allowed_tenant_countries, policy.allowed_tenants
    if not countries and not tenants:
        return True
    return tenant in tenants or country in countries


# ---------------------------------------------------------------- hour windows


def test_no_windows_means_always() -> None:
    assert all(offer_active(offer(), at(h)) for h in range(24))


def test_a_window_is_start_inclusive_end_exclusive_in_utc() -> None:
    o = offer(hours=((8, 17),))
    assert not offer_active(o, at(7, 59))
    assert offer_active(o, at(8))
    assert offer_active(o, at(16, 59))
    assert not offer_active(o, at(17))


def test_a_window_ending_at_or_before_its_start_wraps_midnight() -> None:
    night = offer(hours=((22, 6),))
    assert sorted(h for h in range(24) if offer_active(night, at(h))) == [0, 1, 2, 3, 4, 5, 22, 23]
    assert all(offer_active(offer(hours=((5, 5),)), at(h)) for h in range(24))
    assert [h for h in range(24) if offer_active(offer(hours=((20, 24),)), at(h))] == [
        20,
        21,
        22,
        23,
    ]


def test_any_window_of_several_will_do() -> None:
    o = offer(hours=((1, 2), (10, 12)))
    assert [h for h in range(24) if offer_active(o, at(h))] == [1, 10, 11]


@given(
    st.integers(0, 23),
    st.integers(0, 24),
    st.floats(0, 4e9, allow_nan=False),
)
def test_windows_agree_with_the_hours_they_list(start: int, end: int, now: float) -> None:
    hours = list(range(start, end)) if end > start else [*range(start, 24), *range(0, end)]
    assert offer_active(offer(hours=((start, end),)), now) == (utc_hour(now) in hours)


# ---------------------------------------------------------------- countries and GPUs


def test_countries_are_the_countries_and_the_groups_expanded() -> None:
    o = offer(countries=("GB",), jurisdictions=("NORDICS", "DE"))
    assert offer_countries(o) == {"GB", "DE"} | GROUPS["NORDICS"]
    assert offer_countries(offer()) == frozenset()


def test_gpus_of_every_type_add_up() -> None:
    assert offer_gpus(offer(gpus={"H100": 8, "GB200": 4})) == 12
    assert offer_gpus(offer()) == 0


# ---------------------------------------------------------------- effective policy


def base(
    countries: tuple[str, ...] = (), tenants: tuple[str, ...] = (), surplus: int | None = None
) -> types_pb2.SitePolicy:
    p = types_pb2.SitePolicy(allowed_tenant_countries=countries, allowed_tenants=tenants)
    if surplus is not None:
        p.has_surplus_limit = True
        p.surplus_gpus = surplus
    return p


def test_a_site_without_offers_keeps_its_base_policy() -> None:
    b = base(("NO", "SE"), ("acme",), surplus=16)
    assert effective_policy(b, ["NO"], [], at(12)) == b
    assert effective_policy(base(), ["NO"], [], at(12)) == base()


def test_an_open_site_with_offers_takes_home_tenants_and_the_active_offers_countries() -> None:
    offers = [
        offer(offer_id="day", countries=("SE",), hours=((8, 18),), gpus={"H100": 8}),
        offer(offer_id="night", jurisdictions=("GB",), hours=((18, 8),), gpus={"H100": 32}),
    ]
    noon = effective_policy(base(), ["NO"], offers, at(12))
    assert list(noon.allowed_tenant_countries) == ["NO", "SE"]
    assert (noon.has_surplus_limit, noon.surplus_gpus) == (True, 8)
    night = effective_policy(base(), ["NO"], offers, at(23))
    assert list(night.allowed_tenant_countries) == ["GB", "NO"]
    assert night.surplus_gpus == 32


def test_offers_add_to_the_base_limit_and_lists() -> None:
    offers = [offer(countries=("DK",), gpus={"H100": 8, "GB200": 8})]
    eff = effective_policy(base(("NO", "SE"), ("acme",), surplus=4), ["NO"], offers, at(3))
    assert list(eff.allowed_tenant_countries) == ["DK", "NO", "SE"]
    assert list(eff.allowed_tenants) == ["acme"]
    assert eff.surplus_gpus == 20


def test_no_active_offer_closes_the_site_to_others() -> None:
    offers = [offer(countries=("SE",), hours=((8, 9),), gpus={"H100": 8})]
    eff = effective_policy(base(), ["NO"], offers, at(12))
    assert list(eff.allowed_tenant_countries) == ["NO"]
    assert (eff.has_surplus_limit, eff.surplus_gpus) == (True, 0)
    # no home countries either: nobody by country (an empty list would mean anyone)
    eff = effective_policy(base(), [], offers, at(12))
    assert list(eff.allowed_tenant_countries) == [NO_COUNTRY]
    assert not lets_in(eff, "t", "SE")


def test_a_base_that_names_its_tenants_is_not_opened_to_home_tenants_by_offers() -> None:
    offers = [offer(countries=("SE",))]
    eff = effective_policy(base(tenants=("acme",)), ["NO"], offers, at(12))
    assert list(eff.allowed_tenant_countries) == ["SE"]
    assert lets_in(eff, "acme", "US") and lets_in(eff, "t", "SE") and not lets_in(eff, "t", "NO")


codes = st.sampled_from(COUNTRIES)
windows = st.lists(st.tuples(st.integers(0, 23), st.integers(0, 24)), max_size=2)
offers_st = st.lists(
    st.builds(
        lambda cs, js, hs, n, i: offer(
            countries=tuple(cs),
            jurisdictions=tuple(js),
            hours=tuple(hs),
            gpus={"H100": n},
            offer_id=f"o-{i}",
        ),
        st.lists(codes, max_size=2),
        st.lists(st.sampled_from(["NORDICS", "GCC", "DE"]), max_size=1),
        windows,
        st.integers(0, 64),
        st.integers(0, 1000),
    ),
    max_size=4,
)
bases = st.builds(
    base,
    st.lists(codes, max_size=3).map(tuple),
    st.lists(st.sampled_from(["acme", "beta"]), max_size=1).map(tuple),
    st.none() | st.integers(0, 64),
)


@given(bases, st.lists(codes, max_size=2), offers_st, st.floats(0, 4e9, allow_nan=False))
def test_offers_never_let_in_a_country_that_no_active_offer_or_the_base_policy_does(
    b: types_pb2.SitePolicy, home: list[str], offers: list[federation_pb2.CapacityOffer], now: float
) -> None:
    eff = effective_policy(b, home, offers, now)
    if not offers:
        assert eff == b
        return
    offered = set().union(*(offer_countries(o) for o in offers if offer_active(o, now)))
    open_base = not b.allowed_tenant_countries and not b.allowed_tenants
    by_base = set(home) if open_base else set(b.allowed_tenant_countries)
    for country in [*COUNTRIES, *GROUPS["NORDICS"], *GROUPS["GCC"], ""]:
        # a tenant the base policy does not name gets in by its country only
        if lets_in(eff, "someone", country):
            assert country in offered or country in by_base, (country, eff)
    # named tenants stay named; the limit is the base one plus what active offers give
    assert set(eff.allowed_tenants) == set(b.allowed_tenants)
    active_gpus = sum(offer_gpus(o) for o in offers if offer_active(o, now))
    assert eff.has_surplus_limit
    assert eff.surplus_gpus == (b.surplus_gpus if b.has_surplus_limit else 0) + active_gpus


@given(bases, st.lists(codes, max_size=2), offers_st, st.floats(0, 4e9, allow_nan=False))
def test_home_tenants_of_an_open_site_stay_welcome(
    b: types_pb2.SitePolicy, home: list[str], offers: list[federation_pb2.CapacityOffer], now: float
) -> None:
    eff = effective_policy(b, home, offers, now)
    for country in home:
        if lets_in(b, "someone", country):
            assert lets_in(eff, "someone", country)


def test_the_module_is_pure() -> None:
    """No gRPC, Redis or Ray: the store and the scheduler both use it."""
    path = orchestrator.federation.__file__
    assert path is not None
    imported: set[str] = set()
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"grpc", "redis", "ray"}
