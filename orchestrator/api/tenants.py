"""``orchestrator.v1.TenantService``: proto in, one store call, proto out.

A tenant's own principal sees only its own tenant (another one is NOT_FOUND); operators see
and change all of them.
"""

from __future__ import annotations

import logging
from typing import Any

from grpc import aio

from orchestrator._pb.orchestrator.v1 import service_pb2, service_pb2_grpc
from orchestrator.api.auth import current_principal
from orchestrator.security.authz import check_tenant_visible
from orchestrator.security.tokens import Kind
from orchestrator.store import JobStore
from orchestrator.validation import normalize_tenant, validate_tenant_id

__all__ = ["TenantServiceServicer"]

log = logging.getLogger(__name__)


class TenantServiceServicer(service_pb2_grpc.TenantServiceServicer):
    """Create, read and list tenants on one :class:`JobStore`."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    async def PutTenant(
        self, request: service_pb2.PutTenantRequest, context: aio.ServicerContext[Any, Any]
    ) -> service_pb2.PutTenantResponse:
        tenant = normalize_tenant(request.tenant)
        status = await self._store.put_tenant(tenant)
        log.info("tenant %s set (country %s)", tenant.id, tenant.country or "-")
        return service_pb2.PutTenantResponse(tenant=status)

    async def GetTenant(
        self, request: service_pb2.GetTenantRequest, context: aio.ServicerContext[Any, Any]
    ) -> service_pb2.GetTenantResponse:
        validate_tenant_id(request.tenant_id)
        check_tenant_visible(current_principal(), request.tenant_id)
        return service_pb2.GetTenantResponse(tenant=await self._store.get_tenant(request.tenant_id))

    async def ListTenants(
        self, request: service_pb2.ListTenantsRequest, context: aio.ServicerContext[Any, Any]
    ) -> service_pb2.ListTenantsResponse:
        principal = current_principal()
        tenants = await self._store.list_tenants()
        if principal.kind is Kind.TENANT:
            tenants = [t for t in tenants if t.tenant.id == principal.tenant]
        return service_pb2.ListTenantsResponse(tenants=tenants)
