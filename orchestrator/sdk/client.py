"""``AsyncClient``: the one implementation of the SDK, on grpc.aio.

    async with await AsyncClient.connect("127.0.0.1:50051") as client:
        job = await client.submit(JobSpec(name="hello", tenant="acme", command=["echo", "hi"]))
        final = await job.wait(timeout=60)

With TLS and a bearer token (what a deployed API server asks for):

    client = await AsyncClient.connect(
        "api.example.org:50051", tls=TlsFiles(ca=Path("ca.pem")), token=os.environ["SG_TOKEN"]
    )

Every call carries the caller's trace context (``traceparent``) in its metadata; ``submit``
opens a client span ``sdk.submit`` so a job's trace starts here (``submit_many``: one span
``sdk.submit_batch`` per call, shared by the trace of every job in it). Failures raise the
classes of ``orchestrator.errors`` (mapped back from status codes by ``orchestrator.sdk.errors``).
The synchronous ``Client`` (``orchestrator.sdk.sync``) runs this class on a private loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Iterable,
    Iterator,
    Sequence,
)
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace

from orchestrator._pb.orchestrator.v1 import (
    federation_pb2,
    federation_pb2_grpc,
    service_pb2,
    service_pb2_grpc,
    types_pb2,
)
from orchestrator.config import TlsFiles
from orchestrator.errors import InvalidSpecError, ServiceUnavailableError, WaitTimeoutError
from orchestrator.sdk.errors import error_from_rpc
from orchestrator.sdk.job import AsyncJob
from orchestrator.security.tls import channel_credentials, channel_options_for
from orchestrator.spec import JobSpec
from orchestrator.states import JobState
from orchestrator.tracing import get_tracer, metadata_with_trace

__all__ = ["AsyncClient"]

log = logging.getLogger(__name__)
_tracer = get_tracer(__name__)

T = TypeVar("T")

_JOB_SERVICE = "orchestrator.v1.JobService"
_PAGE_SIZE = 500
_MAX_BATCH = 10_000  # the API's limit on specs per SubmitJobs call
_MAX_BATCH_BYTES = 2 * 1024 * 1024  # of encoded specs per call: the request, and the answer
# (which repeats each spec with its job's fields), stay under gRPC's default 4 MiB
_RECONNECT_ATTEMPTS = 5
_WITHDRAW_MODES = {
    "finish": federation_pb2.WITHDRAW_MODE_FINISH,
    "requeue": federation_pb2.WITHDRAW_MODE_REQUEUE,
}


def _channel(address: str, tls: TlsFiles | bool | None, server_name: str | None) -> aio.Channel:
    if tls is None or tls is False:
        return aio.insecure_channel(address)
    creds = grpc.ssl_channel_credentials() if tls is True else channel_credentials(tls)
    options = channel_options_for(server_name) if server_name else []
    return aio.secure_channel(address, creds, options=options)


def _state(value: int) -> JobState | None:
    try:
        return JobState(value)
    except ValueError:
        return None


def _name(value: int) -> str:
    state = _state(value)
    return state.name if state is not None else str(value)


def _is_terminal(value: int) -> bool:
    state = _state(value)
    return state is not None and state.is_terminal()


def _states(states: Iterable[JobState | str]) -> list[types_pb2.JobState.ValueType]:
    out = []
    for s in states:
        state = s if isinstance(s, JobState) else JobState.from_name(s)
        out.append(types_pb2.JobState.ValueType(state.value))
    return out


def _batches(
    specs: Iterable[JobSpec | types_pb2.JobSpec], size: int
) -> Iterator[list[types_pb2.JobSpec]]:
    """``specs`` as protos, in runs of at most ``size`` specs and about ``_MAX_BATCH_BYTES``
    (a spec larger than that goes alone, and the server judges it)."""
    batch: list[types_pb2.JobSpec] = []
    nbytes = 0
    for spec in specs:
        pb = spec.to_proto() if isinstance(spec, JobSpec) else spec
        spec_bytes = pb.ByteSize() + 8  # with its tag and length
        if batch and (len(batch) >= size or nbytes + spec_bytes > _MAX_BATCH_BYTES):
            yield batch
            batch, nbytes = [], 0
        batch.append(pb)
        nbytes += spec_bytes
    if batch:
        yield batch


class AsyncClient:
    """A connection to the API server. Make one with :meth:`connect`; close it when done."""

    def __init__(
        self,
        channel: aio.Channel,
        *,
        address: str,
        timeout: float,
        metadata: Sequence[tuple[str, str]],
    ) -> None:
        """Wrap an open channel; most callers want :meth:`connect`."""
        self._channel = channel
        self._address = address
        self._timeout = timeout
        self._metadata = tuple(metadata)
        self._jobs = service_pb2_grpc.JobServiceStub(channel)
        self._sites = service_pb2_grpc.SiteServiceStub(channel)
        self._tenants = service_pb2_grpc.TenantServiceStub(channel)
        self._federation = federation_pb2_grpc.FederationServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)

    @classmethod
    async def connect(
        cls,
        address: str,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 - the default deadline of every later call
        metadata: Sequence[tuple[str, str]] = (),
        token: str | None = None,
        tls: TlsFiles | bool | None = None,
        server_name: str | None = None,
    ) -> AsyncClient:
        """Connect to the API server at ``host:port`` and check that it is serving.

        ``timeout`` bounds each unary call (streams that follow a job are unbounded);
        ``metadata`` is sent with every call, and so is ``token`` as ``authorization: Bearer``.
        ``tls``: None or False for plaintext, True for TLS verified against the system's CAs,
        or ``TlsFiles(ca=...)`` for a CA of your own (a client certificate in it is presented
        too); ``server_name`` checks the server's certificate for that name instead of the
        address's host. Raises ``ServiceUnavailableError`` at once if nothing answers at
        ``address`` (or the TLS handshake fails).
        """
        if token is not None and (not token or any(c.isspace() for c in token)):
            raise InvalidSpecError("token", "is empty or contains whitespace")
        channel = _channel(address, tls, server_name)
        if token:
            metadata = (*metadata, ("authorization", f"Bearer {token}"))
        client = cls(channel, address=address, timeout=timeout, metadata=metadata)
        try:
            await client._check_serving()
        except BaseException:
            await channel.close()
            raise
        return client

    async def _check_serving(self) -> None:
        request = health_pb2.HealthCheckRequest(service=_JOB_SERVICE)
        response = await self._call(
            self._health.Check(request, timeout=self._timeout, metadata=self._meta())
        )
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            raise ServiceUnavailableError(
                f"the API server at {self._address} is not serving (it may be shutting down)"
            )

    @property
    def address(self) -> str:
        """``host:port`` of the API server."""
        return self._address

    async def close(self) -> None:
        """Close the connection; open streams end."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---------------------------------------------------------------- plumbing

    def _meta(self) -> list[tuple[str, str]]:
        return metadata_with_trace(self._metadata)

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except aio.AioRpcError as exc:
            raise error_from_rpc(exc, address=self._address) from exc

    async def _stream(self, call: Any) -> AsyncGenerator[Any, None]:
        try:
            async for item in call:
                yield item
        except aio.AioRpcError as exc:
            raise error_from_rpc(exc, address=self._address) from exc
        finally:
            call.cancel()

    # ---------------------------------------------------------------- jobs

    async def submit(self, spec: JobSpec | types_pb2.JobSpec) -> AsyncJob:
        """Submit a job; returns its handle (``.info`` holds the accepted job).

        A retry with the same ``client_request_id`` returns the same job, with
        ``deduplicated`` set on the handle.
        """
        pb = spec.to_proto() if isinstance(spec, JobSpec) else spec
        with _tracer.start_as_current_span(
            "sdk.submit",
            kind=trace.SpanKind.CLIENT,
            attributes={"job.name": pb.name, "job.tenant": pb.tenant},
        ) as span:
            response = await self._call(
                self._jobs.SubmitJob(
                    service_pb2.SubmitJobRequest(spec=pb),
                    timeout=self._timeout,
                    metadata=self._meta(),
                )
            )
            span.set_attribute("job.id", response.job.id)
        return AsyncJob(
            self, response.job.id, info=response.job, deduplicated=response.deduplicated
        )

    async def submit_many(
        self,
        specs: Sequence[JobSpec | types_pb2.JobSpec],
        *,
        batch_size: int = 1000,
        concurrency: int = 1,
    ) -> list[AsyncJob]:
        """Submit many jobs; returns their handles, in the order of ``specs``.

        The specs go in ``SubmitJobs`` calls of at most ``batch_size`` specs (1 to 10,000)
        and about 2 MiB each, ``concurrency`` calls in flight at a time (1: one after
        another, so the jobs enter their queues in the order of ``specs``; more overlaps the
        calls for speed, and calls may then land out of order). Each call is all or nothing:
        one bad spec fails it (``InvalidSpecError`` naming ``specs[i].<field>``, ``i``
        counted within that call) with none of its jobs written, and the error is raised.
        Other calls of the same list may have been accepted by then: give each spec a
        ``client_request_id``, and a retry of the whole list returns their jobs
        (``deduplicated``) instead of making them again.
        """
        if not 1 <= batch_size <= _MAX_BATCH:
            raise InvalidSpecError("batch_size", f"must be 1 to {_MAX_BATCH}, got {batch_size}")
        if concurrency < 1:
            raise InvalidSpecError("concurrency", f"must be at least 1, got {concurrency}")
        jobs: list[AsyncJob] = []
        window: collections.deque[asyncio.Task[list[AsyncJob]]] = collections.deque()
        try:
            for batch in _batches(specs, batch_size):
                if len(window) >= concurrency:
                    jobs += await window.popleft()
                window.append(asyncio.ensure_future(self._submit_batch(batch)))
            while window:
                jobs += await window.popleft()
        finally:
            for task in window:
                task.cancel()
            await asyncio.gather(*window, return_exceptions=True)
        return jobs

    async def _submit_batch(self, batch: list[types_pb2.JobSpec]) -> list[AsyncJob]:
        """One SubmitJobs call, in its own client span."""
        with _tracer.start_as_current_span(
            "sdk.submit_batch", kind=trace.SpanKind.CLIENT, attributes={"jobs.count": len(batch)}
        ):
            response = await self._call(
                self._jobs.SubmitJobs(
                    service_pb2.SubmitJobsRequest(specs=batch),
                    timeout=self._timeout,
                    metadata=self._meta(),
                )
            )
        return [
            AsyncJob(self, r.job.id, info=r.job, deduplicated=r.deduplicated)
            for r in response.results
        ]

    def job(self, job_id: str) -> AsyncJob:
        """A handle on job ``job_id`` (no call is made)."""
        return AsyncJob(self, job_id)

    async def get_job(self, job_id: str) -> types_pb2.Job:
        """The job record. Raises ``JobNotFoundError``."""
        response = await self._call(
            self._jobs.GetJob(
                service_pb2.GetJobRequest(job_id=job_id),
                timeout=self._timeout,
                metadata=self._meta(),
            )
        )
        return response.job

    async def list_jobs(
        self,
        *,
        states: Iterable[JobState | str] = (),
        tenant: str = "",
        queue: str = "",
        site: str = "",
        limit: int | None = None,
    ) -> list[types_pb2.Job]:
        """Jobs newest first, filtered; pages through until ``limit`` (None: all of them)."""
        jobs: list[types_pb2.Job] = []
        token = ""
        wanted = _states(states)
        while limit is None or len(jobs) < limit:
            page_size = _PAGE_SIZE if limit is None else min(_PAGE_SIZE, limit - len(jobs))
            response = await self._call(
                self._jobs.ListJobs(
                    service_pb2.ListJobsRequest(
                        states=wanted,
                        tenant=tenant,
                        queue=queue,
                        site=site,
                        page_size=page_size,
                        page_token=token,
                    ),
                    timeout=self._timeout,
                    metadata=self._meta(),
                )
            )
            jobs.extend(response.jobs)
            token = response.next_page_token
            if not token:
                break
        return jobs if limit is None else jobs[:limit]

    async def cancel(self, job_id: str, *, reason: str = "") -> types_pb2.Job:
        """Request cancellation (idempotent). Raises ``IllegalTransitionError`` if the job
        already ended otherwise, ``JobNotFoundError`` if there is no such job."""
        response = await self._call(
            self._jobs.CancelJob(
                service_pb2.CancelJobRequest(job_id=job_id, reason=reason),
                timeout=self._timeout,
                metadata=self._meta(),
            )
        )
        return response.job

    async def events(
        self, job_id: str, *, follow: bool = False, after: str = ""
    ) -> AsyncIterator[types_pb2.JobEvent]:
        """The job's events after cursor ``after``; with ``follow``, then new ones until the
        job ends (the last event is the terminal one)."""
        call = self._jobs.WatchEvents(
            service_pb2.WatchEventsRequest(job_id=job_id, after_event_id=after, follow=follow),
            timeout=None if follow else self._timeout,
            metadata=self._meta(),
        )
        async with contextlib.aclosing(self._stream(call)) as stream:
            async for event in stream:
                yield event

    async def logs(
        self, job_id: str, *, follow: bool = False, attempt: int = 0
    ) -> AsyncIterator[bytes]:
        """Output of the job (stdout and stderr) as raw byte chunks, read from its site's agent.

        ``attempt`` 0 means the current one. With ``follow``, waits for the job to start, then
        streams until the attempt ends. Raises ``IllegalTransitionError`` if the attempt never
        started (without ``follow``: has not started yet).
        """
        if follow:
            await self._wait_started(job_id)
        call = self._jobs.StreamLogs(
            service_pb2.StreamLogsRequest(job_id=job_id, attempt=attempt, follow=follow),
            metadata=self._meta(),
        )
        async with contextlib.aclosing(self._stream(call)) as stream:
            async for chunk in stream:
                yield chunk.data

    async def _wait_started(self, job_id: str) -> None:
        started = {JobState.RUNNING}
        job = await self.get_job(job_id)
        if _state(job.state) in started or _is_terminal(job.state):
            return
        async for event in self.events(job_id, follow=True):
            if _state(event.state) in started or _is_terminal(event.state):
                return

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - becomes WaitTimeoutError
        poll_interval: float | None = None,
    ) -> types_pb2.Job:
        """Wait for the job to end; returns the final job.

        Follows the job's event stream (or, with ``poll_interval``, polls). A dropped stream is
        resumed from its last event, up to a few times in a row. Raises ``WaitTimeoutError``
        after ``timeout`` seconds; the job itself is unaffected.
        """
        last = JobState.PENDING.name
        try:
            async with asyncio.timeout(timeout):
                if poll_interval is not None:
                    while True:
                        job = await self.get_job(job_id)
                        last = _name(job.state)
                        if _is_terminal(job.state):
                            return job
                        await asyncio.sleep(poll_interval)
                after = ""
                failures = 0
                while True:
                    job = await self.get_job(job_id)
                    last = _name(job.state)
                    if _is_terminal(job.state):
                        return job
                    try:
                        async for event in self.events(job_id, follow=True, after=after):
                            after = event.event_id
                            failures = 0
                            last = _name(event.state)
                    except ServiceUnavailableError:
                        failures += 1
                        if failures >= _RECONNECT_ATTEMPTS:
                            raise
                        log.debug("event stream of %s dropped; resuming after %s", job_id, after)
                        await asyncio.sleep(0.2 * 2**failures)
        except TimeoutError:
            raise WaitTimeoutError(job_id, timeout or 0.0, last) from None

    async def explain(self, job_id: str) -> service_pb2.ExplainJobResponse:
        """Why the job is pending or where it runs: each site's verdict and its queue place."""
        return await self._call(
            self._jobs.ExplainJob(
                service_pb2.ExplainJobRequest(job_id=job_id),
                timeout=self._timeout,
                metadata=self._meta(),
            )
        )

    # ---------------------------------------------------------------- sites

    async def sites(self) -> list[types_pb2.SiteStatus]:
        """All registered sites with their status, ordered by id."""
        response = await self._call(
            self._sites.ListSites(
                service_pb2.ListSitesRequest(), timeout=self._timeout, metadata=self._meta()
            )
        )
        return list(response.sites)

    async def get_site(self, site_id: str) -> types_pb2.SiteStatus:
        """One site with its status. Raises ``SiteNotFoundError``."""
        response = await self._call(
            self._sites.GetSite(
                service_pb2.GetSiteRequest(site_id=site_id),
                timeout=self._timeout,
                metadata=self._meta(),
            )
        )
        return response.site

    async def register_site(self, site: types_pb2.Site) -> types_pb2.SiteStatus:
        """Register a site (or update its registration, keeping its state)."""
        response = await self._call(
            self._sites.RegisterSite(
                service_pb2.RegisterSiteRequest(site=site),
                timeout=self._timeout,
                metadata=self._meta(),
            )
        )
        return response.site

    async def _set_site_state(
        self, site_id: str, state: types_pb2.SiteState.ValueType, reason: str
    ) -> types_pb2.SiteStatus:
        response = await self._call(
            self._sites.SetSiteState(
                service_pb2.SetSiteStateRequest(site_id=site_id, state=state, reason=reason),
                timeout=self._timeout,
                metadata=self._meta(),
            )
        )
        return response.site

    async def cordon(self, site_id: str, *, reason: str = "") -> types_pb2.SiteStatus:
        """Take no new work at the site; running work continues."""
        return await self._set_site_state(site_id, types_pb2.SITE_STATE_CORDONED, reason)

    async def drain(self, site_id: str, *, reason: str = "") -> types_pb2.SiteStatus:
        """Take no new work at the site while it empties."""
        return await self._set_site_state(site_id, types_pb2.SITE_STATE_DRAINING, reason)

    async def activate(self, site_id: str, *, reason: str = "") -> types_pb2.SiteStatus:
        """Accept new work at the site again (undo cordon or drain)."""
        return await self._set_site_state(site_id, types_pb2.SITE_STATE_ACTIVE, reason)

    async def set_site_policy(
        self, site_id: str, policy: types_pb2.SitePolicy
    ) -> types_pb2.SiteStatus:
        """Replace the owner's policy for a site (who may run there, surplus offered)."""
        response = await self._call(
            self._sites.SetSitePolicy(
                service_pb2.SetSitePolicyRequest(site_id=site_id, policy=policy),
                timeout=self._timeout,
                metadata=self._meta(),
            )
        )
        return response.site

    # ---------------------------------------------------------------- tenants

    async def put_tenant(self, tenant: types_pb2.Tenant) -> types_pb2.TenantStatus:
        """Create or replace a tenant (home country, fair-share weight, quotas)."""
        response = await self._call(
            self._tenants.PutTenant(
                service_pb2.PutTenantRequest(tenant=tenant),
                timeout=self._timeout,
                metadata=self._meta(),
            )
        )
        return response.tenant

    async def get_tenant(self, tenant_id: str) -> types_pb2.TenantStatus:
        """One tenant with its usage. Raises ``TenantNotFoundError``."""
        response = await self._call(
            self._tenants.GetTenant(
                service_pb2.GetTenantRequest(tenant_id=tenant_id),
                timeout=self._timeout,
                metadata=self._meta(),
            )
        )
        return response.tenant

    async def tenants(self) -> list[types_pb2.TenantStatus]:
        """All tenants with their usage, ordered by id."""
        response = await self._call(
            self._tenants.ListTenants(
                service_pb2.ListTenantsRequest(), timeout=self._timeout, metadata=self._meta()
            )
        )
        return list(response.tenants)

    # ---------------------------------------------------------------- federation

    async def create_enrolment(
        self, partner_id: str, *, ttl_seconds: int = 0
    ) -> federation_pb2.CreateEnrolmentResponse:
        """Operators: a single-use, expiring enrolment token for partner ``partner_id``."""
        return await self._call(
            self._federation.CreateEnrolment(
                federation_pb2.CreateEnrolmentRequest(
                    partner_id=partner_id, ttl_seconds=ttl_seconds
                ),
                timeout=self._timeout,
                metadata=self._meta(),
            )
        )

    async def enrol(self, *, ttl_seconds: int = 0) -> federation_pb2.EnrolResponse:
        """Partners, connected with an enrolment token: spend it and get the partner token
        (``.token``) to connect with from then on."""
        return await self._call(
            self._federation.Enrol(
                federation_pb2.EnrolRequest(ttl_seconds=ttl_seconds),
                timeout=self._timeout,
                metadata=self._meta(),
            )
        )

    async def register_partner_site(
        self, site: types_pb2.Site, *, csr_pem: str | bytes = ""
    ) -> federation_pb2.RegisterPartnerSiteResponse:
        """Partners: register (or update) a site you own; ``.identity`` has the TLS name its
        agent must present and, for ``csr_pem``, the certificate issued for it."""
        csr = csr_pem.decode() if isinstance(csr_pem, bytes) else csr_pem
        return await self._call(
            self._federation.RegisterSite(
                federation_pb2.RegisterPartnerSiteRequest(site=site, csr_pem=csr),
                timeout=self._timeout,
                metadata=self._meta(),
            )
        )

    async def offer_capacity(
        self, offer: federation_pb2.CapacityOffer
    ) -> federation_pb2.CapacityOffer:
        """Partners: offer GPUs of an own site to tenants of other countries (an existing
        ``offer.id`` is replaced)."""
        response = await self._call(
            self._federation.OfferCapacity(
                federation_pb2.OfferCapacityRequest(offer=offer),
                timeout=self._timeout,
                metadata=self._meta(),
            )
        )
        return response.offer

    async def offers(self, site_id: str = "") -> list[federation_pb2.CapacityOffer]:
        """Offers on ``site_id``, or on every site you manage."""
        response = await self._call(
            self._federation.ListOffers(
                federation_pb2.ListOffersRequest(site_id=site_id),
                timeout=self._timeout,
                metadata=self._meta(),
            )
        )
        return list(response.offers)

    async def withdraw_capacity(
        self, site_id: str, *, offer_id: str = "", mode: str = "finish", reason: str = ""
    ) -> federation_pb2.WithdrawCapacityResponse:
        """Withdraw one offer, or (no ``offer_id``) the whole site: cordoned, then drained.
        ``mode`` "finish" lets running jobs finish; "requeue" moves them elsewhere."""
        if mode not in _WITHDRAW_MODES:
            raise InvalidSpecError("mode", f"must be one of {', '.join(_WITHDRAW_MODES)}")
        return await self._call(
            self._federation.WithdrawCapacity(
                federation_pb2.WithdrawCapacityRequest(
                    site_id=site_id, offer_id=offer_id, mode=_WITHDRAW_MODES[mode], reason=reason
                ),
                timeout=self._timeout,
                metadata=self._meta(),
            )
        )

    async def set_partner_site_policy(
        self, site_id: str, policy: types_pb2.SitePolicy
    ) -> types_pb2.SiteStatus:
        """Partners: set an own site's home-ecosystem policy."""
        response = await self._call(
            self._federation.SetSitePolicy(
                service_pb2.SetSitePolicyRequest(site_id=site_id, policy=policy),
                timeout=self._timeout,
                metadata=self._meta(),
            )
        )
        return response.site

    async def usage(self, site_ids: Iterable[str] = ()) -> list[federation_pb2.SiteUsage]:
        """GPU-hours and energy per tenant on ``site_ids`` (default: every site you manage)."""
        response = await self._call(
            self._federation.GetUsage(
                federation_pb2.GetUsageRequest(site_ids=list(site_ids)),
                timeout=self._timeout,
                metadata=self._meta(),
            )
        )
        return list(response.sites)
