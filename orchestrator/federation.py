"""Capacity offers: when they hold, whom they are for, and the site policy they add up to.

Pure functions (no gRPC, no Redis). The store keeps each site's offers and applies
``effective_policy`` to what placement enforces (the scheduler's snapshot and the store's
commit check); the scheduler re-applies it as hour windows open and close.

A site's *base* policy is what its owner set (``Site.policy``). Its *effective* policy is the
base one when the site has no offers, and otherwise the base one narrowed to the home ecosystem
plus what the offers that hold now open to others (see ``effective_policy``).
"""

from __future__ import annotations

from collections.abc import Iterable

from orchestrator._pb.orchestrator.v1 import federation_pb2, types_pb2
from orchestrator.jurisdictions import expand

__all__ = [
    "NO_COUNTRY",
    "effective_policy",
    "offer_active",
    "offer_countries",
    "offer_gpus",
    "utc_hour",
]

NO_COUNTRY = "none"
"""Stands alone in an effective ``allowed_tenant_countries`` that would otherwise be empty (an
empty list means "any country"): no tenant has this country, so none is let in by country."""


_UINT32_MAX = 2**32 - 1


def utc_hour(now_epoch: float) -> int:
    """The hour of the day (0-23, UTC) at ``now_epoch`` seconds."""
    return int(now_epoch // 3600) % 24


def _in_window(window: federation_pb2.HourWindow, hour: int) -> bool:
    start, end = window.start_hour, window.end_hour
    if end > start:
        return start <= hour < end
    return hour >= start or hour < end  # wraps past midnight (end == start: all day)


def offer_active(offer: federation_pb2.CapacityOffer, now_epoch: float) -> bool:
    """Whether ``offer`` holds at ``now_epoch``: always without hour windows, else when the UTC
    hour is in one of them ([start_hour, end_hour); end_hour <= start_hour wraps midnight)."""
    if not offer.hours:
        return True
    hour = utc_hour(now_epoch)
    return any(_in_window(w, hour) for w in offer.hours)


def offer_countries(offer: federation_pb2.CapacityOffer) -> frozenset[str]:
    """The tenant countries an offer is for: its countries and its jurisdictions expanded."""
    return frozenset(offer.tenant_countries) | expand(offer.jurisdictions)


def offer_gpus(offer: federation_pb2.CapacityOffer) -> int:
    """GPUs an offer adds to the site's surplus limit (all types together)."""
    return sum(pool.count for pool in offer.gpus)


def effective_policy(
    base: types_pb2.SitePolicy,
    home_countries: Iterable[str],
    offers: Iterable[federation_pb2.CapacityOffer],
    now: float,
) -> types_pb2.SitePolicy:
    """The policy placement enforces at a site with these offers at ``now``.

    - No offers: ``base`` exactly.
    - With offers (whether or not any holds now):

      * ``allowed_tenant_countries``: the countries of the offers that hold now, plus the
        countries the base policy lets in: its own list, or the home countries when it lets
        anyone in (both lists empty). Offers only ever add: a base that names who may run keeps
        its list (home countries are not added to it). Should the result be empty, it is
        ``[NO_COUNTRY]``, so tenants from elsewhere still cannot run there.
      * ``allowed_tenants``: the base list.
      * a surplus limit (``has_surplus_limit``) of the base limit (0 without one) plus the
        GPUs of the offers that hold now. Offers name GPU types and counts; the types are kept
        with the offer, but the limit covers non-home GPUs of every type together. As
        everywhere, the limit binds only at sites with home countries.
    """
    offers = list(offers)
    out = types_pb2.SitePolicy()
    if not offers:
        out.CopyFrom(base)
        return out
    active = [o for o in offers if offer_active(o, now)]
    open_to_all = not base.allowed_tenant_countries and not base.allowed_tenants
    countries: set[str] = set(home_countries) if open_to_all else set()
    countries |= set(base.allowed_tenant_countries)
    for offer in active:
        countries |= offer_countries(offer)
    out.allowed_tenant_countries.extend(sorted(countries) or [NO_COUNTRY])
    out.allowed_tenants.extend(sorted(set(base.allowed_tenants)))
    out.has_surplus_limit = True
    base_limit = base.surplus_gpus if base.has_surplus_limit else 0
    out.surplus_gpus = min(base_limit + sum(offer_gpus(o) for o in active), _UINT32_MAX)
    return out
