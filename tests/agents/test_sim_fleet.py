"""SimFleet: many simulated sites behind one gRPC server, driven by the real Dispatcher over the
session's Redis, on loopback; and ``python -m agents.fleet`` as a real process.

Every site of a fleet is registered with the fleet's one address. Jobs are committed straight to
sites (no scheduler) and must end SUCCEEDED at their site without any process being started.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import grpc
import pytest

from agents.fleet import JournalKind, SimFleet, sim_sites
from orchestrator._pb.agent.v1 import agent_pb2, agent_pb2_grpc
from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.api import LogProxy
from orchestrator.config import TlsFiles
from orchestrator.dispatch import Dispatcher, DispatcherOptions
from orchestrator.errors import InvalidSpecError
from orchestrator.security.certs import (
    CONTROL_PLANE_NAME,
    issue_certificate,
    site_server_name,
    write_dev_pki,
)
from orchestrator.security.tls import channel_credentials, channel_options_for
from orchestrator.sitefile import SiteConfig
from orchestrator.states import JobState
from orchestrator.store import Decision, JobStore
from orchestrator.validation import normalize_site, normalize_spec

REPO_ROOT = Path(__file__).resolve().parents[2]
StartFleet = Callable[..., Awaitable[SimFleet]]
RunDispatcher = Callable[..., Dispatcher]


def children_of(pid: int) -> set[int]:
    """Live child processes of ``pid`` (from /proc)."""
    out: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            data = (entry / "stat").read_bytes()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        if int(fields[1]) == pid:
            out.add(int(entry.name))
    return out


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far."""
    data = Path(f"/proc/{pid}/stat").read_bytes()
    fields = data[data.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
async def start_fleet(tmp_path: Path) -> AsyncIterator[StartFleet]:
    """Factory: start a SimFleet (stopped after the test unless the test stopped it)."""
    fleets: list[SimFleet] = []

    async def start(
        sites: Sequence[SiteConfig], *, tls: TlsFiles | None = None, journal: JournalKind = "memory"
    ) -> SimFleet:
        state_root = tmp_path / f"fleet-{len(fleets)}"
        fleet = SimFleet(sites, state_root=state_root, tls=tls, journal=journal)
        await fleet.start()
        fleets.append(fleet)
        return fleet

    yield start
    for fleet in fleets:
        await fleet.stop(0)


@pytest.fixture
async def run_dispatcher(store: JobStore) -> AsyncIterator[RunDispatcher]:
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    def run(
        tls: TlsFiles | None = None, *, heartbeat: float = 0.2, sweep: float = 0.1
    ) -> Dispatcher:
        options = DispatcherOptions(
            dispatcher_id="test-dispatcher",
            heartbeat_interval_seconds=heartbeat,
            refresh_seconds=0.1,
            sweep_seconds=sweep,
            tls=tls,
        )
        dispatcher = Dispatcher(store, options)
        stop = asyncio.Event()
        running.append((stop, asyncio.create_task(dispatcher.run_forever(stop))))
        return dispatcher

    yield run
    for stop, task in running:
        stop.set()
        await asyncio.wait_for(task, 30)


async def register(store: JobStore, sites: Sequence[SiteConfig], endpoint: str) -> None:
    for site in sites:
        reg = site.to_proto()
        reg.endpoint = endpoint
        await store.register_site(normalize_site(reg))


async def wait_all_connected(
    dispatcher: Dispatcher, site_ids: Sequence[str], timeout: float = 20
) -> None:
    async with asyncio.timeout(timeout):
        while dispatcher.connected_sites() != sorted(site_ids):
            await asyncio.sleep(0.05)


async def submit_to(
    store: JobStore,
    site_id: str,
    name: str,
    *,
    command: Sequence[str],
    env: dict[str, str] | None = None,
) -> str:
    """Submit a job and commit it straight to ``site_id``; returns its id."""
    spec = types_pb2.JobSpec(name=name, tenant="acme", command=list(command), env=env or {})
    job, _ = await store.submit(normalize_spec(spec))
    assert await store.commit([Decision(job.id, job.attempt, site_id)]) == ["ok"]
    return job.id


async def wait_state(store: JobStore, job_id: str, state: JobState, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while JobState((await store.get_job(job_id)).state) != state:
            await asyncio.sleep(0.05)


async def connect_code(
    address: str, site_id: str, *, first: agent_pb2.ControlMessage | None = None
) -> grpc.StatusCode:
    """Open a control stream with a hello for ``site_id`` (or ``first``): OK if the agent's
    hello came back, else the code the call ended with."""
    async with grpc.aio.insecure_channel(address) as channel:
        return await _connect_code(channel, site_id, first)


async def _connect_code(
    channel: grpc.aio.Channel, site_id: str, first: agent_pb2.ControlMessage | None
) -> grpc.StatusCode:
    call = agent_pb2_grpc.AgentServiceStub(channel).Connect(timeout=10)
    hello = agent_pb2.ControlMessage(hello=agent_pb2.ControlHello(site_id=site_id))
    try:
        await call.write(first or hello)
        message = await call.read()
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    if isinstance(message, agent_pb2.AgentMessage) and message.hello.site_id == site_id:
        call.cancel()
        return grpc.StatusCode.OK
    return await call.code()


# -- many sites, one endpoint, the real dispatcher ------------------------------------------------


async def test_every_site_connects_and_jobs_succeed_without_a_process(
    start_fleet: StartFleet, store: JobStore, run_dispatcher: RunDispatcher, tmp_path: Path
) -> None:
    sites = sim_sites(50, jurisdictions=["NO", "SE"])
    fleet = await start_fleet(sites)
    await register(store, sites, fleet.address)
    dispatcher = run_dispatcher()
    await wait_all_connected(dispatcher, fleet.site_ids)
    for site in sites:
        status = await store.get_site(site.id)
        assert status.connected and status.site.endpoint == fleet.address

    # Each job's command would leave a file and fail if anything ran it.
    marker = tmp_path / "ran"
    command = ["sh", "-c", f"touch {marker}; exit 7"]
    before = children_of(os.getpid())
    targets = [site.id for site in sites[::5]] + [sites[0].id, sites[0].id]  # 12 jobs, 10 sites
    jobs = {
        await submit_to(
            store, site_id, f"sim-{n}", command=command, env={"SG_SIM_SECONDS": "0.5"}
        ): site_id
        for n, site_id in enumerate(targets)
    }
    sleeping = await submit_to(store, sites[1].id, "sleeper", command=["sleep", "0.3"])
    jobs[sleeping] = sites[1].id

    async def watch_children() -> None:
        while True:
            assert children_of(os.getpid()) <= before
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch_children())
    try:
        for job_id in jobs:
            await wait_state(store, job_id, JobState.SUCCEEDED)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert not marker.exists()
    for job_id, site_id in jobs.items():
        job = await store.get_job(job_id)
        assert (job.site, job.exit_code, job.has_exit_code) == (site_id, 0, True)
        record = fleet.runtime(site_id).attempt_output(job_id, 1)  # known where it ran
        assert record.ended.is_set()

    # ReadLogs is routed to the site holding the attempt; simulated jobs write nothing
    proxy = LogProxy(store)
    try:
        for job_id in list(jobs)[:3]:
            assert [chunk async for chunk in proxy.stream(job_id)] == []
    finally:
        await proxy.close()
    async with grpc.aio.insecure_channel(fleet.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        request = agent_pb2.ReadLogsRequest(job_id="j-0000000000-000000", attempt=1)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            _ = [chunk async for chunk in stub.ReadLogs(request, timeout=5)]
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "any site of this fleet" in (info.value.details() or "")


async def test_a_failing_and_a_cancelled_simulated_job(
    start_fleet: StartFleet, store: JobStore, run_dispatcher: RunDispatcher
) -> None:
    sites = sim_sites(3)
    fleet = await start_fleet(sites)
    await register(store, sites, fleet.address)
    dispatcher = run_dispatcher()
    await wait_all_connected(dispatcher, fleet.site_ids)

    failing = await submit_to(store, sites[0].id, "fails", command=["x"], env={"SG_SIM_EXIT": "3"})
    await wait_state(store, failing, JobState.FAILED)
    job = await store.get_job(failing)
    assert (job.exit_code, job.has_exit_code) == (3, True)

    forever = await submit_to(store, sites[1].id, "forever", command=["sleep", "infinity"])
    await wait_state(store, forever, JobState.RUNNING)
    assert fleet.runtime(sites[1].id).capacity().running == 1
    await store.cancel(forever)
    await wait_state(store, forever, JobState.CANCELLED)
    assert fleet.runtime(sites[1].id).capacity().running == 0


async def test_an_unknown_site_is_refused(
    start_fleet: StartFleet, store: JobStore, run_dispatcher: RunDispatcher
) -> None:
    sites = sim_sites(3)
    fleet = await start_fleet(sites)
    assert await connect_code(fleet.address, "sim-0002") == grpc.StatusCode.OK
    assert await connect_code(fleet.address, "atlantis") == grpc.StatusCode.NOT_FOUND
    not_hello = agent_pb2.ControlMessage(status_ack=agent_pb2.StatusAck(seqs=[1]))
    assert await connect_code(fleet.address, "sim-0001", first=not_hello) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )

    # a site registered at the fleet's address that the fleet does not have is never connected
    stranger = sim_sites(4)[3]
    await register(store, [*sites, stranger], fleet.address)
    dispatcher = run_dispatcher()
    await wait_all_connected(dispatcher, fleet.site_ids)
    await asyncio.sleep(0.5)
    assert stranger.id not in dispatcher.connected_sites()
    assert not dispatcher.links[stranger.id].greeted
    assert not (await store.get_site(stranger.id)).connected


async def test_stopping_the_fleet_disconnects_every_site(
    start_fleet: StartFleet, store: JobStore, run_dispatcher: RunDispatcher
) -> None:
    sites = sim_sites(20)
    fleet = await start_fleet(sites)
    await register(store, sites, fleet.address)
    dispatcher = run_dispatcher()
    await wait_all_connected(dispatcher, fleet.site_ids)
    running = await submit_to(store, sites[0].id, "long", command=["sleep", "600"])
    await wait_state(store, running, JobState.RUNNING)

    await fleet.stop(0)
    async with asyncio.timeout(10):
        while dispatcher.connected_sites():
            await asyncio.sleep(0.05)
    for site in sites:
        assert not (await store.get_site(site.id)).connected
    assert fleet.runtime(sites[0].id).capacity().running == 0
    assert not fleet.runtime(sites[0].id).is_open


async def test_a_fleet_serves_many_sites_over_mutual_tls(
    start_fleet: StartFleet, store: JobStore, run_dispatcher: RunDispatcher, tmp_path: Path
) -> None:
    pki = tmp_path / "certs"
    write_dev_pki(pki)
    sites = sim_sites(10)
    ca, ca_key = (pki / "ca.pem").read_bytes(), (pki / "ca-key.pem").read_bytes()

    def identity(name: str, names: Sequence[str], *, client_auth: bool = False) -> TlsFiles:
        cert, key = issue_certificate(
            ca, ca_key, common_name=name, dns_names=names, days=1, client_auth=client_auth
        )
        (pki / f"{name}.pem").write_bytes(cert)
        (pki / f"{name}-key.pem").write_bytes(key)
        return TlsFiles(ca=pki / "ca.pem", cert=pki / f"{name}.pem", key=pki / f"{name}-key.pem")

    served = identity("fleet", [site_server_name(s.id) for s in sites])
    fleet = await start_fleet(sites, tls=served)
    await register(store, sites, fleet.address)
    dispatcher = run_dispatcher(TlsFiles.in_dir(pki, "control-plane"))
    await wait_all_connected(dispatcher, fleet.site_ids)
    job_id = await submit_to(store, sites[7].id, "tls", command=["sleep", "0.1"])
    await wait_state(store, job_id, JobState.SUCCEEDED)

    # a certificate from the same CA that is not the control plane's learns nothing, not even
    # whether a site is one of the fleet's
    stranger = identity("stranger", ["stranger.sovereign-grid"], client_auth=True)
    for site_id in (sites[0].id, "atlantis"):
        options = channel_options_for(site_server_name(sites[0].id))
        async with grpc.aio.secure_channel(
            fleet.address, channel_credentials(stranger), options=options
        ) as channel:
            assert await _connect_code(channel, site_id, None) == (
                grpc.StatusCode.PERMISSION_DENIED
            )
    assert CONTROL_PLANE_NAME != "stranger.sovereign-grid"

    # a certificate that leaves out one site is refused at start, naming it
    partial = identity("partial", [site_server_name(s.id) for s in sites[:-1]])
    with pytest.raises(InvalidSpecError) as info:
        await start_fleet(sites, tls=partial)
    assert site_server_name(sites[-1].id) in info.value.message
    assert "1 of the fleet's 10 sites" in info.value.message


async def test_journals_in_memory_by_default_or_in_files(start_fleet: StartFleet) -> None:
    sites = sim_sites(3)
    in_memory = await start_fleet(sites)
    on_disk = await start_fleet(sites, journal="file")
    for fleet, expected in ((in_memory, False), (on_disk, True)):
        for site in sites:
            state_dir = fleet.runtime(site.id).config.state_dir
            assert (state_dir / "journal.sqlite3").exists() is expected
            assert fleet.runtime(site.id).config.journal_path.name != "" and state_dir.is_dir()


def test_bad_fleets_are_refused(tmp_path: Path) -> None:
    sites = sim_sites(2)
    with pytest.raises(InvalidSpecError, match="at least one site"):
        SimFleet([], state_root=tmp_path)
    with pytest.raises(InvalidSpecError, match="sim-0001"):
        SimFleet([sites[0], sites[1], sites[0]], state_root=tmp_path)
    with pytest.raises(InvalidSpecError, match="journal"):
        SimFleet(sites, state_root=tmp_path, journal="redis")  # type: ignore[arg-type]
    with pytest.raises(InvalidSpecError):
        sim_sites(2, prefix="Not_A_Site")
    with pytest.raises(InvalidSpecError):
        sim_sites(2, jurisdictions=["XX"])


def test_sim_sites_are_the_same_for_the_same_arguments() -> None:
    sites = sim_sites(12, prefix="lab", jurisdictions=["NO", "SE", "FI"], gpus=4, gpu_type="A100")
    assert sites == sim_sites(12, prefix="lab", jurisdictions=["NO", "SE", "FI"], gpus=4,
                              gpu_type="A100")  # fmt: skip
    assert [s.id for s in sites[:2]] + [sites[-1].id] == ["lab-0001", "lab-0002", "lab-0012"]
    assert [s.jurisdiction for s in sites[:4]] == ["NO", "SE", "FI", "NO"]
    assert dict(sites[0].gpus) == {"A100": 4}
    assert sim_sites(12345)[-1].id == "sim-12345"


# -- python -m agents.fleet -----------------------------------------------------------------------


def fleet_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["OTEL_TRACES_EXPORTER"] = "none"
    return env


def test_fleet_command_help_and_bad_arguments() -> None:
    run = [sys.executable, "-m", "agents.fleet"]
    result = subprocess.run(
        [*run, "--help"], capture_output=True, text=True, env=fleet_env(), timeout=30, check=False
    )
    assert result.returncode == 0
    for option in ("--sites", "--prefix", "--jurisdictions", "--gpus", "--listen", "--ready-file",
                   "--insecure", "--tls-ca", "--tls-cert", "--tls-key", "--journal"):  # fmt: skip
        assert option in result.stdout
    for args, message in (
        (["--sites", "3"], "choose transport security"),
        (["--sites", "0", "--insecure"], "at least one site"),
        (["--sites", "3", "--insecure", "--jurisdictions", "NO,XX"], "XX"),
    ):
        result = subprocess.run(
            [*run, *args], capture_output=True, text=True, env=fleet_env(), timeout=30, check=False
        )
        assert result.returncode == 2, result.stderr
        assert message in result.stderr


def test_fleet_command_on_a_taken_port_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "agents.fleet", "--sites", "2", "--insecure",
             "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path)],
            capture_output=True, text=True, env=fleet_env(), timeout=30, check=False,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"agents.fleet: cannot start the fleet on 127.0.0.1:{port}" in result.stderr


async def test_a_thousand_sites_in_one_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m agents.fleet --sites 1000``: every site answers a control stream, all 1,000
    open at once on one connection. Its memory and CPU, idle for 10 s, are printed (measured,
    not asserted: the benchmark suite holds the goals)."""
    count, idle = 1000, 10.0
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agents.fleet", "--sites", str(count), "--insecure",
         "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=fleet_env(),
    )  # fmt: skip
    try:
        async with asyncio.timeout(60):
            while not ready.exists():
                assert proc.poll() is None, proc.communicate()
                await asyncio.sleep(0.05)
        address = ready.read_text().strip()
        assert children_of(proc.pid) == set()  # one process, whatever the number of sites

        async def idle_for(seconds: float) -> tuple[int, float]:
            """The fleet's RSS after ``seconds`` idle, and its CPU share meanwhile."""
            cpu, wall = cpu_seconds(proc.pid), time.monotonic()
            await asyncio.sleep(seconds)
            share = (cpu_seconds(proc.pid) - cpu) / (time.monotonic() - wall)
            return rss_bytes(proc.pid), share

        unconnected_rss, unconnected_cpu = await idle_for(idle)

        # a control stream to every site at once, as a dispatcher opens them, on one channel;
        # heartbeats asked for once an hour, so that the streams stay idle
        sites = sim_sites(count)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            calls = [stub.Connect() for _ in sites]
            for call, site in zip(calls, sites, strict=True):
                hello = agent_pb2.ControlHello(site_id=site.id, heartbeat_interval_seconds=3600)
                await call.write(agent_pb2.ControlMessage(hello=hello))
            async with asyncio.timeout(60):
                answers = await asyncio.gather(*(call.read() for call in calls))
            for answer, site in zip(answers, sites, strict=True):
                assert isinstance(answer, agent_pb2.AgentMessage)
                assert answer.hello.site_id == site.id
            connected_rss, connected_cpu = await idle_for(idle)
            for call in calls:
                call.cancel()
        with capsys.disabled():
            print(
                f"\n{count} simulated sites in one fleet process (python -m agents.fleet), "
                f"idle {idle:.0f} s: RSS {unconnected_rss / 2**20:.0f} MiB = "
                f"{unconnected_rss / count / 1024:.0f} KiB/site, CPU {unconnected_cpu:.1%} of a "
                f"core; with all {count} control streams open (no heartbeats): RSS "
                f"{connected_rss / 2**20:.0f} MiB = {connected_rss / count / 1024:.0f} KiB/site, "
                f"CPU {connected_cpu:.1%}"
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"{count} sites sim-0001..sim-{count:04d}" in out
