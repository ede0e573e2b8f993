"""Authorisation: which scope each API method needs, and who may see or change which object.

Default deny: a method missing from :data:`METHOD_SCOPES` is refused to everyone, and every
per-object check lets through only the kinds of caller it names. Objects a caller must not
learn exist (another tenant's job or tenant) answer exactly as a missing one would; sites are a
public catalogue, so changing another partner's site answers PERMISSION_DENIED.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.errors import (
    JobNotFoundError,
    PermissionDeniedError,
    TenantNotFoundError,
)
from orchestrator.security.tokens import (
    FEDERATION_ADMIN,
    FEDERATION_ENROL,
    FEDERATION_MANAGE,
    JOBS_CANCEL,
    JOBS_READ,
    JOBS_SUBMIT,
    SITES_ADMIN,
    SITES_READ,
    TENANTS_ADMIN,
    TENANTS_READ,
    USAGE_READ,
    Kind,
    Principal,
)

__all__ = [
    "METHOD_SCOPES",
    "authorize_method",
    "check_job_visible",
    "check_site_managed",
    "check_submit",
    "check_tenant_visible",
    "list_tenant_filter",
    "site_visible_to",
    "tenant_visible_to",
]

_JOBS = "/orchestrator.v1.JobService/"
_SITES = "/orchestrator.v1.SiteService/"
_TENANTS = "/orchestrator.v1.TenantService/"
_FEDERATION = "/orchestrator.v1.FederationService/"

#: Full gRPC method name -> the one scope a caller needs to call it.
METHOD_SCOPES: Final[Mapping[str, str]] = MappingProxyType(
    {
        _JOBS + "SubmitJob": JOBS_SUBMIT,
        _JOBS + "SubmitJobs": JOBS_SUBMIT,
        _JOBS + "GetJob": JOBS_READ,
        _JOBS + "ListJobs": JOBS_READ,
        _JOBS + "WatchEvents": JOBS_READ,
        _JOBS + "StreamLogs": JOBS_READ,
        _JOBS + "ExplainJob": JOBS_READ,
        _JOBS + "CancelJob": JOBS_CANCEL,
        _SITES + "ListSites": SITES_READ,
        _SITES + "GetSite": SITES_READ,
        _SITES + "RegisterSite": SITES_ADMIN,
        _SITES + "SetSiteState": SITES_ADMIN,
        _SITES + "SetSitePolicy": SITES_ADMIN,
        _TENANTS + "PutTenant": TENANTS_ADMIN,
        _TENANTS + "GetTenant": TENANTS_READ,
        _TENANTS + "ListTenants": TENANTS_READ,
        _FEDERATION + "CreateEnrolment": FEDERATION_ADMIN,
        _FEDERATION + "Enrol": FEDERATION_ENROL,
        _FEDERATION + "RegisterSite": FEDERATION_MANAGE,
        _FEDERATION + "OfferCapacity": FEDERATION_MANAGE,
        _FEDERATION + "ListOffers": FEDERATION_MANAGE,
        _FEDERATION + "WithdrawCapacity": FEDERATION_MANAGE,
        _FEDERATION + "SetSitePolicy": FEDERATION_MANAGE,
        _FEDERATION + "GetUsage": USAGE_READ,
    }
)


def _short(method: str) -> str:
    """``/orchestrator.v1.JobService/SubmitJob`` -> ``JobService.SubmitJob``."""
    service, _, name = method.lstrip("/").partition("/")
    return f"{service.rsplit('.', 1)[-1]}.{name}"


def authorize_method(principal: Principal, method: str) -> None:
    """Raise ``PermissionDeniedError`` unless ``principal`` holds the scope ``method`` needs.

    ``method`` is the full gRPC name (``/orchestrator.v1.JobService/SubmitJob``); an unknown
    one is refused to everyone.
    """
    scope = METHOD_SCOPES.get(method)
    if scope is None:
        shown = method if len(method) <= 100 else method[:100] + "..."
        raise PermissionDeniedError(
            f"method {shown!r} is not open to any caller", principal=principal.name
        )
    if scope not in principal.scopes:
        raise PermissionDeniedError(
            f"{_short(method)} needs scope {scope!r}, which this {principal.kind} token lacks",
            principal=principal.name,
        )


def check_submit(principal: Principal, spec: types_pb2.JobSpec) -> types_pb2.JobSpec:
    """The spec to submit for ``principal``: a tenant's own tenant filled in when empty.

    A tenant token submitting for another tenant, or any caller other than an operator or a
    tenant, is ``PermissionDeniedError``.
    """
    if principal.kind is Kind.OPERATOR:
        return spec
    if principal.kind is not Kind.TENANT:
        raise PermissionDeniedError(
            f"{principal.kind} tokens cannot submit jobs", principal=principal.name
        )
    if not spec.tenant:
        out = types_pb2.JobSpec()
        out.CopyFrom(spec)
        out.tenant = principal.tenant
        return out
    if spec.tenant != principal.tenant:
        raise PermissionDeniedError(
            f"this token is for tenant {principal.tenant!r}; it cannot submit for another",
            principal=principal.name,
        )
    return spec


def check_job_visible(principal: Principal, job: types_pb2.Job) -> None:
    """Raise ``JobNotFoundError`` (as for a missing job) unless ``principal`` may see ``job``:
    operators see every job, tenants their own tenant's."""
    if principal.kind is Kind.OPERATOR:
        return
    if principal.kind is Kind.TENANT and job.spec.tenant == principal.tenant:
        return
    raise JobNotFoundError(job.id)


def list_tenant_filter(principal: Principal, requested: str) -> str:
    """The tenant a job listing is restricted to ("" for all): a tenant token always gets its
    own tenant, and asking for another is ``PermissionDeniedError``."""
    if principal.kind is Kind.OPERATOR:
        return requested
    if principal.kind is Kind.TENANT:
        if requested and requested != principal.tenant:
            raise PermissionDeniedError(
                f"this token is for tenant {principal.tenant!r}; it cannot list another's jobs",
                principal=principal.name,
            )
        return principal.tenant
    raise PermissionDeniedError(
        f"{principal.kind} tokens cannot list jobs", principal=principal.name
    )


def tenant_visible_to(principal: Principal, tenant_id: str) -> bool:
    """Whether ``principal`` may see tenant ``tenant_id`` (for filtering listings)."""
    if principal.kind is Kind.OPERATOR:
        return True
    return principal.kind is Kind.TENANT and tenant_id == principal.tenant


def check_tenant_visible(principal: Principal, tenant_id: str) -> None:
    """Raise ``TenantNotFoundError`` (as for a missing tenant) unless ``principal`` may see
    ``tenant_id``: operators see every tenant, a tenant token its own."""
    if not tenant_visible_to(principal, tenant_id):
        raise TenantNotFoundError(tenant_id)


def check_site_managed(principal: Principal, site_id: str, owner: str) -> None:
    """Raise ``PermissionDeniedError`` unless ``principal`` may change site ``site_id`` owned by
    ``owner``: operators any site, partners the sites they own, nobody else any."""
    if principal.kind is Kind.OPERATOR:
        return
    if principal.kind is Kind.PARTNER and owner and owner == principal.partner:
        return
    raise PermissionDeniedError(f"site {site_id!r} is not yours", principal=principal.name)


def site_visible_to(principal: Principal, owner: str) -> bool:
    """Whether a site owned by ``owner`` shows in ``principal``'s listings: operators and
    tenants see every site (the catalogue is public), partners in federation listings only
    their own, enrolment tokens none."""
    if principal.kind in (Kind.OPERATOR, Kind.TENANT):
        return True
    if principal.kind is Kind.PARTNER:
        return bool(owner) and owner == principal.partner
    return False
