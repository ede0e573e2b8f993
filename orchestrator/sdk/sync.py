"""``Client``: the synchronous SDK, a facade over ``AsyncClient`` run on a private loop thread.

There is one implementation (``AsyncClient``); every method here hands the matching coroutine
to an event loop running in a daemon thread the client owns, and waits for it. The caller's
context (its current trace span) goes with each call. Iterators (``events``, ``logs``) pull
one item at a time; leaving one early closes its stream. Ctrl-C while waiting cancels the call.

    with Client.connect("127.0.0.1:50051") as client:
        job = client.submit(spec)
        print(job.wait(timeout=60).state)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

from orchestrator._pb.orchestrator.v1 import federation_pb2, service_pb2, types_pb2
from orchestrator.config import TlsFiles
from orchestrator.sdk.client import AsyncClient
from orchestrator.sdk.job import Job
from orchestrator.spec import JobSpec
from orchestrator.states import JobState

__all__ = ["Client"]

T = TypeVar("T")


class _LoopThread:
    """An event loop running in a daemon thread, and ways to run coroutines on it."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="sg-sdk-loop", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    @property
    def closed(self) -> bool:
        return not self._thread.is_alive()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop, in the caller's context, and wait for its result."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a synchronous Client cannot be used from its own loop thread")
        if self.closed:
            coro.close()
            raise RuntimeError("the Client is closed")
        context = contextvars.copy_context()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        tasks: list[asyncio.Task[T]] = []

        def copy_outcome(task: asyncio.Task[T]) -> None:
            if task.cancelled():
                done.set_exception(concurrent.futures.CancelledError())
            elif (exc := task.exception()) is not None:
                done.set_exception(exc)
            else:
                done.set_result(task.result())

        def start() -> None:
            task = self._loop.create_task(coro, context=context)
            task.add_done_callback(copy_outcome)
            tasks.append(task)

        self._loop.call_soon_threadsafe(start)
        try:
            return done.result()
        except BaseException:
            if not done.done():  # interrupted while waiting (Ctrl-C): stop the call too
                self._loop.call_soon_threadsafe(lambda: [t.cancel() for t in tasks])
                concurrent.futures.wait([done], timeout=5.0)
            raise

    def iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        """Iterate ``agen`` from the calling thread; closes it when left early."""

        async def step() -> list[T]:
            try:
                return [await anext(agen)]
            except StopAsyncIteration:
                return []

        finished = False
        try:
            while True:
                items = self.run(step())
                if not items:
                    finished = True
                    return
                yield items[0]
        finally:
            aclose = getattr(agen, "aclose", None)
            if not finished and aclose is not None and not self.closed:
                self.run(aclose())

    def close(self) -> None:
        """Stop the loop and wait for the thread to end."""
        if self.closed:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()


class Client:
    """A synchronous connection to the API server; same methods as ``AsyncClient``, blocking.

    Make one with :meth:`connect` and close it (or use ``with``).
    """

    def __init__(self, client: AsyncClient, runner: _LoopThread) -> None:
        """Wrap a connected ``AsyncClient`` living on ``runner``; most callers want
        :meth:`connect`."""
        self._async = client
        self._runner = runner

    @classmethod
    def connect(
        cls,
        address: str,
        *,
        timeout: float = 10.0,
        metadata: Sequence[tuple[str, str]] = (),
        token: str | None = None,
        tls: TlsFiles | bool | None = None,
        server_name: str | None = None,
    ) -> Client:
        """Connect to the API server at ``host:port`` (see ``AsyncClient.connect``)."""
        runner = _LoopThread()
        try:
            client = runner.run(
                AsyncClient.connect(
                    address,
                    timeout=timeout,
                    metadata=metadata,
                    token=token,
                    tls=tls,
                    server_name=server_name,
                )
            )
        except BaseException:
            runner.close()
            raise
        return cls(client, runner)

    @property
    def address(self) -> str:
        """``host:port`` of the API server."""
        return self._async.address

    def close(self) -> None:
        """Close the connection and stop the client's loop thread."""
        if self._runner.closed:
            return
        try:
            self._runner.run(self._async.close())
        finally:
            self._runner.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------- jobs

    def submit(self, spec: JobSpec | types_pb2.JobSpec) -> Job:
        """Submit a job; returns its handle (``.info`` holds the accepted job)."""
        return Job(self._runner.run(self._async.submit(spec)), self._runner)

    def submit_many(
        self,
        specs: Sequence[JobSpec | types_pb2.JobSpec],
        *,
        batch_size: int = 1000,
        concurrency: int = 1,
    ) -> list[Job]:
        """Submit many jobs in calls of ``batch_size``; their handles, in order (see
        ``AsyncClient.submit_many``)."""
        jobs = self._runner.run(
            self._async.submit_many(specs, batch_size=batch_size, concurrency=concurrency)
        )
        return [Job(job, self._runner) for job in jobs]

    def job(self, job_id: str) -> Job:
        """A handle on job ``job_id`` (no call is made)."""
        return Job(self._async.job(job_id), self._runner)

    def get_job(self, job_id: str) -> types_pb2.Job:
        """The job record. Raises ``JobNotFoundError``."""
        return self._runner.run(self._async.get_job(job_id))

    def list_jobs(
        self,
        *,
        states: Iterable[JobState | str] = (),
        tenant: str = "",
        queue: str = "",
        site: str = "",
        limit: int | None = None,
    ) -> list[types_pb2.Job]:
        """Jobs newest first, filtered; pages through until ``limit`` (None: all of them)."""
        return self._runner.run(
            self._async.list_jobs(states=states, tenant=tenant, queue=queue, site=site, limit=limit)
        )

    def cancel(self, job_id: str, *, reason: str = "") -> types_pb2.Job:
        """Request cancellation (idempotent)."""
        return self._runner.run(self._async.cancel(job_id, reason=reason))

    def events(
        self, job_id: str, *, follow: bool = False, after: str = ""
    ) -> Iterator[types_pb2.JobEvent]:
        """The job's events; with ``follow``, until it ends."""
        return self._runner.iterate(self._async.events(job_id, follow=follow, after=after))

    def logs(self, job_id: str, *, follow: bool = False, attempt: int = 0) -> Iterator[bytes]:
        """The job's output as byte chunks; with ``follow``, until the attempt ends."""
        return self._runner.iterate(self._async.logs(job_id, follow=follow, attempt=attempt))

    def wait(
        self, job_id: str, *, timeout: float | None = None, poll_interval: float | None = None
    ) -> types_pb2.Job:
        """Wait for the job to end; returns the final record. Raises ``WaitTimeoutError``."""
        return self._runner.run(
            self._async.wait(job_id, timeout=timeout, poll_interval=poll_interval)
        )

    # ---------------------------------------------------------------- sites

    def explain(self, job_id: str) -> service_pb2.ExplainJobResponse:
        """Why the job is pending or where it runs: each site's verdict and its queue place."""
        return self._runner.run(self._async.explain(job_id))

    def sites(self) -> list[types_pb2.SiteStatus]:
        """All registered sites with their status, ordered by id."""
        return self._runner.run(self._async.sites())

    def get_site(self, site_id: str) -> types_pb2.SiteStatus:
        """One site with its status. Raises ``SiteNotFoundError``."""
        return self._runner.run(self._async.get_site(site_id))

    def register_site(self, site: types_pb2.Site) -> types_pb2.SiteStatus:
        """Register a site (or update its registration, keeping its state)."""
        return self._runner.run(self._async.register_site(site))

    def cordon(self, site_id: str, *, reason: str = "") -> types_pb2.SiteStatus:
        """Take no new work at the site; running work continues."""
        return self._runner.run(self._async.cordon(site_id, reason=reason))

    def drain(self, site_id: str, *, reason: str = "") -> types_pb2.SiteStatus:
        """Take no new work at the site while it empties."""
        return self._runner.run(self._async.drain(site_id, reason=reason))

    def activate(self, site_id: str, *, reason: str = "") -> types_pb2.SiteStatus:
        """Accept new work at the site again (undo cordon or drain)."""
        return self._runner.run(self._async.activate(site_id, reason=reason))

    def set_site_policy(self, site_id: str, policy: types_pb2.SitePolicy) -> types_pb2.SiteStatus:
        """Replace the owner's policy for a site (who may run there, surplus offered)."""
        return self._runner.run(self._async.set_site_policy(site_id, policy))

    def put_tenant(self, tenant: types_pb2.Tenant) -> types_pb2.TenantStatus:
        """Create or replace a tenant (home country, fair-share weight, quotas)."""
        return self._runner.run(self._async.put_tenant(tenant))

    def get_tenant(self, tenant_id: str) -> types_pb2.TenantStatus:
        """One tenant with its usage. Raises ``TenantNotFoundError``."""
        return self._runner.run(self._async.get_tenant(tenant_id))

    def tenants(self) -> list[types_pb2.TenantStatus]:
        """All tenants with their usage, ordered by id."""
        return self._runner.run(self._async.tenants())

    # ---------------------------------------------------------------- federation

    def create_enrolment(
        self, partner_id: str, *, ttl_seconds: int = 0
    ) -> federation_pb2.CreateEnrolmentResponse:
        """Operators: a single-use, expiring enrolment token for a partner."""
        return self._runner.run(self._async.create_enrolment(partner_id, ttl_seconds=ttl_seconds))

    def enrol(self, *, ttl_seconds: int = 0) -> federation_pb2.EnrolResponse:
        """Partners: spend the enrolment token this client connected with."""
        return self._runner.run(self._async.enrol(ttl_seconds=ttl_seconds))

    def register_partner_site(
        self, site: types_pb2.Site, *, csr_pem: str | bytes = ""
    ) -> federation_pb2.RegisterPartnerSiteResponse:
        """Partners: register an own site and receive its identity."""
        return self._runner.run(self._async.register_partner_site(site, csr_pem=csr_pem))

    def offer_capacity(self, offer: federation_pb2.CapacityOffer) -> federation_pb2.CapacityOffer:
        """Partners: offer GPUs of an own site to tenants of other countries."""
        return self._runner.run(self._async.offer_capacity(offer))

    def offers(self, site_id: str = "") -> list[federation_pb2.CapacityOffer]:
        """Offers on one site, or on every site you manage."""
        return self._runner.run(self._async.offers(site_id))

    def withdraw_capacity(
        self, site_id: str, *, offer_id: str = "", mode: str = "finish", reason: str = ""
    ) -> federation_pb2.WithdrawCapacityResponse:
        """Withdraw one offer or the whole site ("finish" or "requeue" running jobs)."""
        return self._runner.run(
            self._async.withdraw_capacity(site_id, offer_id=offer_id, mode=mode, reason=reason)
        )

    def set_partner_site_policy(
        self, site_id: str, policy: types_pb2.SitePolicy
    ) -> types_pb2.SiteStatus:
        """Partners: set an own site's home-ecosystem policy."""
        return self._runner.run(self._async.set_partner_site_policy(site_id, policy))

    def usage(self, site_ids: Iterable[str] = ()) -> list[federation_pb2.SiteUsage]:
        """GPU-hours and energy per tenant on your sites."""
        return self._runner.run(self._async.usage(site_ids))
