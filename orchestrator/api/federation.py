"""``orchestrator.v1.FederationService``: partners plug their own sites into the federation.

Proto in, checks and one store call, proto out; errors propagate to the interceptor. Every
site-scoped call checks that the calling partner owns the site (operators may act on any);
listings without a site name cover the sites the caller manages.

Enrolment: an operator's ``CreateEnrolment`` signs a token of kind ``enrolment`` for one
partner; the partner's ``Enrol`` spends it (once: its id is recorded in the store) and gets
its own partner token. Both need the API server's token signing key.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from orchestrator._pb.orchestrator.v1 import (
    federation_pb2,
    federation_pb2_grpc,
    service_pb2,
)
from orchestrator.api.auth import current_principal
from orchestrator.config import TlsFiles
from orchestrator.errors import (
    InvalidSpecError,
    PermissionDeniedError,
    ServiceUnavailableError,
    UnauthenticatedError,
)
from orchestrator.security.authz import check_site_managed, site_visible_to
from orchestrator.security.certs import certificate_not_after, sign_csr, site_server_name
from orchestrator.security.tokens import Kind, Principal, TokenSigner
from orchestrator.store import JobStore
from orchestrator.validation import (
    normalize_offer,
    normalize_policy,
    normalize_site,
    validate_partner_id,
    validate_reason,
    validate_site_id,
)

__all__ = ["FederationServicer"]

log = logging.getLogger(__name__)

_DAY = 24 * 3600
_ENROLMENT_TTL = (_DAY, 30 * _DAY)  # default, most
_PARTNER_TTL = (90 * _DAY, 365 * _DAY)
_MAX_SITES = 1000
_MODES = frozenset(federation_pb2.WithdrawMode.values())


def _ttl(requested: int, bounds: tuple[int, int], field: str) -> int:
    default, most = bounds
    if requested > most:
        raise InvalidSpecError(field, f"at most {most} seconds")
    return requested or default


def _timestamp(epoch: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(epoch * 1e9))
    return ts


class FederationServicer(federation_pb2_grpc.FederationServiceServicer):
    """The partner federation API on one :class:`JobStore`.

    ``signer`` mints enrolment and partner tokens (None: those calls are UNAVAILABLE);
    ``issuing_ca`` signs the certificates of partners' sites (None: a CSR is refused);
    ``agent_ca`` is the CA certificate returned to partners (the one the control plane's
    certificate comes from).
    """

    def __init__(
        self,
        store: JobStore,
        *,
        signer: TokenSigner | None = None,
        audience: str = "sovereign-grid",
        issuing_ca: TlsFiles | None = None,
        agent_ca: Path | None = None,
    ) -> None:
        self._store = store
        self._signer = signer
        self._audience = audience
        self._issuing_ca = issuing_ca
        self._agent_ca = agent_ca

    def _need_signer(self) -> TokenSigner:
        if self._signer is None:
            raise ServiceUnavailableError(
                "this API server cannot issue tokens: no token signing key is configured"
            )
        return self._signer

    async def _managed(self, principal: Principal, site_id: str) -> None:
        validate_site_id(site_id)
        check_site_managed(principal, site_id, await self._store.site_owner(site_id))

    async def _managed_sites(self, principal: Principal, site_ids: list[str]) -> list[str]:
        """``site_ids`` after checking each (empty: every site the caller manages)."""
        if len(site_ids) > _MAX_SITES:
            raise InvalidSpecError("site_ids", f"more than {_MAX_SITES} sites")
        if site_ids:
            for site_id in site_ids:
                await self._managed(principal, site_id)
            return sorted(set(site_ids))
        return sorted(
            r.site.id
            for r in await self._store.site_records()
            if site_visible_to(principal, r.site.owner)
        )

    # ---------------------------------------------------------------- enrolment

    async def CreateEnrolment(
        self, request: federation_pb2.CreateEnrolmentRequest, context: aio.ServicerContext[Any, Any]
    ) -> federation_pb2.CreateEnrolmentResponse:
        validate_partner_id(request.partner_id)
        ttl = _ttl(request.ttl_seconds, _ENROLMENT_TTL, "ttl_seconds")
        token, issued = self._need_signer().issue(
            Kind.ENROLMENT,
            request.partner_id,
            partner=request.partner_id,
            ttl_seconds=ttl,
            audience=self._audience,
        )
        log.info(
            "enrolment token for partner %s issued by %s (expires in %ds)",
            request.partner_id, current_principal().name, ttl,
        )  # fmt: skip
        return federation_pb2.CreateEnrolmentResponse(
            token=token, expires_at=_timestamp(issued.expires_at)
        )

    async def Enrol(
        self, request: federation_pb2.EnrolRequest, context: aio.ServicerContext[Any, Any]
    ) -> federation_pb2.EnrolResponse:
        principal = current_principal()
        if principal.kind is not Kind.ENROLMENT:
            raise PermissionDeniedError("Enrol takes an enrolment token", principal=principal.name)
        ttl = _ttl(request.ttl_seconds, _PARTNER_TTL, "ttl_seconds")
        signer = self._need_signer()
        if not await self._store.consume_once(principal.token_id, expires_at=principal.expires_at):
            raise UnauthenticatedError("this enrolment token was already used")
        token, issued = signer.issue(
            Kind.PARTNER,
            principal.partner,
            partner=principal.partner,
            ttl_seconds=ttl,
            audience=self._audience,
        )
        log.info("partner %s enrolled", principal.partner)
        return federation_pb2.EnrolResponse(
            partner_id=principal.partner, token=token, expires_at=_timestamp(issued.expires_at)
        )

    # ---------------------------------------------------------------- sites

    async def RegisterSite(
        self,
        request: federation_pb2.RegisterPartnerSiteRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> federation_pb2.RegisterPartnerSiteResponse:
        principal = current_principal()
        site = normalize_site(request.site)
        if principal.kind is Kind.PARTNER:
            if site.owner and site.owner != principal.partner:
                raise PermissionDeniedError(
                    f"a partner registers sites for itself, not for {site.owner!r}",
                    principal=principal.name,
                )
            site.owner = principal.partner
        identity = federation_pb2.SiteIdentity(
            site_id=site.id, tls_server_name=site_server_name(site.id)
        )
        if self._agent_ca is not None:
            identity.ca_pem = self._agent_ca.read_text()
        if request.csr_pem:
            # signed before anything is written: a bad CSR leaves no half-registered site
            if (
                self._issuing_ca is None
                or self._issuing_ca.cert is None
                or self._issuing_ca.key is None
            ):
                raise ServiceUnavailableError(
                    "this API server issues no site certificates: no issuing CA is configured"
                )
            cert = sign_csr(
                self._issuing_ca.cert.read_bytes(),
                self._issuing_ca.key.read_bytes(),
                request.csr_pem,
                site_id=site.id,
            )
            identity.certificate_pem = cert.decode()
            identity.not_after.FromDatetime(certificate_not_after(cert))
        owner = site.owner if principal.kind is Kind.PARTNER else None
        status = await self._store.register_site(site, owner=owner)
        log.info("site %s registered by %s (agent at %s)", site.id, principal.name, site.endpoint)
        return federation_pb2.RegisterPartnerSiteResponse(site=status, identity=identity)

    async def SetSitePolicy(
        self, request: service_pb2.SetSitePolicyRequest, context: aio.ServicerContext[Any, Any]
    ) -> service_pb2.SetSitePolicyResponse:
        await self._managed(current_principal(), request.site_id)
        policy = normalize_policy(request.policy)
        status = await self._store.set_site_policy(request.site_id, policy)
        log.info("site %s policy set by %s", request.site_id, current_principal().name)
        return service_pb2.SetSitePolicyResponse(site=status)

    # ---------------------------------------------------------------- capacity

    async def OfferCapacity(
        self, request: federation_pb2.OfferCapacityRequest, context: aio.ServicerContext[Any, Any]
    ) -> federation_pb2.OfferCapacityResponse:
        offer = normalize_offer(request.offer)
        await self._managed(current_principal(), offer.site_id)
        stored = await self._store.put_offer(offer)
        log.info(
            "site %s: capacity offer %s by %s", offer.site_id, stored.id, current_principal().name
        )
        return federation_pb2.OfferCapacityResponse(
            offer=stored, site=await self._store.get_site(offer.site_id)
        )

    async def ListOffers(
        self, request: federation_pb2.ListOffersRequest, context: aio.ServicerContext[Any, Any]
    ) -> federation_pb2.ListOffersResponse:
        wanted = [request.site_id] if request.site_id else []
        sites = await self._managed_sites(current_principal(), wanted)
        return federation_pb2.ListOffersResponse(offers=await self._store.list_offers(sites))

    async def WithdrawCapacity(
        self,
        request: federation_pb2.WithdrawCapacityRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> federation_pb2.WithdrawCapacityResponse:
        principal = current_principal()
        if request.mode not in _MODES:
            raise InvalidSpecError("mode", f"{request.mode} is not a withdraw mode")
        validate_reason(request.reason)
        await self._managed(principal, request.site_id)
        status, requeued, running = await self._store.withdraw(
            request.site_id, offer_id=request.offer_id, mode=request.mode, reason=request.reason
        )
        log.info(
            "site %s: %s withdrawn by %s (%s): %d requeued, %d still running",
            request.site_id, f"offer {request.offer_id}" if request.offer_id else "the site",
            principal.name, federation_pb2.WithdrawMode.Name(request.mode), requeued, running,
        )  # fmt: skip
        return federation_pb2.WithdrawCapacityResponse(
            site=status, requeued=requeued, still_running=running
        )

    # ---------------------------------------------------------------- usage

    async def GetUsage(
        self, request: federation_pb2.GetUsageRequest, context: aio.ServicerContext[Any, Any]
    ) -> federation_pb2.GetUsageResponse:
        sites = await self._managed_sites(current_principal(), list(request.site_ids))
        return federation_pb2.GetUsageResponse(sites=await self._store.usage(sites))
