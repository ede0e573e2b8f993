"""Job handles: ``AsyncJob`` (on an ``AsyncClient``) and ``Job`` (its synchronous facade).

A handle names one job and remembers the last record it saw in ``info``. ``status()``
refreshes and returns the record (``orchestrator.v1.Job``: ``state``, ``attempt``, ``site``,
``exit_code`` ...); ``state`` is the typed ``JobState`` of ``info``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.states import JobState

if TYPE_CHECKING:
    from orchestrator.sdk.client import AsyncClient

__all__ = ["AsyncJob", "Job"]

T = TypeVar("T")


class AsyncJob:
    """A handle on one job, for use with ``AsyncClient``."""

    def __init__(
        self,
        client: AsyncClient,
        job_id: str,
        *,
        info: types_pb2.Job | None = None,
        deduplicated: bool = False,
    ) -> None:
        self._client = client
        self.id = job_id
        """The job id."""
        self.info = info
        """The last job record seen (from submit, status, wait or cancel), or None."""
        self.deduplicated = deduplicated
        """True when submit matched an earlier job with the same client_request_id."""

    def __repr__(self) -> str:
        return f"AsyncJob({self.id!r}, state={self.state.name if self.state else None})"

    @property
    def state(self) -> JobState | None:
        """State in :attr:`info` (not refreshed); None before the record was fetched."""
        return JobState(self.info.state) if self.info is not None and self.info.state else None

    def _seen(self, job: types_pb2.Job) -> types_pb2.Job:
        self.info = job
        return job

    async def status(self) -> types_pb2.Job:
        """Fetch the job record now (and keep it in :attr:`info`)."""
        return self._seen(await self._client.get_job(self.id))

    async def wait(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - becomes WaitTimeoutError
        poll_interval: float | None = None,
    ) -> types_pb2.Job:
        """Wait for the job to end and return its final record. Raises ``WaitTimeoutError``."""
        return self._seen(
            await self._client.wait(self.id, timeout=timeout, poll_interval=poll_interval)
        )

    async def cancel(self, *, reason: str = "") -> types_pb2.Job:
        """Request cancellation; returns the record after the request took effect."""
        return self._seen(await self._client.cancel(self.id, reason=reason))

    def events(self, *, follow: bool = False, after: str = "") -> AsyncIterator[types_pb2.JobEvent]:
        """The job's events; with ``follow``, until it ends."""
        return self._client.events(self.id, follow=follow, after=after)

    def logs(self, *, follow: bool = False, attempt: int = 0) -> AsyncIterator[bytes]:
        """The job's output as byte chunks; with ``follow``, waits for it to start, then
        streams until the attempt ends."""
        return self._client.logs(self.id, follow=follow, attempt=attempt)


class Runner(Protocol):
    """Runs coroutines of an ``AsyncClient`` from synchronous code (see ``sdk.sync``)."""

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to completion and return its result."""
        ...

    def iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        """Iterate ``agen`` synchronously."""
        ...


class Job:
    """A handle on one job, for use with the synchronous ``Client``: same methods as
    :class:`AsyncJob`, blocking."""

    def __init__(self, handle: AsyncJob, runner: Runner) -> None:
        self._handle = handle
        self._runner = runner

    def __repr__(self) -> str:
        return f"Job({self.id!r}, state={self.state.name if self.state else None})"

    @property
    def id(self) -> str:
        """The job id."""
        return self._handle.id

    @property
    def info(self) -> types_pb2.Job | None:
        """The last job record seen, or None."""
        return self._handle.info

    @property
    def deduplicated(self) -> bool:
        """True when submit matched an earlier job with the same client_request_id."""
        return self._handle.deduplicated

    @property
    def state(self) -> JobState | None:
        """State in :attr:`info` (not refreshed)."""
        return self._handle.state

    def status(self) -> types_pb2.Job:
        """Fetch the job record now."""
        return self._runner.run(self._handle.status())

    def wait(
        self, *, timeout: float | None = None, poll_interval: float | None = None
    ) -> types_pb2.Job:
        """Wait for the job to end and return its final record. Raises ``WaitTimeoutError``."""
        return self._runner.run(self._handle.wait(timeout=timeout, poll_interval=poll_interval))

    def cancel(self, *, reason: str = "") -> types_pb2.Job:
        """Request cancellation; returns the record after the request took effect."""
        return self._runner.run(self._handle.cancel(reason=reason))

    def events(self, *, follow: bool = False, after: str = "") -> Iterator[types_pb2.JobEvent]:
        """The job's events; with ``follow``, until it ends."""
        return self._runner.iterate(self._handle.events(follow=follow, after=after))

    def logs(self, *, follow: bool = False, attempt: int = 0) -> Iterator[bytes]:
        """The job's output as byte chunks; with ``follow``, until the attempt ends."""
        return self._runner.iterate(self._handle.logs(follow=follow, attempt=attempt))
