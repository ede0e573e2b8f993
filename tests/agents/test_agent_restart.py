"""What the journal carries across an agent restart: dedup, unacked updates, output."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agents import AgentConfig, AgentServer
from orchestrator._pb.agent.v1 import agent_pb2, agent_pb2_grpc
from orchestrator._pb.orchestrator.v1 import types_pb2

RUNNING = types_pb2.JOB_STATE_RUNNING
SUCCEEDED = types_pb2.JOB_STATE_SUCCEEDED
FAILED = types_pb2.JOB_STATE_FAILED


async def test_restart_keeps_dedup_unacked_updates_and_output(
    config: AgentConfig,
    start_agent: Callable[[AgentConfig], Any],
    open_dispatcher: Callable[..., Any],
    make_assignment: Callable[..., Any],
    pid_alive: Callable[[int], bool],
    wait_until: Callable[..., Any],
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pid"
    first: AgentServer = await start_agent(config)
    d1 = await open_dispatcher(first.address)
    acks = await d1.dispatch(
        make_assignment("j-a", 2, command=["sh", "-c", "echo kept"]),
        make_assignment("j-k", command=["sh", "-c", f"echo $$ > {pid_file}; exec sleep 600"]),
    )
    assert all(a.accepted for a in acks)
    await d1.wait_status("j-a", 2, state=SUCCEEDED)
    await d1.wait_status("j-k", state=RUNNING)
    await wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() != "")
    sleeper = int(pid_file.read_text())
    await d1.ack([u.seq for u in d1.statuses_of("j-a", 2) if u.state == RUNNING])
    await d1.wait_heartbeats(2)  # the ack has been processed
    await first.stop(0.2, kill_jobs=True)
    assert not pid_alive(sleeper)  # stopping with kill_jobs stops the jobs

    second: AgentServer = await start_agent(config)
    d2 = await open_dispatcher(second.address)
    await d2.wait_for(lambda: any(u.job_id == "j-k" and u.state == FAILED for u in d2.statuses))
    resent = [(u.job_id, u.attempt, u.state) for u in d2.statuses]
    assert sorted(resent) == [("j-a", 2, SUCCEEDED), ("j-k", 1, RUNNING), ("j-k", 1, FAILED)]
    seqs = [u.seq for u in d2.statuses]
    assert seqs == sorted(seqs)  # resent in seq order; the acked RUNNING of j-a is gone
    assert {u.seq for u in d2.statuses} <= {u.seq for u in d1.statuses} | {seqs[-1]}
    assert d2.statuses_of("j-k")[-1].message.startswith("agent shutting down")

    dup, stale = await d2.dispatch(make_assignment("j-a", 2), make_assignment("j-a", 1))
    assert (dup.accepted, dup.duplicate) == (True, True)
    assert (stale.accepted, stale.reason) == (False, "stale attempt 1 < 2")

    async with grpc.aio.insecure_channel(second.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        request = agent_pb2.ReadLogsRequest(job_id="j-a", attempt=2)
        output = b"".join([c.data async for c in stub.ReadLogs(request)])
    assert output == b"kept\n"


async def test_stop_without_kill_jobs_keeps_attempts_running(
    agent: AgentServer,
    open_dispatcher: Callable[..., Any],
    make_assignment: Callable[..., Any],
    tmp_path: Path,
) -> None:
    go = tmp_path / "go"
    d1 = await open_dispatcher(agent.address)
    script = f'while [ ! -e "{go}" ]; do sleep 0.02; done'
    await d1.dispatch(make_assignment("j-w", command=["sh", "-c", script]))
    await d1.wait_status("j-w", state=RUNNING)

    await agent.stop(0.2)  # stop serving only
    await asyncio.wait_for(d1.ended.wait(), 5)
    assert d1.code == grpc.StatusCode.UNAVAILABLE
    assert agent.runtime.capacity().running == 1

    address = await agent.start()  # serve again, same runtime
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    d2 = await open_dispatcher(address)
    go.touch()
    done = await d2.wait_status("j-w", state=SUCCEEDED)
    assert done.exit_code == 0
