"""AgentRuntime driven directly, without gRPC, plus the package's public surface."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import agents
import agents.executors
from agents import (
    AgentConfig,
    AgentRuntime,
    AttemptNotFoundError,
    AttemptRequest,
    CancelRequest,
    Journal,
    LocalExecutor,
)
from agents.executors.base import LaunchSpec
from orchestrator.states import JobState


@pytest.fixture
async def runtime(config: AgentConfig) -> AsyncIterator[AgentRuntime]:
    rt = AgentRuntime(
        config, executor=LocalExecutor(base_env={"PATH": os.environ.get("PATH", os.defpath)})
    )
    await rt.open()
    yield rt
    await rt.close(grace_seconds=0.2)


def request(job_id: str, *command: str, **kwargs: object) -> AttemptRequest:
    return AttemptRequest(job_id=job_id, attempt=1, command=command or ("true",), **kwargs)  # type: ignore[arg-type]


async def test_cancel_before_start_never_starts_the_process(
    runtime: AgentRuntime, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    (ack,) = runtime.dispatch([request("j-1", "touch", str(marker))])
    assert ack.accepted
    runtime.cancel([CancelRequest("j-1", 1, reason="changed my mind")])  # same tick: not started
    await asyncio.wait_for(runtime.wait_for_updates(after_seq=0), 5)
    (update,) = runtime.pending_updates()
    assert (update.state, update.message) == (JobState.CANCELLED, "cancelled before start")
    await asyncio.sleep(0.1)
    assert not marker.exists()
    assert runtime.capacity().running == 0


async def test_outbox_waits_acks_and_capacity(runtime: AgentRuntime) -> None:
    (ack,) = runtime.dispatch([request("j-2", gpus_per_node=2, gpu_type="GB200")])
    assert ack.accepted
    assert runtime.capacity().gpus_free == {"H100": 4, "GB200": 0}
    assert runtime.capacity().running == 1
    while len(runtime.pending_updates()) < 2:
        last = max([u.seq for u in runtime.pending_updates()], default=0)
        await asyncio.wait_for(runtime.wait_for_updates(after_seq=last), 5)
    running, done = runtime.pending_updates()
    assert (running.state, done.state, done.exit_code) == (JobState.RUNNING, JobState.SUCCEEDED, 0)
    assert runtime.pending_updates(after_seq=running.seq) == [done]
    assert runtime.pending_updates(limit=1) == [running]
    assert runtime.capacity().gpus_free == {"H100": 4, "GB200": 2}
    assert runtime.ack_status([running.seq, 12345]) == 1
    assert runtime.pending_updates() == [done]
    with pytest.raises(AttemptNotFoundError):
        runtime.attempt_output("j-2", 7)
    assert runtime.attempt_output("j-2", 1).ended.is_set()


async def test_close_stops_running_attempts_and_refuses_new_ones(runtime: AgentRuntime) -> None:
    runtime.dispatch([request("j-3", "sleep", "600")])
    await asyncio.wait_for(runtime.wait_for_updates(after_seq=0), 5)
    closing = asyncio.create_task(runtime.close(grace_seconds=0.2))
    await asyncio.sleep(0)
    (refused,) = runtime.dispatch([request("j-4")])
    assert (refused.accepted, refused.reason) == (False, "agent shutting down")
    await asyncio.wait_for(closing, 5)
    assert not runtime.is_open
    last = runtime.pending_updates()[-1]
    assert (last.job_id, last.state) == ("j-3", JobState.FAILED)
    assert last.message == "agent shutting down; killed by signal SIGTERM"


def test_public_surface_is_pinned() -> None:
    assert sorted(agents.__all__) == sorted(
        [
            "AGENT_VERSION",
            "AckResult",
            "AgentConfig",
            "AgentRuntime",
            "AgentServer",
            "AgentService",
            "AttemptHandle",
            "AttemptNotFoundError",
            "AttemptOutput",
            "AttemptRecord",
            "AttemptRequest",
            "AttemptState",
            "CancelRequest",
            "Capacity",
            "Executor",
            "ExitResult",
            "GpuAllocation",
            "GpuInventory",
            "InsufficientGpusError",
            "Journal",
            "LaunchError",
            "LaunchSpec",
            "LocalExecutor",
            "StatusRecord",
        ]
    )
    assert all(hasattr(agents, name) for name in agents.__all__)
    assert all(hasattr(agents.executors, name) for name in agents.executors.__all__)
    assert isinstance(LocalExecutor(), agents.Executor)


async def test_open_reports_attempts_a_previous_run_left(config: AgentConfig) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    gone_pid = proc.pid
    journal = Journal(config.journal_path)
    journal.record_accepted("j-gone", 1, gpu_type="H100", gpu_slots=(0,), now=1.0)
    journal.record_started("j-gone", 1, identity=f"local:{gone_pid}:1", pid=gone_pid, now=2.0)
    journal.record_accepted("j-unstarted", 1, gpu_type="", gpu_slots=(), now=3.0)
    # one that ended while no agent watched: its launch shim left its exit status behind
    journal.record_accepted("j-ended", 1, gpu_type="", gpu_slots=(), now=4.0, command=("x",))
    journal.record_started("j-ended", 1, identity=f"local:{gone_pid}:1", pid=gone_pid, now=5.0)
    ended_dir = config.attempts_dir / "j-ended" / "1"
    ended_dir.mkdir(parents=True)
    (ended_dir / "exit.json").write_text('{"returncode": 3}\n')
    journal.close()

    rt = AgentRuntime(config, executor=LocalExecutor())
    await rt.open()
    try:
        finals = {u.job_id: u for u in rt.pending_updates()}
        # gone without a word: LOST, so the control plane runs them again without counting
        assert (finals["j-gone"].state, finals["j-gone"].message) == (
            JobState.LOST,
            "agent restarted; process gone",
        )
        assert (finals["j-unstarted"].state, finals["j-unstarted"].message) == (
            JobState.LOST,
            "agent restarted before it started",
        )
        assert (finals["j-ended"].state, finals["j-ended"].exit_code) == (JobState.FAILED, 3)
        assert "ended while the agent was down" in finals["j-ended"].message
        assert rt.capacity().gpus_free["H100"] == 4  # nothing held by the dead attempts
        (dup,) = rt.dispatch([request("j-gone")])
        assert dup.duplicate
    finally:
        await rt.close()


async def test_agent_refuses_work_over_its_power_cap_and_expands_groups(tmp_path: Path) -> None:
    """Defence in depth: the agent checks the power cap and residency groups itself."""
    from agents.config import AgentConfig
    from agents.executors import LocalExecutor
    from agents.runtime import AgentRuntime, AttemptRequest
    from orchestrator.sitefile import SiteConfig

    site = SiteConfig(
        id="capped", name="Capped", jurisdiction="NO", owner="p", power_cap_mw=0.02,
        cpus=64, memory_mb=1 << 20, gpus={"H100": 16}, gpu_watts={"H100": 1400},
    )  # fmt: skip
    runtime = AgentRuntime(AgentConfig(site=site, state_dir=tmp_path), executor=LocalExecutor())
    await runtime.open()
    try:

        def req(job: str, allowed: tuple[str, ...] = ()) -> AttemptRequest:
            return AttemptRequest(
                job_id=job, attempt=1, command=("sleep", "30"), gpus_per_node=8, gpu_type="H100",
                allowed_jurisdictions=allowed,
            )  # fmt: skip

        first, second = runtime.dispatch([req("j1"), req("j2")])
        assert first.accepted
        assert not second.accepted and second.reason.startswith("power:")
        assert runtime.capacity().gpus_free == {"H100": 8}  # the refused job holds nothing
    finally:
        await runtime.close(grace_seconds=0.5)


async def test_a_start_the_last_run_never_journaled_is_found_and_re_adopted(
    config: AgentConfig, tmp_path: Path
) -> None:
    """The agent died between starting an attempt's process and journaling it: the launch shim
    wrote its own identity before the job existed, so the restarted agent still finds the job
    (and reports it RUNNING) instead of leaving it running unknown while it is run again."""
    env = {"PATH": os.environ.get("PATH", os.defpath)}
    journal = Journal(config.journal_path)
    journal.record_accepted(
        "j-unjournaled", 1, gpu_type="H100", gpu_slots=(1,), now=1.0, command=("sleep", "600")
    )
    journal.close()
    directory = config.attempts_dir / "j-unjournaled" / "1"
    spec = LaunchSpec(
        job_id="j-unjournaled",
        attempt=1,
        argv=("sleep", "600"),
        working_dir=directory / "work",
        stdout_path=directory / "stdout.log",
        stderr_path=directory / "stderr.log",
    )
    orphan = await LocalExecutor(base_env=env).start(spec)  # then the agent "dies"
    config.lease_path.write_text(f"{time.time() + 60:.3f}\n")  # its lease still runs
    rt = AgentRuntime(config, executor=LocalExecutor(base_env=env))
    await rt.open()
    try:
        assert [(j, s) for j, _, s in rt.held()] == [("j-unjournaled", JobState.RUNNING)]
        assert rt.capacity().gpus_free["H100"] == 3  # its GPU slot is held again
        [update] = rt.pending_updates()
        assert (update.job_id, update.state) == ("j-unjournaled", JobState.RUNNING)
        rt.cancel([CancelRequest("j-unjournaled", 1, grace_seconds=0.2)])
        while rt.capacity().running:
            await asyncio.sleep(0.02)
        assert rt.pending_updates()[-1].state is JobState.CANCELLED
        assert not os.path.exists(f"/proc/{orphan.pid}") or _zombie(orphan.pid)
    finally:
        await rt.close(grace_seconds=0.2)


def _zombie(pid: int) -> bool:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return data[data.rfind(b")") + 2 :].split()[0] == b"Z"
