"""The agent's lease: renewals keep attempts running, silence past the lease stops them (LOST),
and a new stream reports what the agent holds and gets the control plane's verdict."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agents import AgentConfig, AgentRuntime, AgentServer, AttemptRequest, LocalExecutor
from agents.executors import SimExecutor
from agents.executors.base import LaunchSpec
from agents.gpus import GpuAllocation, GpuInventory
from orchestrator._pb.agent.v1 import agent_pb2
from orchestrator._pb.orchestrator.v1 import types_pb2

RUNNING = types_pb2.JOB_STATE_RUNNING
LOST = types_pb2.JOB_STATE_LOST
CANCELLED = types_pb2.JOB_STATE_CANCELLED
SUCCEEDED = types_pb2.JOB_STATE_SUCCEEDED

MakeAssignment = Callable[..., agent_pb2.Assignment]


async def test_without_renewals_the_agent_stops_its_attempts_and_reports_them_lost(
    agent: AgentServer,
    open_dispatcher: Callable[..., Any],
    make_assignment: MakeAssignment,
    pid_alive: Callable[[int], bool],
) -> None:
    d = await open_dispatcher(agent.address, connect=False)
    hello = await d.connect("narvik", lease=0.6)
    await d.renew(hello.heartbeat_seq)
    started = time.monotonic()
    [ack] = await d.dispatch(make_assignment("j-1", command=("sleep", "600")))
    assert ack.accepted
    running = await d.wait_status("j-1", state=RUNNING)
    pid = next(a.handle.pid for a in agent.runtime._active.values())
    assert pid is not None and pid_alive(pid)
    # heartbeats keep flowing, but nothing renews the lease
    lost = await d.wait_status("j-1", state=LOST, timeout=5)
    elapsed = time.monotonic() - started
    assert "lease expired" in lost.message
    assert not pid_alive(pid)
    # within the lease plus the kill grace (1 s here), with scheduling slack
    assert elapsed < 0.6 + 1.0 + 0.5, elapsed
    assert running.seq < lost.seq
    # while the lease is out, new work is refused rather than started and killed
    [refused] = await d.dispatch(make_assignment("j-2"))
    assert not refused.accepted and "lease expired" in refused.reason


async def test_renewed_heartbeats_keep_attempts_running(
    agent: AgentServer, open_dispatcher: Callable[..., Any], make_assignment: MakeAssignment
) -> None:
    d = await open_dispatcher(agent.address, connect=False)
    hello = await d.connect("narvik", lease=0.4)
    await d.renew(hello.heartbeat_seq)
    await d.dispatch(make_assignment("j-1", command=("sleep", "600")))
    await d.wait_status("j-1", state=RUNNING)
    renewed = 0
    deadline = time.monotonic() + 1.5  # several lease periods
    while time.monotonic() < deadline:
        await d.wait_heartbeats(1)
        hb = d.heartbeats[-1]
        await d.renew(hb.seq)
        renewed += 1
    assert renewed >= 10
    assert [u.state for u in d.statuses_of("j-1")] == [RUNNING]
    remaining = agent.runtime.lease_remaining()
    assert remaining is not None and 0 < remaining <= 0.4
    seqs = [hb.seq for hb in d.heartbeats]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] > hello.heartbeat_seq


async def test_a_new_stream_reports_held_attempts_and_reconcile_stops_and_forgets(
    agent: AgentServer,
    open_dispatcher: Callable[..., Any],
    make_assignment: MakeAssignment,
    wait_until: Callable[..., Any],
) -> None:
    first = await open_dispatcher(agent.address)
    await first.dispatch(
        make_assignment("keep", command=("sleep", "600")),
        make_assignment("stale", command=("sleep", "600")),
        make_assignment("ended"),
    )
    await first.wait_status("keep", state=RUNNING)
    await first.wait_status("stale", state=RUNNING)
    await first.wait_status("ended", state=SUCCEEDED)
    await first.cancel_call()  # the link drops before any status was acknowledged

    second = await open_dispatcher(agent.address, connect=False)
    hello = await second.connect("narvik")
    held = {(h.job_id, h.attempt): h.state for h in hello.held}
    assert held == {
        ("keep", 1): RUNNING,
        ("stale", 1): RUNNING,
        ("ended", 1): SUCCEEDED,
    }
    await second.reconcile(stop=[("stale", 1)], forget=[("ended", 1)])
    update = await second.wait_status("stale", state=CANCELLED)
    assert "moved this attempt on" in update.message
    await wait_until(lambda: agent.runtime.capacity().running == 1)
    # the forgotten update is no longer held or resent
    third = await open_dispatcher(agent.address, connect=False)
    await second.cancel_call()
    hello3 = await third.connect("narvik")
    assert ("ended", 1) not in {(h.job_id, h.attempt) for h in hello3.held}
    assert ("keep", 1) in {(h.job_id, h.attempt) for h in hello3.held}


async def test_the_launch_shim_stops_a_job_whose_agent_cannot_when_the_lease_ends(
    tmp_path: Path,
) -> None:
    """The last line of defence for a frozen agent: the job's launch shim reads the lease file
    and stops the job itself shortly after the lease ends (SIGTERM, then SIGKILL)."""
    lease = tmp_path / "lease"
    lease.write_text(f"{time.time() + 0.6:.3f}\n")
    spec = LaunchSpec(
        job_id="frozen",
        attempt=1,
        argv=("sh", "-c", "trap '' TERM; sleep 600"),  # ignores SIGTERM: needs the SIGKILL
        working_dir=tmp_path / "work",
        stdout_path=tmp_path / "stdout.log",
        stderr_path=tmp_path / "stderr.log",
        kill_grace_seconds=0.3,
        lease_file=lease,
    )
    executor = LocalExecutor(base_env={"PATH": os.environ.get("PATH", os.defpath)})
    started = time.monotonic()
    handle = await executor.start(spec)
    # nobody renews the lease and nobody terminates the handle
    result = await asyncio.wait_for(handle.wait(), timeout=10)
    elapsed = time.monotonic() - started
    assert result.signal == signal.SIGKILL
    # lease 0.6 s + the shim's margin 0.5 s + grace 0.3 s, polled every 0.2 s
    assert 1.1 <= elapsed < 2.5, elapsed
    assert "lease ended" in spec.stderr_path.read_text()


async def test_a_renewed_lease_file_keeps_the_job_running(tmp_path: Path) -> None:
    lease = tmp_path / "lease"
    spec = LaunchSpec(
        job_id="fine",
        attempt=1,
        argv=("sleep", "1.5"),
        working_dir=tmp_path / "work",
        stdout_path=tmp_path / "stdout.log",
        stderr_path=tmp_path / "stderr.log",
        kill_grace_seconds=0.3,
        lease_file=lease,  # missing at first: no lease yet, nothing is stopped
    )
    handle = await LocalExecutor(base_env={"PATH": os.environ.get("PATH", os.defpath)}).start(spec)
    waiting = asyncio.ensure_future(handle.wait())
    while not waiting.done():
        lease.write_text(f"{time.time() + 0.4:.3f}\n")
        await asyncio.sleep(0.1)
    assert waiting.result().succeeded


def lease_file_says(agent: AgentServer) -> float | None:
    """The lease's end the agent's lease file holds (epoch seconds), None without a file."""
    path = agent.runtime.config.lease_path
    return float(path.read_text()) if path.exists() else None


async def test_the_lease_file_follows_the_lease_only_while_attempts_are_held(
    agent: AgentServer,
    open_dispatcher: Callable[..., Any],
    make_assignment: MakeAssignment,
    wait_until: Callable[..., Any],
) -> None:
    """An idle agent's renewals write nothing; an attempt that starts long after the file was
    last written is not stopped by its launch shim (the file is brought up to date before it
    starts), and the agent still stops it itself once renewals stop."""
    lease = 0.6
    d = await open_dispatcher(agent.address, connect=False)
    hello = await d.connect("narvik", lease=lease)
    renewing = True

    async def renew_while_asked() -> None:
        await d.renew(hello.heartbeat_seq)
        while True:
            await d.wait_heartbeats(1)
            if renewing:
                await d.renew(d.heartbeats[-1].seq)

    renewer = asyncio.create_task(renew_while_asked())
    try:
        await asyncio.sleep(2 * lease)  # renewed many times, nothing held: no file
        assert lease_file_says(agent) is None

        [ack] = await d.dispatch(make_assignment("j-1", command=("sleep", "600")))
        assert ack.accepted
        await d.wait_status("j-1", state=RUNNING)
        first = lease_file_says(agent)
        assert first is not None and first > time.time()
        await wait_until(lambda: (lease_file_says(agent) or 0) > first + 0.2)  # follows renewals

        await d.cancel("j-1", grace=0.1)
        await d.wait_status("j-1", state=CANCELLED)
        await wait_until(lambda: agent.runtime.capacity().running == 0)
        await asyncio.sleep(0.1)  # a write asked for just before the end lands
        last = lease_file_says(agent)
        await asyncio.sleep(2 * lease)  # idle again: renewals leave the file behind
        assert lease_file_says(agent) == last
        assert last is not None and last < time.time()  # the file alone says "lease over"
        remaining = agent.runtime.lease_remaining()
        assert remaining is not None and remaining > 0  # the lease itself runs

        # a new attempt: its shim would stop it at once on that stale file; it must not
        [ack] = await d.dispatch(make_assignment("j-2", command=("sleep", "600")))
        assert ack.accepted
        await d.wait_status("j-2", state=RUNNING)
        await asyncio.sleep(2 * lease)
        assert [u.state for u in d.statuses_of("j-2")] == [RUNNING]
        assert (lease_file_says(agent) or 0) > time.time()

        renewing = False  # the control plane falls silent: the agent stops the attempt itself
        stopped = time.monotonic()
        lost = await d.wait_status("j-2", state=LOST, timeout=5)
        assert "lease expired" in lost.message and "stopped by the agent" in lost.message
        assert time.monotonic() - stopped < lease + 1.0 + 0.5
    finally:
        renewer.cancel()
        await asyncio.gather(renewer, return_exceptions=True)


async def test_an_agent_of_simulated_attempts_writes_no_lease_file_and_still_fences(
    config: AgentConfig,
) -> None:
    """No launch shim reads it and nothing survives a restart to re-adopt: a runtime with the
    simulated executor keeps its lease in memory only; its watchdog stops attempts all the
    same when the lease ends."""
    runtime = AgentRuntime(config, executor=SimExecutor())
    runtime.set_lease_seconds(0.3)
    await runtime.open()
    try:
        runtime.renew_lease(runtime.next_heartbeat())
        forever = AttemptRequest(job_id="j-sim", attempt=1, command=("sleep", "infinity"))
        [ack] = runtime.dispatch([forever])
        assert ack.accepted
        for _ in range(5):
            await asyncio.sleep(0.1)
            runtime.renew_lease(runtime.next_heartbeat())
        assert runtime.capacity().running == 1
        async with asyncio.timeout(3):  # no more renewals: fenced at the lease's end
            while runtime.capacity().running:
                await asyncio.sleep(0.02)
        [update] = [u for u in runtime.pending_updates() if u.job_id == "j-sim"][-1:]
        assert update.state.name == "LOST" and "lease expired" in update.message
        assert not config.lease_path.exists()
    finally:
        await runtime.close(grace_seconds=0.1)


def test_gpu_slots_of_a_re_adopted_attempt_are_claimed_exactly() -> None:
    inventory = GpuInventory({"H100": 4})
    inventory.claim(GpuAllocation("H100", (2,)))
    assert inventory.free("H100") == 3
    with pytest.raises(ValueError, match="cannot be claimed"):
        inventory.claim(GpuAllocation("H100", (2,)))
    with pytest.raises(ValueError, match="cannot be claimed"):
        inventory.claim(GpuAllocation("H100", (4,)))
    # the others are handed out around the claimed one
    assert inventory.allocate("H100", 3).slots == (0, 1, 3)
    assert inventory.free("H100") == 0
