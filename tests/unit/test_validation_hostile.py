"""Hostile input in every name-like field of job specs, sites, tenants, site policies and
capacity offers: each is refused with an InvalidSpecError that names the field, in a message
that stays one clean line (no raw control or bidi characters, no 10,000-character echo)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator._pb.orchestrator.v1 import federation_pb2, types_pb2
from orchestrator.errors import InvalidSpecError
from orchestrator.validation import (
    normalize_offer,
    normalize_policy,
    normalize_site,
    normalize_spec,
    normalize_tenant,
    validate_partner_id,
    validate_reason,
    validate_site_id,
    validate_tenant_id,
)

HOSTILE = {
    "nul": "a\x00b",
    "newline": "a\nb",
    "trailing-newline": "acme\n",
    "rtl-override": "a\u202eb",
    "dotdot": "../x",
    "slash": "a/b",
    "huge": "x" * 10_000,
}
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


def spec() -> types_pb2.JobSpec:
    s = types_pb2.JobSpec(name="train", tenant="acme", queue="gpu", command=["python", "train.py"])
    s.image = "ghcr.io/uio/train:1"
    s.resources.gpus = 1
    s.resources.gpu_type = "H100"
    s.placement.allowed_jurisdictions.append("NO")
    s.placement.preferred_sites.append("narvik")
    s.placement.excluded_sites.append("abilene")
    s.labels["team"] = "nlp"
    s.env["EPOCHS"] = "3"
    s.client_request_id = "req-1"
    return s


def site() -> types_pb2.Site:
    s = types_pb2.Site(
        id="narvik", name="Narvik", jurisdiction="NO", owner="narvik-jv", endpoint="10.0.0.5:50052",
        cpus=64, memory_mb=65536,
    )  # fmt: skip
    s.regions.append("nordics")
    s.gpus.add(type="H100", count=8)
    s.home_countries.append("NO")
    s.policy.allowed_tenant_countries.append("NO")
    s.policy.allowed_tenants.append("uio-research")
    return s


def tenant() -> types_pb2.Tenant:
    t = types_pb2.Tenant(id="acme", country="US")
    t.quota_gpus_by_jurisdiction["US"] = 10
    return t


def offer() -> federation_pb2.CapacityOffer:
    o = federation_pb2.CapacityOffer(id="o-1", site_id="narvik")
    o.gpus.add(type="H100", count=100)
    o.tenant_countries.append("GB")
    o.jurisdictions.append("NORDICS")
    o.hours.add(start_hour=22, end_hour=6)
    return o


Check = Callable[[str], object]


def _set(make: Callable[[], Any], normalize: Callable[[Any], object], path: str) -> Check:
    """A check that sets ``path`` (dotted, ``[0]`` for the first list element) to the value."""

    def check(value: str) -> object:
        obj = make()
        *parents, leaf = path.split(".")
        target = obj
        for name in parents:
            target = getattr(target, name)
        if leaf.endswith("[0]"):
            getattr(target, leaf[:-3])[0] = value
        else:
            setattr(target, leaf, value)
        return normalize(obj)

    return check


def _map_key(make: Callable[[], Any], normalize: Callable[[Any], object], m: str) -> Check:
    def check(value: str) -> object:
        obj = make()
        getattr(obj, m)[value] = getattr(obj, m)[next(iter(getattr(obj, m)))]
        return normalize(obj)

    return check


def _label_value(value: str) -> object:
    s = spec()
    s.labels["team"] = value
    return normalize_spec(s)


def _policy(path: str) -> Check:
    def check(value: str) -> object:
        p = site().policy
        getattr(p, path)[0] = value
        return normalize_policy(p)

    return check


spec_n, site_n, tenant_n, offer_n = (
    normalize_spec,
    normalize_site,
    normalize_tenant,
    normalize_offer,
)

#: (check, the field the error must name (a prefix for map keys)).
FIELDS: dict[str, tuple[Check, str]] = {
    "spec.name": (_set(spec, spec_n, "name"), "name"),
    "spec.tenant": (_set(spec, spec_n, "tenant"), "tenant"),
    "spec.queue": (_set(spec, spec_n, "queue"), "queue"),
    "spec.image": (_set(spec, spec_n, "image"), "image"),
    "spec.client_request_id": (_set(spec, spec_n, "client_request_id"), "client_request_id"),
    "spec.gpu_type": (_set(spec, spec_n, "resources.gpu_type"), "resources.gpu_type"),
    "spec.allowed_jurisdictions": (
        _set(spec, spec_n, "placement.allowed_jurisdictions[0]"),
        "placement.allowed_jurisdictions[0]",
    ),
    "spec.preferred_sites": (
        _set(spec, spec_n, "placement.preferred_sites[0]"),
        "placement.preferred_sites[0]",
    ),
    "spec.excluded_sites": (
        _set(spec, spec_n, "placement.excluded_sites[0]"),
        "placement.excluded_sites[0]",
    ),
    "spec.labels.key": (_map_key(spec, spec_n, "labels"), "labels"),
    "spec.labels.value": (_label_value, "labels.team"),
    "spec.env.key": (_map_key(spec, spec_n, "env"), "env"),
    "site.id": (_set(site, site_n, "id"), "site.id"),
    "site.name": (_set(site, site_n, "name"), "site.name"),
    "site.owner": (_set(site, site_n, "owner"), "site.owner"),
    "site.jurisdiction": (_set(site, site_n, "jurisdiction"), "site.jurisdiction"),
    "site.endpoint": (_set(site, site_n, "endpoint"), "site.endpoint"),
    "site.regions": (_set(site, site_n, "regions[0]"), "site.regions[0]"),
    "site.home_countries": (_set(site, site_n, "home_countries[0]"), "site.home_countries[0]"),
    "site.policy.allowed_tenants": (
        _set(site, site_n, "policy.allowed_tenants[0]"),
        "site.policy.allowed_tenants[0]",
    ),
    "policy.allowed_tenant_countries": (
        _policy("allowed_tenant_countries"),
        "policy.allowed_tenant_countries[0]",
    ),
    "policy.allowed_tenants": (_policy("allowed_tenants"), "policy.allowed_tenants[0]"),
    "tenant.id": (_set(tenant, tenant_n, "id"), "tenant.id"),
    "tenant.country": (_set(tenant, tenant_n, "country"), "tenant.country"),
    "tenant.quota_key": (
        _map_key(tenant, tenant_n, "quota_gpus_by_jurisdiction"),
        "tenant.quota_gpus_by_jurisdiction",
    ),
    "offer.id": (_set(offer, offer_n, "id"), "offer.id"),
    "offer.site_id": (_set(offer, offer_n, "site_id"), "offer.site_id"),
    "offer.tenant_countries": (
        _set(offer, offer_n, "tenant_countries[0]"),
        "offer.tenant_countries[0]",
    ),
    "offer.jurisdictions": (
        _set(offer, offer_n, "jurisdictions[0]"),
        "offer.jurisdictions[0]",
    ),
    "site_id": (validate_site_id, "site_id"),
    "tenant_id": (validate_tenant_id, "tenant_id"),
    "partner_id": (validate_partner_id, "partner_id"),
}


#: Fields where '/' is part of ordinary values (an image is registry/path:tag).
SLASH_OK = frozenset({"spec.image"})


def test_the_untouched_objects_are_valid() -> None:
    normalize_spec(spec())
    normalize_site(site())
    normalize_tenant(tenant())
    normalize_offer(offer())
    normalize_policy(site().policy)


def assert_clean(err: InvalidSpecError) -> None:
    text = str(err)
    assert len(text) < 400
    assert "\n" not in text and "\x00" not in text
    assert not set(BIDI) & set(text)
    assert not set(BIDI) & set(err.field) and "\n" not in err.field and len(err.field) < 100


@pytest.mark.parametrize("hostile", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("name", FIELDS)
def test_hostile_values_are_refused_naming_the_field(name: str, hostile: str) -> None:
    check, field = FIELDS[name]
    if name in SLASH_OK and hostile == "a/b":
        check(hostile)
        return
    with pytest.raises(InvalidSpecError) as err:
        check(hostile)
    assert err.value.field == field or err.value.field.startswith(field)
    assert_clean(err.value)


@pytest.mark.parametrize("name", FIELDS)
@given(
    prefix=st.from_regex(r"[a-z]{1,5}", fullmatch=True),
    bad=st.sampled_from([*BIDI, "\x00", "\n", "\r", "\t", "\x1b", "\u2028", "\x7f", "\\", "/"]),
)
def test_any_control_bidi_or_separator_character_is_refused(
    name: str, prefix: str, bad: str
) -> None:
    check, field = FIELDS[name]
    if name in SLASH_OK and bad == "/":
        check(prefix + bad + "x")
        return
    with pytest.raises(InvalidSpecError) as err:
        check(prefix + bad + "x")
    assert err.value.field.startswith(field)
    assert_clean(err.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("site.name", "Abu Dhabi"),
        ("site.name", "Tromsø — Arctic"),
        ("site.endpoint", "[::1]:50052"),
        ("site.endpoint", "agent-1.narvik.example:443"),
        ("site.endpoint", "localhost:1"),
        ("spec.image", "nvcr.io/nvidia/pytorch:24.01-py3"),
        ("spec.image", "registry.local:5000/team/img@sha256:" + "a" * 64),
        ("spec.labels.value", "v1.2_rc-3"),
        ("spec.labels.value", ""),
    ],
)
def test_ordinary_values_still_pass(field: str, value: str) -> None:
    FIELDS[field][0](value)


@pytest.mark.parametrize(
    "endpoint",
    [
        "host",
        "host:",
        ":80",
        "host:0",
        "host:65536",
        "host:80:81",
        "-host:80",
        "ho st:80",
        "unix:/tmp/sock",
        "http://host:80",
        "::1:80",
        "host:80/",
        "h" * 300 + ":80",
    ],
)
def test_endpoints_are_host_and_port(endpoint: str) -> None:
    s = site()
    s.endpoint = endpoint
    with pytest.raises(InvalidSpecError) as err:
        normalize_site(s)
    assert err.value.field == "site.endpoint"


def test_label_keys_no_longer_take_a_slash() -> None:
    s = spec()
    s.labels["example.com/team"] = "nlp"
    with pytest.raises(InvalidSpecError) as err:
        normalize_spec(s)
    assert err.value.field == "labels['example.com/team']"


def test_images_with_traversal_are_refused() -> None:
    for image in ("registry/../etc:1", "registry//img", "img:1 --privileged"):
        s = spec()
        s.image = image
        with pytest.raises(InvalidSpecError) as err:
            normalize_spec(s)
        assert err.value.field == "image"


def test_reasons_are_one_line_of_bounded_text() -> None:
    validate_reason("maintenance window / see ticket ../42")  # free text: '/' and '..' are fine
    validate_reason("")
    for bad in ("a\x00", "a\nb", "a\u202eb", "x" * 10_000):
        with pytest.raises(InvalidSpecError) as err:
            validate_reason(bad)
        assert err.value.field == "reason"
        assert_clean(err.value)
    with pytest.raises(InvalidSpecError) as err:
        validate_reason("a\rb", field="cancel.reason")
    assert err.value.field == "cancel.reason"


# -- offers -------------------------------------------------------------------------------------


def test_a_valid_offer_is_kept_as_given() -> None:
    given_offer = offer()
    assert normalize_offer(given_offer) == given_offer
    only_jurisdictions = offer()
    del only_jurisdictions.tenant_countries[:]
    normalize_offer(only_jurisdictions)
    no_id = offer()
    no_id.id = ""
    normalize_offer(no_id)


def _broken(change: Callable[[federation_pb2.CapacityOffer], object]) -> str:
    o = offer()
    change(o)
    with pytest.raises(InvalidSpecError) as err:
        normalize_offer(o)
    return err.value.field


def test_offers_need_gpus_and_tenants() -> None:
    assert _broken(lambda o: o.ClearField("gpus")) == "offer.gpus"
    assert _broken(lambda o: setattr(o.gpus[0], "count", 0)) == "offer.gpus[0].count"
    assert _broken(lambda o: setattr(o.gpus[0], "type", "")) == "offer.gpus[0].type"
    assert _broken(lambda o: o.gpus.add(type="H100", count=1)) == "offer.gpus[1].type"
    assert (
        _broken(lambda o: (o.ClearField("tenant_countries"), o.ClearField("jurisdictions")))
        == "offer.tenant_countries"
    )
    assert _broken(lambda o: o.tenant_countries.append("UK")) == "offer.tenant_countries[1]"
    assert _broken(lambda o: o.tenant_countries.append("GB")) == "offer.tenant_countries[1]"
    assert _broken(lambda o: o.jurisdictions.append("MARS")) == "offer.jurisdictions[1]"
    assert _broken(lambda o: setattr(o, "site_id", "")) == "offer.site_id"


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [(24, 6, "start_hour"), (99, 6, "start_hour"), (0, 0, "end_hour"), (0, 25, "end_hour")],
)
def test_hour_windows(start: int, end: int, field: str) -> None:
    assert (
        _broken(lambda o: o.hours.add(start_hour=start, end_hour=end)) == f"offer.hours[1].{field}"
    )


def test_hour_windows_in_range_pass_and_at_most_24() -> None:
    o = offer()
    o.ClearField("hours")
    for h in range(24):
        o.hours.add(start_hour=h, end_hour=h + 1)
    normalize_offer(o)
    o.hours.add(start_hour=0, end_hour=24)
    with pytest.raises(InvalidSpecError) as err:
        normalize_offer(o)
    assert err.value.field == "offer.hours"
