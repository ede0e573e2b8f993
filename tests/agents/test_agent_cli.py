"""The sg-agent command, as a real process: help, bad input, SIGTERM, and recovery after SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from agents import AgentConfig, AgentServer
from orchestrator._pb.agent.v1 import agent_pb2, agent_pb2_grpc
from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.config import TlsFiles
from orchestrator.security.certs import site_server_name, write_dev_pki, write_site_certificate
from orchestrator.security.tls import channel_credentials, channel_options_for

REPO_ROOT = Path(__file__).resolve().parents[2]
SITES = REPO_ROOT / "examples" / "sites.yaml"
RUNNING = types_pb2.JOB_STATE_RUNNING
CANCELLED = types_pb2.JOB_STATE_CANCELLED
LOST = types_pb2.JOB_STATE_LOST


def agent_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["OTEL_TRACES_EXPORTER"] = "none"
    return env


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agents", *args],
        capture_output=True,
        text=True,
        env=agent_env(),
        cwd=REPO_ROOT,
        timeout=30,
        check=False,
    )


def test_help_names_every_option() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for option in (
        "--sites", "--site", "--listen", "--state-dir", "--ready-file", "--log-level",
        "--tls-ca", "--tls-cert", "--tls-key", "--insecure",
    ):  # fmt: skip
        assert option in result.stdout


def test_unknown_site_exits_2_with_a_message(tmp_path: Path) -> None:
    result = run_cli(
        "--sites", str(SITES), "--site", "atlantis", "--state-dir", str(tmp_path), "--insecure"
    )
    assert result.returncode == 2
    assert "atlantis" in result.stderr


def test_a_taken_port_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "--sites", str(SITES), "--site", "narvik",
            "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path), "--insecure",
        )  # fmt: skip
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr


@pytest.fixture
async def spawn_agent(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    procs: list[asyncio.subprocess.Process] = []

    async def spawn(
        state_dir: Path, *, security: Sequence[str] = ("--insecure",)
    ) -> tuple[asyncio.subprocess.Process, str]:
        ready = tmp_path / f"ready-{len(procs)}"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agents",
            "--sites", str(SITES), "--site", "narvik",
            "--listen", "127.0.0.1:0", "--state-dir", str(state_dir),
            "--ready-file", str(ready), "--kill-grace", "1", *security,
            env=agent_env(), cwd=REPO_ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        procs.append(proc)
        async with asyncio.timeout(20):
            while not ready.exists():
                assert proc.returncode is None
                await asyncio.sleep(0.05)
        return proc, ready.read_text().strip()

    yield spawn
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def start_sleeper(d: Any, make_assignment: Callable[..., Any], pid_file: Path) -> int:
    script = f"echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; exec sleep 600"
    (ack,) = await d.dispatch(make_assignment("j-s", command=["sh", "-c", script]))
    assert ack.accepted
    await d.wait_status("j-s", state=RUNNING)
    async with asyncio.timeout(5):
        while not pid_file.exists():
            await asyncio.sleep(0.02)
    return int(pid_file.read_text())


async def test_sigterm_stops_the_agent_and_its_jobs(
    spawn_agent: Callable[..., Any],
    open_dispatcher: Callable[..., Any],
    make_assignment: Callable[..., Any],
    pid_alive: Callable[[int], bool],
    tmp_path: Path,
) -> None:
    proc, address = await spawn_agent(tmp_path / "state")
    assert address.startswith("127.0.0.1:")
    d = await open_dispatcher(address)
    sleeper = await start_sleeper(d, make_assignment, tmp_path / "pid")
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10):
        _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert not pid_alive(sleeper)


async def test_a_restarted_agent_re_adopts_what_a_killed_one_left_running(
    spawn_agent: Callable[..., Any],
    open_dispatcher: Callable[..., Any],
    make_assignment: Callable[..., Any],
    pid_alive: Callable[[int], bool],
    start_agent: Callable[[AgentConfig], Any],
    config: AgentConfig,
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"
    proc, address = await spawn_agent(state_dir)
    d = await open_dispatcher(address)
    sleeper = await start_sleeper(d, make_assignment, tmp_path / "pid")
    proc.kill()  # SIGKILL: no chance to stop its jobs
    await proc.communicate()
    assert pid_alive(sleeper)  # its own session: it outlives the agent

    # within its lease, the restarted agent takes the running attempt over
    restarted: AgentServer = await start_agent(AgentConfig(site=config.site, state_dir=state_dir))
    assert pid_alive(sleeper)
    d2 = await open_dispatcher(restarted.address, connect=False)
    hello = await d2.connect(config.site.id)
    assert [(h.job_id, h.state) for h in hello.held] == [("j-s", RUNNING)]
    assert restarted.runtime.capacity().running == 1
    (dup,) = await d2.dispatch(make_assignment("j-s"))
    assert dup.duplicate
    # and still stops it on request, and reports how it ended
    await d2.cancel("j-s", grace=0.2, reason="done with it")
    cancelled = await d2.wait_status("j-s", state=CANCELLED)
    assert "done with it" in cancelled.message
    assert not pid_alive(sleeper)


async def test_a_restarted_agent_stops_what_outlived_its_lease(
    spawn_agent: Callable[..., Any],
    open_dispatcher: Callable[..., Any],
    make_assignment: Callable[..., Any],
    pid_alive: Callable[[int], bool],
    start_agent: Callable[[AgentConfig], Any],
    config: AgentConfig,
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"
    proc, address = await spawn_agent(state_dir)
    d = await open_dispatcher(address)
    sleeper = await start_sleeper(d, make_assignment, tmp_path / "pid")
    proc.kill()
    await proc.communicate()
    # the agent stayed down past its lease (its file says when it ended)
    (state_dir / "lease").write_text(f"{time.time() - 1:.3f}\n")
    restarted: AgentServer = await start_agent(AgentConfig(site=config.site, state_dir=state_dir))
    d2 = await open_dispatcher(restarted.address)
    lost = await d2.wait_status("j-s", state=LOST)
    assert "lease ended" in lost.message
    assert not pid_alive(sleeper)


# -- transport security ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ((), "choose transport security: --tls-ca, --tls-cert and --tls-key"),
        (("--tls-ca", "ca.pem"), "missing --tls-cert, --tls-key"),
        (("--tls-ca", "ca.pem", "--tls-cert", "a.pem"), "missing --tls-key"),
        (("--insecure", "--tls-key", "k.pem"), "--insecure cannot be combined with --tls-key"),
    ],
    ids=["neither", "ca-only", "no-key", "both"],
)
def test_transport_security_must_be_chosen_once(
    tmp_path: Path, flags: tuple[str, ...], message: str
) -> None:
    result = run_cli(
        "--sites", str(SITES), "--site", "narvik", "--state-dir", str(tmp_path), *flags
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == []  # refused before anything started


async def test_insecure_warns_that_the_stream_is_plaintext(
    spawn_agent: Callable[..., Any], tmp_path: Path
) -> None:
    proc, _ = await spawn_agent(tmp_path / "state")
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10):
        _, stderr = await proc.communicate()
    assert proc.returncode == 0
    warnings = [line for line in stderr.decode().splitlines() if " WARNING " in line]
    assert any("plaintext and unauthenticated" in line for line in warnings), warnings


def tls_flags(certs: Path, site_id: str) -> tuple[str, ...]:
    return (
        "--tls-ca", str(certs / "ca.pem"),
        "--tls-cert", str(certs / "sites" / f"{site_id}.pem"),
        "--tls-key", str(certs / "sites" / f"{site_id}-key.pem"),
    )  # fmt: skip


async def test_a_tls_agent_serves_only_the_control_plane(
    spawn_agent: Callable[..., Any], tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    write_dev_pki(certs)
    write_site_certificate(certs, "narvik")
    proc, address = await spawn_agent(tmp_path / "state", security=tls_flags(certs, "narvik"))
    request = agent_pb2.ReadLogsRequest(job_id="j-0000000000-000000", attempt=1)
    channels = {
        "plaintext": grpc.aio.insecure_channel(address),
        "control plane": grpc.aio.secure_channel(
            address,
            channel_credentials(TlsFiles.in_dir(certs, "control-plane")),
            options=channel_options_for(site_server_name("narvik")),
        ),
    }
    codes = {}
    for who, channel in channels.items():
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in agent_pb2_grpc.AgentServiceStub(channel).ReadLogs(request):
                    pass
            codes[who] = info.value.code()
    assert codes == {
        "plaintext": grpc.StatusCode.UNAVAILABLE,
        "control plane": grpc.StatusCode.NOT_FOUND,  # got through: no such attempt
    }
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10):
        _, stderr = await proc.communicate()
    assert proc.returncode == 0
    assert b"serving on 127.0.0.1:" in stderr and b"(mutual TLS)" in stderr
    assert b"plaintext and unauthenticated" not in stderr


def test_a_certificate_of_another_site_exits_2_naming_it(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    write_dev_pki(certs)
    write_site_certificate(certs, "abilene")
    flags = tls_flags(certs, "abilene")
    result = run_cli(
        "--sites", str(SITES), "--site", "narvik", "--state-dir", str(tmp_path / "state"), *flags
    )  # fmt: skip
    assert result.returncode == 2
    assert str(certs / "sites" / "abilene.pem") in result.stderr
    assert "abilene.site.sovereign-grid" in result.stderr
    assert "narvik.site.sovereign-grid" in result.stderr
    assert not (tmp_path / "state").exists()
