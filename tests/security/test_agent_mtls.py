"""Mutual TLS between the control plane and site agents, over real gRPC on loopback: in-process
agents, the real Dispatcher over the session's Redis, and raw TLS sockets to read what a server
presents.

Outcomes are exact: a failed handshake is UNAVAILABLE, a certificate from the CA that is not the
control plane's is PERMISSION_DENIED, and a call that got through answers NOT_FOUND (no such
attempt) or opens the control stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from secure_stack import peer_certificate

from agents import AgentConfig, AgentRuntime, AgentServer, AgentService, LocalExecutor
from orchestrator._pb.agent.v1 import agent_pb2, agent_pb2_grpc
from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.api import LogProxy
from orchestrator.config import ControlPlaneConfig, SecurityConfig, TlsFiles
from orchestrator.dispatch import Dispatcher, DispatcherOptions
from orchestrator.errors import InternalError, InvalidSpecError
from orchestrator.security.certs import (
    CONTROL_PLANE_NAME,
    create_ca,
    issue_certificate,
    site_server_name,
    write_dev_pki,
    write_site_certificate,
)
from orchestrator.security.tls import channel_credentials, channel_options_for, server_credentials
from orchestrator.sitefile import SiteConfig
from orchestrator.states import JobState
from orchestrator.store import Decision, JobStore
from orchestrator.validation import normalize_site, normalize_spec

TEST_ENV = {"PATH": os.environ.get("PATH", os.defpath)}
DISPATCHER_LOG = "orchestrator.dispatch.dispatcher"


def site_config(site_id: str, jurisdiction: str = "NO") -> SiteConfig:
    return SiteConfig(
        id=site_id,
        name=site_id.title(),
        jurisdiction=jurisdiction,
        regions=("eu",),
        owner=f"{site_id}-jv",
        power_cap_mw=10,
        cpus=16,
        memory_mb=65536,
        gpus={"H100": 2},
    )


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def control_plane(self) -> TlsFiles:
        return TlsFiles.in_dir(self.dir, "control-plane")

    def site(self, site_id: str) -> TlsFiles:
        cert, key = self.dir / "sites" / f"{site_id}.pem", self.dir / "sites" / f"{site_id}-key.pem"
        if not cert.exists():
            write_site_certificate(self.dir, site_id)
        return TlsFiles(ca=self.ca, cert=cert, key=key)

    def client(
        self, name: str, *, server_auth: bool = False, not_before: dt.datetime | None = None
    ) -> TlsFiles:
        """A client certificate signed by this CA, naming ``name``."""
        cert, key = issue_certificate(
            self.ca.read_bytes(),
            (self.dir / "ca-key.pem").read_bytes(),
            common_name=name,
            dns_names=[name],
            server_auth=server_auth,
            client_auth=True,
            days=1,
            not_before=not_before,
        )
        return write_identity(self.dir / "extra", cert, key, ca=self.ca)


def write_identity(directory: Path, cert: bytes, key: bytes, *, ca: Path) -> TlsFiles:
    directory.mkdir(exist_ok=True)
    n = len(list(directory.iterdir()))
    (directory / f"{n}.pem").write_bytes(cert)
    (directory / f"{n}-key.pem").write_bytes(key)
    return TlsFiles(ca=ca, cert=directory / f"{n}.pem", key=directory / f"{n}-key.pem")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    write_dev_pki(tmp_path / "certs")
    return Pki(tmp_path / "certs")


@pytest.fixture
async def start_agent(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[AgentServer]]]:
    servers: list[AgentServer] = []

    async def start(site: SiteConfig, tls: TlsFiles | None, **changes: float) -> AgentServer:
        config = AgentConfig(
            site=site,
            state_dir=tmp_path / "agents" / f"{site.id}-{len(servers)}",
            tls=tls,
            heartbeat_interval_seconds=0.05,
            shutdown_grace_seconds=0.2,
            **changes,  # type: ignore[arg-type]
        )
        server = AgentServer(config, executor=LocalExecutor(base_env=TEST_ENV))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(0, kill_jobs=True)


@pytest.fixture
async def narvik(pki: Pki, start_agent: Callable[..., Awaitable[AgentServer]]) -> AgentServer:
    return await start_agent(site_config("narvik"), pki.site("narvik"))


def secure_channel(address: str, files: TlsFiles, site_id: str = "narvik") -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        address, channel_credentials(files), options=channel_options_for(site_server_name(site_id))
    )


async def read_logs_code(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """The status ReadLogs of an attempt the agent never ran ends with (NOT_FOUND if the call
    got through the handshake and the caller check)."""
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    request = agent_pb2.ReadLogsRequest(job_id="j-0000000000-000000", attempt=1)
    try:
        async for _ in stub.ReadLogs(request, timeout=10):
            pass
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def read_logs_as(address: str, files: TlsFiles, site_id: str = "narvik") -> grpc.StatusCode:
    async with secure_channel(address, files, site_id) as channel:
        return await read_logs_code(channel)


async def connect_as(
    address: str, files: TlsFiles, site_id: str = "narvik"
) -> agent_pb2.AgentHello | grpc.StatusCode:
    """Open a control stream and send hello: the agent's hello, or the status the call ended."""
    async with secure_channel(address, files, site_id) as channel:
        call = agent_pb2_grpc.AgentServiceStub(channel).Connect(timeout=10)
        hello = agent_pb2.ControlHello(site_id=site_id, dispatcher_id="test")
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.write(agent_pb2.ControlMessage(hello=hello))
            message = await call.read()
            if isinstance(message, agent_pb2.AgentMessage) and message.HasField("hello"):
                call.cancel()
                return message.hello
        return await call.code()


async def next_kind(call: object, kind: str) -> agent_pb2.AgentMessage:
    """The next message of ``kind`` on a control stream (others skipped)."""
    async with asyncio.timeout(5):
        while True:
            message = await call.read()  # type: ignore[attr-defined]
            assert isinstance(message, agent_pb2.AgentMessage), message
            if message.WhichOneof("kind") == kind:
                return message


# -- who may call the agent -----------------------------------------------------------------------


async def test_the_control_plane_gets_through(pki: Pki, narvik: AgentServer) -> None:
    assert await read_logs_as(narvik.address, pki.control_plane) == grpc.StatusCode.NOT_FOUND
    hello = await connect_as(narvik.address, pki.control_plane)
    assert isinstance(hello, agent_pb2.AgentHello)
    assert (hello.site_id, hello.jurisdiction) == ("narvik", "NO")


async def test_a_client_without_a_certificate_fails_the_handshake(
    pki: Pki, narvik: AgentServer
) -> None:
    no_cert = TlsFiles(ca=pki.ca)
    assert await read_logs_as(narvik.address, no_cert) == grpc.StatusCode.UNAVAILABLE
    assert await connect_as(narvik.address, no_cert) == grpc.StatusCode.UNAVAILABLE
    # the agent is still up and serving the control plane
    assert await read_logs_as(narvik.address, pki.control_plane) == grpc.StatusCode.NOT_FOUND


async def test_a_client_certificate_from_another_ca_fails_the_handshake(
    pki: Pki, narvik: AgentServer, tmp_path: Path
) -> None:
    other_ca, other_key = create_ca("someone else's CA", days=1)
    cert, key = issue_certificate(
        other_ca,
        other_key,
        common_name=CONTROL_PLANE_NAME,
        dns_names=[CONTROL_PLANE_NAME],
        server_auth=False,
        client_auth=True,
        days=1,
    )
    # it trusts our CA (so the server side is verified) but its own certificate is not ours
    forged = write_identity(tmp_path / "forged", cert, key, ca=pki.ca)
    assert await read_logs_as(narvik.address, forged) == grpc.StatusCode.UNAVAILABLE
    assert await connect_as(narvik.address, forged) == grpc.StatusCode.UNAVAILABLE
    assert await read_logs_as(narvik.address, pki.control_plane) == grpc.StatusCode.NOT_FOUND


async def test_an_expired_client_certificate_fails_the_handshake(
    pki: Pki, narvik: AgentServer
) -> None:
    expired = pki.client(
        CONTROL_PLANE_NAME, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    )
    assert await read_logs_as(narvik.address, expired) == grpc.StatusCode.UNAVAILABLE
    assert await connect_as(narvik.address, expired) == grpc.StatusCode.UNAVAILABLE
    assert await read_logs_as(narvik.address, pki.control_plane) == grpc.StatusCode.NOT_FOUND


async def test_a_plaintext_client_fails(pki: Pki, narvik: AgentServer) -> None:
    async with grpc.aio.insecure_channel(narvik.address) as channel:
        assert await read_logs_code(channel) == grpc.StatusCode.UNAVAILABLE
    assert await read_logs_as(narvik.address, pki.control_plane) == grpc.StatusCode.NOT_FOUND


async def test_an_agent_certificate_cannot_call_another_agent(
    pki: Pki, narvik: AgentServer
) -> None:
    # what `sgctl certs issue` writes is for serving only: no handshake as a client
    oslo_agent = pki.site("oslo")
    assert await read_logs_as(narvik.address, oslo_agent) == grpc.StatusCode.UNAVAILABLE
    # a site certificate also valid for clients gets through TLS, and no further
    dual_use = pki.client(site_server_name("oslo"), server_auth=True)
    assert await read_logs_as(narvik.address, dual_use) == grpc.StatusCode.PERMISSION_DENIED
    assert await connect_as(narvik.address, dual_use) == grpc.StatusCode.PERMISSION_DENIED
    assert narvik.runtime.capacity().running == 0
    # nor does any other name from the CA
    stranger = pki.client("someone.sovereign-grid")
    assert await read_logs_as(narvik.address, stranger) == grpc.StatusCode.PERMISSION_DENIED


async def test_the_control_plane_checks_the_agents_name(pki: Pki, narvik: AgentServer) -> None:
    # narvik's agent is not oslo's, whatever the address
    assert await read_logs_as(narvik.address, pki.control_plane, "oslo") == (
        grpc.StatusCode.UNAVAILABLE
    )


# -- the agent's own certificate ------------------------------------------------------------------


async def test_an_agent_refuses_to_start_with_another_sites_certificate(
    pki: Pki, start_agent: Callable[..., Awaitable[AgentServer]]
) -> None:
    oslo = pki.site("oslo")
    with pytest.raises(InvalidSpecError) as info:
        await start_agent(site_config("narvik"), oslo)
    message = info.value.message
    assert str(oslo.cert) in message
    assert "oslo.site.sovereign-grid" in message
    assert "narvik.site.sovereign-grid" in message


async def test_an_agent_refuses_to_start_with_a_missing_file(
    pki: Pki, start_agent: Callable[..., Awaitable[AgentServer]], tmp_path: Path
) -> None:
    files = pki.site("narvik")
    missing = TlsFiles(ca=tmp_path / "nope.pem", cert=files.cert, key=files.key)
    with pytest.raises(InvalidSpecError, match=r"nope\.pem"):
        await start_agent(site_config("narvik"), missing)


async def test_a_renewed_certificate_is_served_without_a_restart(
    pki: Pki, narvik: AgentServer, caplog: pytest.LogCaptureFixture
) -> None:
    name = site_server_name("narvik")
    files = pki.site("narvik")
    assert files.cert is not None
    first = await asyncio.to_thread(peer_certificate, narvik.address, pki.control_plane, name)
    assert first == x509.load_pem_x509_certificate(files.cert.read_bytes())

    # a control stream opened before the renewal
    async with secure_channel(narvik.address, pki.control_plane) as channel:
        call = agent_pb2_grpc.AgentServiceStub(channel).Connect()
        await call.write(agent_pb2.ControlMessage(hello=agent_pb2.ControlHello(site_id="narvik")))
        assert await next_kind(call, "hello")

        write_site_certificate(pki.dir, "narvik", days=30)  # renewed: new key, serial, expiry
        renewed = x509.load_pem_x509_certificate(files.cert.read_bytes())
        assert renewed.serial_number != first.serial_number
        seen = await asyncio.to_thread(peer_certificate, narvik.address, pki.control_plane, name)
        assert seen.serial_number == renewed.serial_number
        assert seen.not_valid_after_utc == renewed.not_valid_after_utc
        assert await read_logs_as(narvik.address, pki.control_plane) == grpc.StatusCode.NOT_FOUND

        # the old stream carries on: a round trip over it after the renewal
        spec = types_pb2.JobSpec(name="old", tenant="t", command=["true"])
        batch = agent_pb2.DispatchBatch(
            assignments=[agent_pb2.Assignment(job_id="j-old", attempt=1, spec=spec)]
        )
        await call.write(agent_pb2.ControlMessage(dispatch=batch))
        acks = await next_kind(call, "acks")
        assert [(a.job_id, a.accepted) for a in acks.acks.acks] == [("j-old", True)]
        call.cancel()

    # a broken replacement is ignored (logged); the last good certificate stays in use
    files.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    with caplog.at_level(logging.WARNING, logger="orchestrator.security.tls"):
        kept = await asyncio.to_thread(peer_certificate, narvik.address, pki.control_plane, name)
    assert kept.serial_number == renewed.serial_number
    assert any("keeping the old ones" in r.getMessage() for r in caplog.records)
    assert await read_logs_as(narvik.address, pki.control_plane) == grpc.StatusCode.NOT_FOUND


async def test_old_connections_age_out_so_renewed_certificates_reach_every_stream(
    pki: Pki, start_agent: Callable[..., Awaitable[AgentServer]]
) -> None:
    agent = await start_agent(
        site_config("narvik"), pki.site("narvik"), max_connection_age_seconds=1.0
    )
    async with secure_channel(agent.address, pki.control_plane) as channel:
        call = agent_pb2_grpc.AgentServiceStub(channel).Connect()
        await call.write(agent_pb2.ControlMessage(hello=agent_pb2.ControlHello(site_id="narvik")))
        assert await next_kind(call, "hello")
        started = asyncio.get_running_loop().time()
        with contextlib.suppress(grpc.aio.AioRpcError):
            async with asyncio.timeout(15):
                while isinstance(await call.read(), agent_pb2.AgentMessage):
                    pass  # heartbeats, until the connection is aged out
        lasted = asyncio.get_running_loop().time() - started
    assert lasted < 10
    # a new connection (made with whatever certificates are on disk now) is served at once
    assert isinstance(await connect_as(agent.address, pki.control_plane), agent_pb2.AgentHello)


async def test_certificate_files_gone_keep_the_last_good_ones(
    pki: Pki, narvik: AgentServer, caplog: pytest.LogCaptureFixture
) -> None:
    name = site_server_name("narvik")
    files = pki.site("narvik")
    assert files.key is not None
    served = await asyncio.to_thread(peer_certificate, narvik.address, pki.control_plane, name)
    key = files.key.read_bytes()
    files.key.unlink()
    with caplog.at_level(logging.WARNING, logger="orchestrator.security.tls"):
        for _ in range(3):
            assert await read_logs_as(narvik.address, pki.control_plane) == (
                grpc.StatusCode.NOT_FOUND
            )
    unreadable = [r for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(unreadable) == 1  # once, not per handshake
    assert str(files.key) in unreadable[0].getMessage()
    files.key.write_bytes(key)  # back as it was: same certificate, still served
    again = await asyncio.to_thread(peer_certificate, narvik.address, pki.control_plane, name)
    assert again.serial_number == served.serial_number


async def test_server_credentials_refuse_missing_and_mismatched_files(pki: Pki) -> None:
    narvik, oslo = pki.site("narvik"), pki.site("oslo")
    with pytest.raises(InvalidSpecError, match="not the key of"):
        server_credentials(
            TlsFiles(ca=pki.ca, cert=narvik.cert, key=oslo.key), require_client_auth=True
        )
    with pytest.raises(InvalidSpecError, match="needs a certificate and its key"):
        server_credentials(TlsFiles(ca=pki.ca), require_client_auth=False)
    with pytest.raises(InvalidSpecError, match=r"gone\.pem"):
        server_credentials(
            TlsFiles(ca=pki.ca, cert=pki.dir / "gone.pem", key=narvik.key),
            require_client_auth=True,
        )


# -- the dispatcher -------------------------------------------------------------------------------


async def register(store: JobStore, site: SiteConfig, endpoint: str, **changes: str) -> None:
    reg = site.to_proto()
    reg.endpoint = endpoint
    for field, value in changes.items():
        setattr(reg, field, value)
    await store.register_site(normalize_site(reg))


async def site_dump(store: JobStore, site_id: str) -> dict[bytes, bytes | None]:
    """Every key of the site (its registration hash, counters, queues), serialised."""
    pattern = store.keys.site(site_id) + "*"
    keys = sorted([k async for k in store.client.scan_iter(match=pattern)])
    assert keys, f"no keys for site {site_id}"
    return {k: await store.client.dump(k) for k in keys}


@pytest.fixture
async def run_dispatcher(
    store: JobStore,
) -> AsyncIterator[Callable[[TlsFiles | None], Dispatcher]]:
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    def run(tls: TlsFiles | None) -> Dispatcher:
        options = DispatcherOptions(
            dispatcher_id="test-dispatcher",
            heartbeat_interval_seconds=0.1,
            refresh_seconds=0.1,
            sweep_seconds=0.1,
            tls=tls,
        )
        dispatcher = Dispatcher(store, options)
        stop = asyncio.Event()
        running.append((stop, asyncio.create_task(dispatcher.run_forever(stop))))
        return dispatcher

    yield run
    for stop, task in running:
        stop.set()
        await asyncio.wait_for(task, 10)


async def wait_connected(store: JobStore, dispatcher: Dispatcher, site_id: str) -> None:
    async with asyncio.timeout(10):
        while site_id not in dispatcher.connected_sites():
            await asyncio.sleep(0.05)
    status = await store.get_site(site_id)
    assert status.connected and status.last_heartbeat.seconds > 0


async def test_the_dispatcher_connects_over_mtls_and_runs_a_job(
    pki: Pki,
    narvik: AgentServer,
    store: JobStore,
    run_dispatcher: Callable[[TlsFiles | None], Dispatcher],
) -> None:
    await register(store, site_config("narvik"), narvik.address)
    assert not (await store.get_site("narvik")).connected
    dispatcher = run_dispatcher(pki.control_plane)
    await wait_connected(store, dispatcher, "narvik")

    # work flows both ways, and the log proxy reads the output over mTLS too
    spec = types_pb2.JobSpec(name="hello", tenant="acme", command=["echo", "hello over mtls"])
    job, _ = await store.submit(normalize_spec(spec))
    assert await store.commit([Decision(job.id, job.attempt, "narvik")]) == ["ok"]
    async with asyncio.timeout(10):
        while JobState((await store.get_job(job.id)).state) != JobState.SUCCEEDED:
            await asyncio.sleep(0.05)
    proxy = LogProxy(store, tls=pki.control_plane)
    try:
        output = b"".join([chunk.data async for chunk in proxy.stream(job.id)])
        assert output == b"hello over mtls\n"
        # the proxy's files replaced (here by a certificate the agent does not accept): its
        # next call opens a new channel with them, and is refused
        files = pki.control_plane
        assert files.cert is not None and files.key is not None
        saved = files.cert.read_bytes(), files.key.read_bytes()
        other = pki.client("intruder")
        assert other.cert is not None and other.key is not None
        shutil.copyfile(other.cert, files.cert)
        shutil.copyfile(other.key, files.key)
        with pytest.raises(InternalError, match="PERMISSION_DENIED"):
            _ = [chunk async for chunk in proxy.stream(job.id)]
        files.cert.write_bytes(saved[0])
        files.key.write_bytes(saved[1])
        again = b"".join([chunk.data async for chunk in proxy.stream(job.id)])
        assert again == output
    finally:
        await proxy.close()


async def test_plaintext_log_proxy_cannot_read_a_tls_agent(
    narvik: AgentServer, store: JobStore
) -> None:
    """The control: without TLS the same proxy is refused (the agent serves mTLS only)."""
    async with grpc.aio.insecure_channel(narvik.address) as channel:
        assert await read_logs_code(channel) == grpc.StatusCode.UNAVAILABLE


@dataclass
class Impostor:
    """A real agent service answering as a site (a perfect hello) while serving a certificate
    of the caller's choice; ``AgentServer``'s start-up check is skipped on purpose."""

    server: grpc.aio.Server
    runtime: AgentRuntime
    address: str


@pytest.fixture
async def start_impostor(
    tmp_path: Path,
) -> AsyncIterator[Callable[[SiteConfig, TlsFiles | None], Awaitable[str]]]:
    started: list[Impostor] = []

    async def start(site: SiteConfig, served: TlsFiles | None) -> str:
        state_dir = tmp_path / f"impostor-{len(started)}"
        runtime = AgentRuntime(
            AgentConfig(site=site, state_dir=state_dir, heartbeat_interval_seconds=0.05),
            executor=LocalExecutor(base_env=TEST_ENV),
        )
        await runtime.open()
        server = grpc.aio.server()
        agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentService(runtime), server)
        if served is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            credentials = server_credentials(served, require_client_auth=True)
            port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        started.append(Impostor(server, runtime, f"127.0.0.1:{port}"))
        return started[-1].address

    yield start
    for impostor in started:
        await impostor.server.stop(0)
        await impostor.runtime.close()


async def test_another_sites_agent_at_the_endpoint_is_never_connected(
    pki: Pki,
    narvik: AgentServer,
    store: JobStore,
    run_dispatcher: Callable[[TlsFiles | None], Dispatcher],
    start_impostor: Callable[[SiteConfig, TlsFiles | None], Awaitable[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # at oslo's registered endpoint: an agent that says it is oslo, holding narvik's certificate
    oslo = site_config("oslo")
    address = await start_impostor(oslo, pki.site("narvik"))
    await register(store, site_config("narvik"), narvik.address)
    await register(store, oslo, address)
    before = await site_dump(store, "oslo")
    caplog.set_level(logging.INFO, logger=DISPATCHER_LOG)

    dispatcher = run_dispatcher(pki.control_plane)
    await wait_connected(store, dispatcher, "narvik")  # the dispatcher is at work
    await asyncio.sleep(2.0)

    assert dispatcher.connected_sites() == ["narvik"]
    assert not dispatcher.links["oslo"].greeted
    assert await site_dump(store, "oslo") == before
    refusals = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("site oslo: stream ended: UNAVAILABLE")
    ]
    assert len(refusals) >= 2, refusals


async def test_without_tls_the_impostor_would_have_been_connected(
    store: JobStore,
    run_dispatcher: Callable[[TlsFiles | None], Dispatcher],
    start_impostor: Callable[[SiteConfig, TlsFiles | None], Awaitable[str]],
) -> None:
    """The control of the test above: the same impostor in plaintext is taken for oslo."""
    oslo = site_config("oslo")
    await register(store, oslo, await start_impostor(oslo, None))
    before = await site_dump(store, "oslo")
    dispatcher = run_dispatcher(None)
    await wait_connected(store, dispatcher, "oslo")
    assert await site_dump(store, "oslo") != before


async def test_an_agent_claiming_another_jurisdiction_is_refused(
    pki: Pki,
    narvik: AgentServer,
    store: JobStore,
    run_dispatcher: Callable[[TlsFiles | None], Dispatcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the registry says narvik is in Sweden; its agent (jurisdiction NO) says otherwise
    await register(store, site_config("narvik"), narvik.address, jurisdiction="SE")
    before = await site_dump(store, "narvik")
    caplog.set_level(logging.INFO, logger=DISPATCHER_LOG)

    dispatcher = run_dispatcher(pki.control_plane)
    async with asyncio.timeout(10):
        while not any("refusing the agent" in r.getMessage() for r in caplog.records):
            await asyncio.sleep(0.05)
    await asyncio.sleep(1.5)

    assert dispatcher.connected_sites() == []
    assert not dispatcher.links["narvik"].greeted
    assert await site_dump(store, "narvik") == before
    refusals = [
        r for r in caplog.records if r.levelno == logging.ERROR and "refusing" in r.getMessage()
    ]
    assert refusals
    assert "says jurisdiction NO but the registry says SE" in refusals[0].getMessage()
    # refused streams back off: at most a handful of tries in ~2 s (0.2, 0.4, 0.8 s, ...)
    assert len(refusals) <= 5


async def test_the_dispatcher_reads_its_certificate_for_every_stream(
    pki: Pki,
    narvik: AgentServer,
    store: JobStore,
    run_dispatcher: Callable[[TlsFiles | None], Dispatcher],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    later = tmp_path / "later"
    later.mkdir()
    cert, key = later / "cp.pem", later / "cp-key.pem"
    files = TlsFiles(ca=pki.ca, cert=cert, key=key)
    await register(store, site_config("narvik"), narvik.address)
    caplog.set_level(logging.ERROR, logger=DISPATCHER_LOG)
    dispatcher = run_dispatcher(files)
    async with asyncio.timeout(10):
        while not any(str(cert) in r.getMessage() for r in caplog.records):
            await asyncio.sleep(0.05)
    assert "site narvik: cannot connect" in caplog.records[0].getMessage()
    assert caplog.records[0].exc_info is None  # one line, no traceback
    assert not (await store.get_site("narvik")).connected

    shutil.copy(pki.dir / "control-plane-key.pem", key)
    shutil.copy(pki.dir / "control-plane.pem", cert)
    await wait_connected(store, dispatcher, "narvik")


def test_dispatcher_options_take_the_agent_tls_unless_insecure(pki: Pki) -> None:
    secure = SecurityConfig(api_tls=TlsFiles.in_dir(pki.dir, "api"), agent_tls=pki.control_plane)
    options = DispatcherOptions.from_config(ControlPlaneConfig(security=secure), index=0)
    assert options.tls == pki.control_plane
    plaintext = SecurityConfig(insecure=True, agent_tls=pki.control_plane)
    options = DispatcherOptions.from_config(ControlPlaneConfig(security=plaintext), index=0)
    assert options.tls is None
