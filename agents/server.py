"""The agent's gRPC surface: ``AgentService`` (converts only) and ``AgentServer`` (lifecycle).

The control stream (``Connect``), as the agent serves it:

1. The dispatcher's first message must be ``hello``; a ``site_id`` other than this agent's
   aborts the stream with FAILED_PRECONDITION naming both. One control stream at a time: a newer
   one ends the older with ABORTED.
2. The agent answers ``hello`` (site, jurisdiction, version, capacity, every attempt it holds,
   and a heartbeat sequence number), then resends every status update not yet acknowledged, in
   ``seq`` order, then sends a ``heartbeat`` (capacity, sequence number) every interval (the
   hello's ``heartbeat_interval_seconds``, else the config's).
   ``lease`` renews the agent's lease from when the heartbeat it names was sent, for the hello's
   ``lease_seconds`` (else the config's); with no renewal past it, the agent stops every attempt
   itself and reports them LOST. ``reconcile`` answers the held attempts: stop, forget or keep.
3. Each ``dispatch`` batch is answered by one ``acks`` batch, in the same order. ``cancel`` and
   ``status_ack`` are not answered directly. Status updates are sent in ``status`` batches of
   whatever is ready, each batch sent once the previous one has been written.
4. When the dispatcher closes its side, the agent ends the stream. When the agent stops, it ends
   the stream with UNAVAILABLE.

With ``AgentConfig.tls`` the agent serves mutual TLS: its certificate must name
``site_server_name(site.id)`` (else it refuses to start), clients must present a certificate from
the configured CA (else the handshake fails), and ``Connect`` and ``ReadLogs`` answer
PERMISSION_DENIED to any client certificate but the control plane's (``CONTROL_PLANE_NAME``),
such as another site's agent certificate from the same CA. Replaced certificate files are used by
new connections without a restart. Without ``tls`` the agent serves plaintext to anyone.

All decisions are ``AgentRuntime``'s; this module only converts between protobuf and it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.trace import Tracer

from agents.config import AgentConfig
from agents.executors.base import Executor
from agents.executors.local import LocalExecutor
from agents.journal import StatusRecord
from agents.logs import OutputStream, read_output
from agents.runtime import AgentRuntime, AttemptRequest, CancelRequest, Capacity
from orchestrator._pb.agent.v1 import agent_pb2, agent_pb2_grpc
from orchestrator._pb.orchestrator.v1 import service_pb2, types_pb2
from orchestrator.errors import (
    IllegalTransitionError,
    InvalidSpecError,
    NotFoundError,
    OrchestratorError,
)
from orchestrator.jurisdictions import expand
from orchestrator.security.certs import CONTROL_PLANE_NAME, site_server_name
from orchestrator.security.tls import peer_dns_names, server_credentials

__all__ = ["AgentServer", "AgentService"]

log = logging.getLogger(__name__)

SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name

_MIN_HEARTBEAT_SECONDS = 0.01
_MAX_HEARTBEAT_SECONDS = 3600.0

_LOG_STREAMS = {
    service_pb2.LOG_STREAM_STDOUT: OutputStream.STDOUT,
    service_pb2.LOG_STREAM_STDERR: OutputStream.STDERR,
}
_LOG_STREAM_PROTO = {value: key for key, value in _LOG_STREAMS.items()}


def _status_code(exc: OrchestratorError) -> grpc.StatusCode:
    """The one table from domain errors to gRPC status codes."""
    if isinstance(exc, NotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, InvalidSpecError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, IllegalTransitionError):
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class _End:
    """Ends a control stream: with a status when ``code`` is set, else with OK."""

    code: grpc.StatusCode | None = None
    details: str = ""


class _Session:
    """One control stream: its outgoing queue, drained by the stream's handler."""

    def __init__(self, dispatcher_id: str) -> None:
        self.dispatcher_id = dispatcher_id
        self.out: asyncio.Queue[agent_pb2.AgentMessage | _End] = asyncio.Queue()

    def send(self, message: agent_pb2.AgentMessage) -> None:
        self.out.put_nowait(message)

    def end(self, code: grpc.StatusCode | None = None, details: str = "") -> None:
        self.out.put_nowait(_End(code, details))


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    """The ``agent.v1.AgentService`` servicer: protobuf in, runtime call, protobuf out."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self._runtime = runtime
        self._config = runtime.config
        self._session: _Session | None = None

    async def _allow_caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """With TLS, abort the call unless the client certificate is the control plane's."""
        if self._config.tls is None:
            return
        names = peer_dns_names(context)
        if CONTROL_PLANE_NAME not in names:
            log.warning(
                "refused a call from %s presenting %s: only the control plane may call",
                context.peer(), names or "no certificate name",
            )  # fmt: skip
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "only the control plane may call this agent"
            )

    def end_control_stream(self, code: grpc.StatusCode, details: str) -> None:
        """End the current control stream, if any (used when the agent stops)."""
        if self._session is not None:
            self._session.end(code, details)

    async def Connect(
        self,
        request_iterator: AsyncIterator[agent_pb2.ControlMessage],
        context: grpc.aio.ServicerContext[agent_pb2.ControlMessage, agent_pb2.AgentMessage],
    ) -> AsyncIterator[agent_pb2.AgentMessage]:
        """The control stream; see the module docstring."""
        await self._allow_caller(context)
        site = self._config.site
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        if first.WhichOneof("kind") != "hello":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first control message must be hello"
            )
        hello = first.hello
        if hello.site_id != site.id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this agent serves site {site.id!r}; the dispatcher asked for site "
                f"{hello.site_id!r}",
            )
        session = _Session(hello.dispatcher_id)
        previous, self._session = self._session, session
        if previous is not None:
            log.info(
                "control stream from dispatcher %r replaces the one from %r",
                hello.dispatcher_id,
                previous.dispatcher_id,
            )
            previous.end(
                grpc.StatusCode.ABORTED,
                f"replaced by a newer control stream from dispatcher {hello.dispatcher_id!r}",
            )
        log.info("control stream open from dispatcher %r", hello.dispatcher_id)
        self._runtime.set_lease_seconds(hello.lease_seconds)
        interval = hello.heartbeat_interval_seconds or self._config.heartbeat_interval_seconds
        interval = min(max(interval, _MIN_HEARTBEAT_SECONDS), _MAX_HEARTBEAT_SECONDS)
        tasks = [
            asyncio.create_task(self._read(request_iterator, session)),
            asyncio.create_task(self._pump_status(session)),
            asyncio.create_task(self._heartbeat(session, interval)),
        ]
        try:
            yield agent_pb2.AgentMessage(
                hello=agent_pb2.AgentHello(
                    site_id=site.id,
                    jurisdiction=site.jurisdiction,
                    version=self._config.version,
                    capacity=_capacity(self._runtime.capacity()),
                    held=[
                        agent_pb2.HeldAttempt(job_id=job_id, attempt=attempt, state=state.value)
                        for job_id, attempt, state in self._runtime.held()
                    ],
                    heartbeat_seq=self._runtime.next_heartbeat(),
                )
            )
            while True:
                item = await session.out.get()
                try:
                    if isinstance(item, _End):
                        if item.code is not None:
                            await context.abort(item.code, item.details)
                        return
                    yield item
                finally:
                    session.out.task_done()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._session is session:
                self._session = None
            log.info("control stream from dispatcher %r closed", hello.dispatcher_id)

    async def _read(
        self, request_iterator: AsyncIterator[agent_pb2.ControlMessage], session: _Session
    ) -> None:
        messages = aiter(request_iterator)
        while True:
            try:
                message = await anext(messages)
            except StopAsyncIteration:
                session.end()  # the dispatcher closed its side
                return
            except Exception:  # the call ended under us (cancelled, deadline, ...)
                log.debug("control stream read ended", exc_info=True)
                session.end()
                return
            try:
                self._handle(message, session)
            except OrchestratorError as exc:
                session.end(_status_code(exc), exc.message)
                return
            except Exception:
                log.exception("control stream from dispatcher %r failed", session.dispatcher_id)
                session.end(grpc.StatusCode.INTERNAL, "internal error in the agent; see its log")
                return

    def _handle(self, message: agent_pb2.ControlMessage, session: _Session) -> None:
        kind = message.WhichOneof("kind")
        if kind == "dispatch":
            acks = self._runtime.dispatch(
                [_attempt_request(a) for a in message.dispatch.assignments]
            )
            answer = agent_pb2.AgentMessage()
            add = answer.acks.acks.add  # built in place: no message per ack to copy in
            for ack in acks:
                item = add(job_id=ack.job_id, attempt=ack.attempt, accepted=ack.accepted)
                if ack.duplicate:
                    item.duplicate = True
                if ack.reason:
                    item.reason = ack.reason
            session.send(answer)
        elif kind == "cancel":
            self._runtime.cancel(
                [
                    CancelRequest(c.job_id, c.attempt, c.grace_seconds or None, c.reason)
                    for c in message.cancel.cancels
                ]
            )
        elif kind == "status_ack":
            self._runtime.ack_status(message.status_ack.seqs)
        elif kind == "lease":
            self._runtime.renew_lease(message.lease.heartbeat_seq)
        elif kind == "reconcile":
            r = message.reconcile
            self._runtime.reconcile(
                stop=[(a.job_id, a.attempt) for a in r.stop],
                forget=[(a.job_id, a.attempt) for a in r.forget],
            )
        else:
            log.warning(
                "ignoring control message of kind %r from dispatcher %r",
                kind,
                session.dispatcher_id,
            )

    async def _pump_status(self, session: _Session) -> None:
        cursor = 0
        batch_max = self._config.status_batch_max
        while True:
            await self._runtime.wait_for_updates(after_seq=cursor)
            updates = self._runtime.pending_updates(after_seq=cursor, limit=batch_max)
            if not updates:
                continue
            cursor = updates[-1].seq
            message = agent_pb2.AgentMessage()
            batch = message.status.updates
            for update in updates:
                _add_status_update(batch, update)
            session.send(message)
            await session.out.join()  # coalesce what piles up meanwhile into the next batch

    async def _heartbeat(self, session: _Session, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            session.send(
                agent_pb2.AgentMessage(
                    heartbeat=agent_pb2.Heartbeat(
                        time=_now(),
                        capacity=_capacity(self._runtime.capacity()),
                        seq=self._runtime.next_heartbeat(),
                    )
                )
            )

    async def ReadLogs(
        self,
        request: agent_pb2.ReadLogsRequest,
        context: grpc.aio.ServicerContext[agent_pb2.ReadLogsRequest, service_pb2.LogChunk],
    ) -> AsyncIterator[service_pb2.LogChunk]:
        """Stream one attempt's output; NOT_FOUND for an attempt this agent never ran."""
        await self._allow_caller(context)
        try:
            output = self._runtime.attempt_output(request.job_id, request.attempt)
        except OrchestratorError as exc:
            await context.abort(_status_code(exc), exc.message)
        async for chunk in read_output(
            output.files(_LOG_STREAMS.get(request.stream)),
            follow=request.follow,
            ended=output.ended,
            chunk_bytes=self._config.log_chunk_bytes,
            poll_seconds=self._config.log_poll_seconds,
        ):
            yield service_pb2.LogChunk(
                stream=_LOG_STREAM_PROTO[chunk.stream], data=chunk.data, offset=chunk.offset
            )


class AgentServer:
    """A site agent: the runtime plus its gRPC server (agent service and health)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        executor: Executor | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        """``executor`` defaults to a ``LocalExecutor`` with an empty base environment."""
        self._config = config
        self._runtime = AgentRuntime(config, executor=executor or LocalExecutor(), tracer=tracer)
        self._service = AgentService(self._runtime)
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._address: str | None = None

    @property
    def runtime(self) -> AgentRuntime:
        """The attempt bookkeeping behind the service."""
        return self._runtime

    @property
    def address(self) -> str:
        """``host:port`` the server is bound to; only after ``start()``."""
        if self._address is None:
            raise RuntimeError("AgentServer is not started")
        return self._address

    async def start(self) -> str:
        """Open the journal (settling what a previous run left), serve, return ``host:port``."""
        if self._server is not None:
            return self.address
        credentials = self._credentials()  # bad certificate files: fail before anything else
        opened_here = not self._runtime.is_open
        await self._runtime.open()
        # No SO_REUSEPORT: a second agent on the same port must fail, not share the traffic.
        age_ms = int(self._config.max_connection_age_seconds * 1000)
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_connection_age_ms", age_ms),
                ("grpc.max_connection_age_grace_ms", min(age_ms, 10_000)),
            ]
        )
        agent_pb2_grpc.add_AgentServiceServicer_to_server(self._service, server)
        self._health = health.aio.HealthServicer()  # a fresh one: shutdown is final for it
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        try:
            if credentials is None:
                port = server.add_insecure_port(self._config.listen)
            else:
                port = server.add_secure_port(self._config.listen, credentials)
            await server.start()
        except BaseException:
            await server.stop(None)
            if opened_here:
                await self._runtime.close()
            raise
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        host = self._config.listen.rpartition(":")[0]
        self._server = server
        self._address = f"{host}:{port}"
        mode = "plaintext" if credentials is None else "mutual TLS"
        log.info("agent for site %s serving on %s (%s)", self._config.site.id, self._address, mode)
        return self._address

    def _credentials(self) -> grpc.ServerCredentials | None:
        """mTLS credentials from the config's files (None for plaintext); ``InvalidSpecError``
        naming the file if one is missing or the certificate is not this site's."""
        tls = self._config.tls
        if tls is None:
            return None
        return server_credentials(
            tls, require_client_auth=True, server_name=site_server_name(self._config.site.id)
        )

    async def stop(self, grace: float | None = None, *, kill_jobs: bool = False) -> None:
        """Stop serving, giving open calls ``grace`` seconds (default: the config's).

        Running attempts keep running under this object unless ``kill_jobs``: then every
        attempt's process group is stopped (reported FAILED "agent shutting down", kept in the
        journal for the next run to send) and the journal is closed. Call with ``kill_jobs=True``
        before the event loop ends.
        """
        server, self._server = self._server, None
        if server is not None:
            await self._health.enter_graceful_shutdown()
            self._service.end_control_stream(grpc.StatusCode.UNAVAILABLE, "agent is shutting down")
            grace = self._config.shutdown_grace_seconds if grace is None else grace
            await server.stop(grace)
            log.info("agent for site %s stopped serving", self._config.site.id)
        if kill_jobs:
            await self._runtime.close()


def _attempt_request(assignment: agent_pb2.Assignment) -> AttemptRequest:
    spec = assignment.spec
    resources = spec.resources
    env = spec.env
    allowed = spec.placement.allowed_jurisdictions
    return AttemptRequest(
        job_id=assignment.job_id,
        attempt=assignment.attempt,
        command=tuple(spec.command),
        env=dict(env) if env else {},
        gpus_per_node=resources.gpus,
        nodes=resources.nodes or 1,
        gpu_type=resources.gpu_type,
        assigned_gpu_type=assignment.gpu_type,
        allowed_jurisdictions=_allowed(tuple(allowed)) if allowed else (),
        max_runtime_seconds=float(spec.max_runtime_seconds) or None,
        traceparent=assignment.traceparent,
    )


@functools.lru_cache(maxsize=1024)
def _allowed(codes: tuple[str, ...]) -> tuple[str, ...]:
    """The countries ``codes`` (countries and groups) cover, sorted. Jobs name few distinct
    lists, so each is expanded once rather than per assignment."""
    return tuple(sorted(expand(codes)))


def _add_status_update(
    updates: RepeatedCompositeFieldContainer[agent_pb2.StatusUpdate], record: StatusRecord
) -> None:
    """Append ``record`` to a ``StatusBatch``'s ``updates``, built in place."""
    update = updates.add(
        seq=record.seq,
        job_id=record.job_id,
        attempt=record.attempt,
        state=record.state.value,
        message=record.message,
    )
    _set_time(update.time, record.time)
    if record.exit_code is not None:
        update.exit_code = record.exit_code
        update.has_exit_code = True


def _capacity(capacity: Capacity) -> agent_pb2.Capacity:
    return agent_pb2.Capacity(
        gpus_free=[types_pb2.GpuPool(type=t, count=n) for t, n in capacity.gpus_free.items()],
        running=capacity.running,
    )


def _set_time(ts: Timestamp, seconds: float) -> None:
    """``ts.FromNanoseconds(round(seconds * 1e9))``, without its Python-level checks."""
    ts.seconds, ts.nanos = divmod(round(seconds * 1e9), 1_000_000_000)


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts
