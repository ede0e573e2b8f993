"""Fixtures for the agent tests: a real AgentServer on loopback and a scripted dispatcher."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

from agents import AgentConfig, AgentServer, LocalExecutor
from orchestrator._pb.agent.v1 import agent_pb2, agent_pb2_grpc
from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.sitefile import SiteConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_ENV = {"PATH": os.environ.get("PATH", os.defpath)}


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    state = data[data.rfind(b")") + 2 :].split()[0]
    return state not in (b"Z", b"X")


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


def make_assignment(
    job_id: str,
    attempt: int = 1,
    *,
    command: Sequence[str] = ("true",),
    gpus: int = 0,
    gpu_type: str = "",
    nodes: int = 0,
    assigned_gpu_type: str = "",
    allowed: Sequence[str] = (),
    max_runtime: int = 0,
    env: dict[str, str] | None = None,
    traceparent: str = "",
) -> agent_pb2.Assignment:
    """An Assignment as a dispatcher would send it."""
    spec = types_pb2.JobSpec(
        name=job_id,
        tenant="t",
        command=list(command),
        env=env or {},
        resources=types_pb2.Resources(gpus=gpus, gpu_type=gpu_type, nodes=nodes),
        placement=types_pb2.Placement(allowed_jurisdictions=list(allowed)),
        max_runtime_seconds=max_runtime,
    )
    return agent_pb2.Assignment(
        job_id=job_id,
        attempt=attempt,
        spec=spec,
        traceparent=traceparent,
        gpu_type=assigned_gpu_type,
    )


class Dispatcher:
    """Drives one Connect stream the way the control plane's dispatcher does."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = agent_pb2_grpc.AgentServiceStub(channel)
        self._outgoing: asyncio.Queue[agent_pb2.ControlMessage | None] = asyncio.Queue()
        self._acks: asyncio.Queue[agent_pb2.AckBatch] = asyncio.Queue()
        self._hello: asyncio.Future[agent_pb2.AgentHello] | None = None
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._call: Any = None
        self.messages: list[str] = []
        self.statuses: list[agent_pb2.StatusUpdate] = []
        self.heartbeats: list[agent_pb2.Heartbeat] = []
        self.status_batches = 0
        self.ended = asyncio.Event()
        self.code: grpc.StatusCode | None = None
        self.details = ""

    async def connect(
        self,
        site_id: str,
        *,
        heartbeat: float = 0.05,
        dispatcher_id: str = "test-dispatcher",
        lease: float = 0.0,
    ) -> agent_pb2.AgentHello:
        """Open the stream, send hello, return the agent's hello (or raise if the stream ended)."""
        self._hello = asyncio.get_running_loop().create_future()
        self._call = self._stub.Connect(self._requests())
        self._reader = asyncio.create_task(self._read())
        await self.send(
            agent_pb2.ControlMessage(
                hello=agent_pb2.ControlHello(
                    site_id=site_id,
                    dispatcher_id=dispatcher_id,
                    heartbeat_interval_seconds=heartbeat,
                    lease_seconds=lease,
                )
            )
        )
        done, _ = await asyncio.wait(
            [self._hello, asyncio.ensure_future(self.ended.wait())],
            timeout=5,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if self._hello in done:
            return self._hello.result()
        raise AssertionError(f"no hello; stream ended with {self.code}: {self.details}")

    async def _requests(self) -> AsyncIterator[agent_pb2.ControlMessage]:
        while (message := await self._outgoing.get()) is not None:
            yield message

    async def _read(self) -> None:
        try:
            async for message in self._call:
                kind = message.WhichOneof("kind")
                self.messages.append(kind)
                if kind == "hello" and self._hello and not self._hello.done():
                    self._hello.set_result(message.hello)
                elif kind == "acks":
                    self._acks.put_nowait(message.acks)
                elif kind == "status":
                    self.status_batches += 1
                    self.statuses.extend(message.status.updates)
                elif kind == "heartbeat":
                    self.heartbeats.append(message.heartbeat)
                self._changed.set()
            self.code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            self.code = exc.code()
            self.details = exc.details() or ""
        finally:
            self.ended.set()
            self._changed.set()

    async def send(self, message: agent_pb2.ControlMessage) -> None:
        await self._outgoing.put(message)

    async def dispatch(self, *assignments: agent_pb2.Assignment) -> list[agent_pb2.AssignmentAck]:
        await self.send(
            agent_pb2.ControlMessage(
                dispatch=agent_pb2.DispatchBatch(assignments=list(assignments))
            )
        )
        batch = await asyncio.wait_for(self._acks.get(), timeout=5)
        return list(batch.acks)

    async def cancel(
        self, job_id: str, attempt: int = 1, *, grace: float = 0.0, reason: str = ""
    ) -> None:
        cancel = agent_pb2.Cancel(
            job_id=job_id, attempt=attempt, grace_seconds=grace, reason=reason
        )
        await self.send(agent_pb2.ControlMessage(cancel=agent_pb2.CancelBatch(cancels=[cancel])))

    async def renew(self, heartbeat_seq: int) -> None:
        lease = agent_pb2.LeaseRenewal(heartbeat_seq=heartbeat_seq)
        await self.send(agent_pb2.ControlMessage(lease=lease))

    async def reconcile(
        self,
        *,
        stop: Sequence[tuple[str, int]] = (),
        forget: Sequence[tuple[str, int]] = (),
    ) -> None:
        def refs(items: Sequence[tuple[str, int]]) -> list[agent_pb2.AttemptRef]:
            return [agent_pb2.AttemptRef(job_id=j, attempt=a) for j, a in items]

        msg = agent_pb2.Reconcile(stop=refs(stop), forget=refs(forget))
        await self.send(agent_pb2.ControlMessage(reconcile=msg))

    async def ack(self, seqs: Sequence[int]) -> None:
        await self.send(agent_pb2.ControlMessage(status_ack=agent_pb2.StatusAck(seqs=list(seqs))))

    def statuses_of(self, job_id: str, attempt: int = 1) -> list[agent_pb2.StatusUpdate]:
        return [u for u in self.statuses if u.job_id == job_id and u.attempt == attempt]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                if self.ended.is_set():
                    raise AssertionError(f"stream ended with {self.code}: {self.details}")
                self._changed.clear()
                await self._changed.wait()

    async def wait_status(
        self, job_id: str, attempt: int = 1, *, state: int, timeout: float = 5.0
    ) -> agent_pb2.StatusUpdate:
        """The first update of this attempt with ``state``, waiting for it."""

        def found() -> bool:
            return any(u.state == state for u in self.statuses_of(job_id, attempt))

        await self.wait_for(found, timeout)
        return next(u for u in self.statuses_of(job_id, attempt) if u.state == state)

    async def wait_heartbeats(self, count: int) -> None:
        target = len(self.heartbeats) + count
        await self.wait_for(lambda: len(self.heartbeats) >= target)

    async def close(self) -> None:
        """Half-close our side and wait for the stream to end."""
        await self._outgoing.put(None)
        try:
            await asyncio.wait_for(self.ended.wait(), timeout=5)
        finally:
            if self._call is not None:
                self._call.cancel()
            if self._reader is not None:
                await asyncio.gather(self._reader, return_exceptions=True)

    async def cancel_call(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


@pytest.fixture
def site() -> SiteConfig:
    return SiteConfig(
        id="narvik",
        name="Narvik",
        jurisdiction="NO",
        regions=("eu", "nordics"),
        owner="narvik-jv",
        power_cap_mw=230,
        cpus=64,
        memory_mb=65536,
        gpus={"H100": 4, "GB200": 2},
    )


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(span_exporter: InMemorySpanExporter) -> Tracer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    return provider.get_tracer("tests.agents")


@pytest.fixture
def config(site: SiteConfig, tmp_path: Path) -> AgentConfig:
    return AgentConfig(
        site=site,
        state_dir=tmp_path / "state",
        kill_grace_seconds=1.0,
        heartbeat_interval_seconds=0.05,
        log_poll_seconds=0.02,
        shutdown_grace_seconds=0.5,
    )


@pytest.fixture
async def start_agent(
    tracer: Tracer,
) -> AsyncIterator[Callable[[AgentConfig], Any]]:
    """Factory: start an AgentServer for a config; every one is stopped (jobs killed) after."""
    servers: list[AgentServer] = []

    async def start(config: AgentConfig) -> AgentServer:
        server = AgentServer(config, executor=LocalExecutor(base_env=TEST_ENV), tracer=tracer)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(0, kill_jobs=True)


@pytest.fixture
async def agent(config: AgentConfig, start_agent: Callable[[AgentConfig], Any]) -> AgentServer:
    server: AgentServer = await start_agent(config)
    return server


@pytest.fixture
async def open_dispatcher(site: SiteConfig) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await open_dispatcher(address, site_id=..., connect=True, heartbeat=...)``.

    Opens a channel and a Connect stream; both are torn down after the test.
    """
    opened: list[tuple[grpc.aio.Channel, Dispatcher]] = []

    async def open_(
        address: str,
        *,
        site_id: str | None = None,
        connect: bool = True,
        heartbeat: float = 0.05,
        lease: float = 0.0,
    ) -> Dispatcher:
        channel = grpc.aio.insecure_channel(address)
        d = Dispatcher(channel)
        opened.append((channel, d))
        if connect:
            await d.connect(site_id or site.id, heartbeat=heartbeat, lease=lease)
        return d

    yield open_
    for channel, d in opened:
        await d.cancel_call()
        await channel.close()


@pytest.fixture
async def dispatcher(agent: AgentServer, open_dispatcher: Callable[..., Any]) -> Dispatcher:
    """A dispatcher connected to ``agent``."""
    d: Dispatcher = await open_dispatcher(agent.address)
    return d


@pytest.fixture(name="make_assignment")
def make_assignment_fixture() -> Callable[..., agent_pb2.Assignment]:
    return make_assignment


@pytest.fixture(name="pid_alive")
def pid_alive_fixture() -> Callable[[int], bool]:
    return pid_alive


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Any]:
    return wait_until


@pytest.fixture(name="python_command")
def python_command_fixture() -> Callable[[str], list[str]]:
    return python_command


def python_command(code: str) -> list[str]:
    """argv running ``code`` with this interpreter."""
    return [sys.executable, "-c", code]
