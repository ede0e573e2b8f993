"""The log proxy: a job attempt's output, read from the agent of the site it ran on.

The API server holds no output. For ``StreamLogs`` it finds the attempt's site, that site's
registered agent ``endpoint``, and streams ``AgentService.ReadLogs`` from there over a channel
kept open per (endpoint, site) (a re-registered endpoint gets a new channel). With ``tls`` the
channel is mutual TLS: the proxy presents the control plane's certificate (agents answer
nobody else) and accepts only a certificate naming the site's agent (``site_server_name``),
whatever the endpoint's host. The files are read when a channel is opened, and a channel opened
before they were replaced is not used for new calls (it is closed with the proxy).

Errors, as domain errors for the one table in ``orchestrator.api.errors``:

- the attempt never reached a site -> ``IllegalTransitionError`` (FAILED_PRECONDITION),
  "cannot read logs, attempt N has not started";
- the agent cannot be reached -> ``ServiceUnavailableError`` (UNAVAILABLE) naming site and
  endpoint;
- the agent has no output for the attempt -> ``NotFoundError`` (NOT_FOUND);
- any other agent failure -> ``InternalError``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import grpc
from grpc import aio

from orchestrator._pb.agent.v1 import agent_pb2, agent_pb2_grpc
from orchestrator._pb.orchestrator.v1 import service_pb2, types_pb2
from orchestrator.config import TlsFiles
from orchestrator.errors import (
    IllegalTransitionError,
    InternalError,
    InvalidSpecError,
    NotFoundError,
    ServiceUnavailableError,
)
from orchestrator.security.certs import site_server_name
from orchestrator.security.tls import channel_credentials, channel_options_for
from orchestrator.states import JobState
from orchestrator.store import JobStore
from orchestrator.tracing import metadata_with_trace

__all__ = ["LogProxy"]

log = logging.getLogger(__name__)

_NOT_STARTED = frozenset({JobState.PENDING, JobState.SCHEDULED})


class LogProxy:
    """Streams job output from site agents, with one cached channel per agent endpoint."""

    def __init__(
        self,
        store: JobStore,
        *,
        channel_options: Sequence[tuple[str, Any]] = (),
        tls: TlsFiles | None = None,
    ) -> None:
        """``tls``: the control plane's client certificate and the CA of the agents' ones
        (``SecurityConfig.agent_tls``); None: plaintext."""
        self._store = store
        self._options = tuple(channel_options)
        self._tls = tls
        self._channels: dict[tuple[str, str], tuple[_Stamp, aio.Channel]] = {}
        self._retired: list[aio.Channel] = []
        self._lock = asyncio.Lock()

    async def _site_of(self, job: types_pb2.Job, attempt: int) -> str:
        """The site attempt ``attempt`` of ``job`` was sent to, or "" if it never was."""
        if attempt == job.attempt:
            if JobState(job.state) in _NOT_STARTED:
                return ""
            return job.site
        site, after = "", ""
        while page := await self._store.events(job.id, after=after):
            for event in page:
                placed = event.state > JobState.SCHEDULED.value
                if event.attempt == attempt and event.site and placed:
                    site = event.site
            after = page[-1].event_id
        return site

    async def _channel(self, endpoint: str, site_id: str) -> aio.Channel:
        stamp = _stamp(self._tls)
        async with self._lock:
            cached = self._channels.get((endpoint, site_id))
            if cached is not None and cached[0] == stamp:
                return cached[1]
            if cached is not None:  # certificate files replaced: new calls get a new channel
                self._retired.append(cached[1])
            if self._tls is None:
                channel = aio.insecure_channel(endpoint, options=self._options)
            else:
                options = [*self._options, *channel_options_for(site_server_name(site_id))]
                credentials = channel_credentials(self._tls)
                channel = aio.secure_channel(endpoint, credentials, options=options)
            self._channels[(endpoint, site_id)] = (stamp, channel)
            return channel

    async def stream(
        self,
        job_id: str,
        *,
        attempt: int = 0,
        follow: bool = False,
        stream: service_pb2.LogStream.ValueType = service_pb2.LOG_STREAM_UNSPECIFIED,
    ) -> AsyncGenerator[service_pb2.LogChunk, None]:
        """Output of attempt ``attempt`` (0 = the current one) of ``job_id``, from its agent."""
        job = await self._store.get_job(job_id)
        attempt = attempt or job.attempt
        if attempt > job.attempt:
            raise InvalidSpecError("attempt", f"job {job_id!r} has had {job.attempt} attempt(s)")
        site_id = await self._site_of(job, attempt)
        if not site_id:
            raise IllegalTransitionError(
                job_id, JobState(job.state).name, f"read logs, attempt {attempt} has not started"
            )
        endpoint = (await self._store.get_site(site_id)).site.endpoint
        stub = agent_pb2_grpc.AgentServiceStub(await self._channel(endpoint, site_id))
        request = agent_pb2.ReadLogsRequest(
            job_id=job_id,
            attempt=attempt,
            follow=follow,
            stream=stream,
        )
        call = stub.ReadLogs(request, metadata=metadata_with_trace())
        try:
            async for chunk in call:
                yield chunk
        except aio.AioRpcError as exc:
            raise _agent_error(exc, site_id, endpoint, job_id, attempt) from exc
        finally:
            call.cancel()

    async def close(self) -> None:
        """Close every agent channel."""
        async with self._lock:
            channels = [c for _, c in self._channels.values()] + self._retired
            self._channels, self._retired = {}, []
        for channel in channels:
            await channel.close()


_Stamp = tuple[tuple[int, int], ...]


def _stamp(tls: TlsFiles | None) -> _Stamp:
    """When and how big the TLS files are (a replaced file changes it); () without TLS."""
    if tls is None:
        return ()
    out = []
    for path in (tls.ca, tls.cert, tls.key):
        try:
            st = os.stat(path) if path is not None else None
        except OSError:
            st = None
        out.append((st.st_mtime_ns, st.st_size) if st is not None else (0, 0))
    return tuple(out)


def _agent_error(
    exc: aio.AioRpcError, site_id: str, endpoint: str, job_id: str, attempt: int
) -> Exception:
    code, details = exc.code(), exc.details() or ""
    where = f"the agent of site {site_id!r} at {endpoint}"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        log.warning("log proxy: %s is unreachable: %s", where, details)
        return ServiceUnavailableError(f"{where} is unreachable; cannot read logs of {job_id}")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFoundError(f"{where} has no output for attempt {attempt} of job {job_id!r}")
    return InternalError(f"{where} failed to read logs: {code.name}: {details}")
