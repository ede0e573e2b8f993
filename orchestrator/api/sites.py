"""``orchestrator.v1.SiteService``: proto in, one store call, proto out.

Errors propagate to ``orchestrator.api.errors.ErrorInterceptor``. A malformed site id is
INVALID_ARGUMENT naming ``site_id``; a well-formed id of no site is NOT_FOUND.

Sites are a public catalogue: anyone with ``sites:read`` lists them. Registering is for
operators; a site's state and policy may also be set by the partner that owns it (partners
normally use ``FederationService``); another partner's site is PERMISSION_DENIED.
"""

from __future__ import annotations

import logging
from typing import Any

from grpc import aio

from orchestrator._pb.orchestrator.v1 import service_pb2, service_pb2_grpc, types_pb2
from orchestrator.api.auth import current_principal
from orchestrator.errors import InvalidSpecError
from orchestrator.security.authz import check_site_managed
from orchestrator.store import JobStore
from orchestrator.validation import (
    normalize_policy,
    normalize_site,
    validate_reason,
    validate_site_id,
)

__all__ = ["SiteServiceServicer"]

log = logging.getLogger(__name__)

#: States an operator may set; LOST is the control plane's to set.
_SETTABLE = frozenset(
    {types_pb2.SITE_STATE_ACTIVE, types_pb2.SITE_STATE_CORDONED, types_pb2.SITE_STATE_DRAINING}
)


class SiteServiceServicer(service_pb2_grpc.SiteServiceServicer):
    """Register, list and administer sites on one :class:`JobStore`."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    async def RegisterSite(
        self, request: service_pb2.RegisterSiteRequest, context: aio.ServicerContext[Any, Any]
    ) -> service_pb2.RegisterSiteResponse:
        site = normalize_site(request.site)
        status = await self._store.register_site(site)
        log.info("site %s registered (agent at %s)", site.id, site.endpoint)
        return service_pb2.RegisterSiteResponse(site=status)

    async def ListSites(
        self, request: service_pb2.ListSitesRequest, context: aio.ServicerContext[Any, Any]
    ) -> service_pb2.ListSitesResponse:
        return service_pb2.ListSitesResponse(sites=await self._store.list_sites())

    async def GetSite(
        self, request: service_pb2.GetSiteRequest, context: aio.ServicerContext[Any, Any]
    ) -> service_pb2.GetSiteResponse:
        validate_site_id(request.site_id)
        return service_pb2.GetSiteResponse(site=await self._store.get_site(request.site_id))

    async def SetSiteState(
        self, request: service_pb2.SetSiteStateRequest, context: aio.ServicerContext[Any, Any]
    ) -> service_pb2.SetSiteStateResponse:
        validate_site_id(request.site_id)
        if request.state not in _SETTABLE:
            raise InvalidSpecError("state", "must be ACTIVE, CORDONED or DRAINING")
        validate_reason(request.reason)
        owner = await self._store.site_owner(request.site_id)
        check_site_managed(current_principal(), request.site_id, owner)
        status = await self._store.set_site_state(
            request.site_id, request.state, reason=request.reason
        )
        log.info(
            "site %s set to %s: %s",
            request.site_id,
            types_pb2.SiteState.Name(request.state),
            request.reason or "(no reason)",
        )
        return service_pb2.SetSiteStateResponse(site=status)

    async def SetSitePolicy(
        self, request: service_pb2.SetSitePolicyRequest, context: aio.ServicerContext[Any, Any]
    ) -> service_pb2.SetSitePolicyResponse:
        validate_site_id(request.site_id)
        policy = normalize_policy(request.policy)
        owner = await self._store.site_owner(request.site_id)
        check_site_managed(current_principal(), request.site_id, owner)
        status = await self._store.set_site_policy(request.site_id, policy)
        log.info("site %s policy set", request.site_id)
        return service_pb2.SetSitePolicyResponse(site=status)
