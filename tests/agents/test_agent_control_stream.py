"""The Connect control stream, over real gRPC on loopback, driven as a dispatcher would."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agents import AgentServer
from orchestrator._pb.agent.v1 import agent_pb2, agent_pb2_grpc
from orchestrator._pb.orchestrator.v1 import types_pb2

RUNNING = types_pb2.JOB_STATE_RUNNING
SUCCEEDED = types_pb2.JOB_STATE_SUCCEEDED
FAILED = types_pb2.JOB_STATE_FAILED
CANCELLED = types_pb2.JOB_STATE_CANCELLED

MakeAssignment = Callable[..., agent_pb2.Assignment]


def wait_for_file_command(go: Path) -> list[str]:
    """A job that prints its environment, then waits until ``go`` exists."""
    return ["sh", "-c", f'env; echo END; while [ ! -e "{go}" ]; do sleep 0.02; done']


async def read_logs(address: str, job_id: str, attempt: int = 1, **kwargs: Any) -> bytes:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        request = agent_pb2.ReadLogsRequest(job_id=job_id, attempt=attempt, **kwargs)
        return b"".join([chunk.data async for chunk in stub.ReadLogs(request)])


def env_of(output: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.decode().splitlines() if "=" in line)


async def test_hello_reports_site_and_capacity(dispatcher: Any, agent: AgentServer) -> None:
    assert dispatcher.messages[0] == "hello"
    await dispatcher.wait_heartbeats(2)
    hb = dispatcher.heartbeats[-1]
    assert {p.type: p.count for p in hb.capacity.gpus_free} == {"H100": 4, "GB200": 2}
    assert hb.capacity.running == 0


async def test_hello_fields(agent: AgentServer, open_dispatcher: Callable[..., Any]) -> None:
    d = await open_dispatcher(agent.address, connect=False)
    hello = await d.connect("narvik")
    assert (hello.site_id, hello.jurisdiction, hello.version) == ("narvik", "NO", "0.1.0")
    assert [(p.type, p.count) for p in hello.capacity.gpus_free] == [("H100", 4), ("GB200", 2)]


async def test_site_mismatch_is_refused_naming_both(
    agent: AgentServer, open_dispatcher: Callable[..., Any]
) -> None:
    d = await open_dispatcher(agent.address, connect=False)
    with pytest.raises(AssertionError, match="FAILED_PRECONDITION"):
        await d.connect("abilene")
    await asyncio.wait_for(d.ended.wait(), 5)
    assert d.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "narvik" in d.details and "abilene" in d.details


async def test_first_message_must_be_hello(
    agent: AgentServer, open_dispatcher: Callable[..., Any], make_assignment: MakeAssignment
) -> None:
    d = await open_dispatcher(agent.address, connect=False)
    d._call = d._stub.Connect(d._requests())
    d._reader = asyncio.create_task(d._read())
    await d.send(
        agent_pb2.ControlMessage(
            dispatch=agent_pb2.DispatchBatch(assignments=[make_assignment("j-x")])
        )
    )
    await asyncio.wait_for(d.ended.wait(), 5)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_service_is_serving(agent: AgentServer) -> None:
    async with grpc.aio.insecure_channel(agent.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "agent.v1.AgentService"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_success_and_failure_report_exit_codes(
    dispatcher: Any, make_assignment: MakeAssignment
) -> None:
    acks = await dispatcher.dispatch(
        make_assignment("j-ok", command=["true"]),
        make_assignment("j-bad", command=["sh", "-c", "exit 3"]),
    )
    assert [(a.job_id, a.accepted, a.duplicate) for a in acks] == [
        ("j-ok", True, False),
        ("j-bad", True, False),
    ]
    ok = await dispatcher.wait_status("j-ok", state=SUCCEEDED)
    assert (ok.has_exit_code, ok.exit_code, ok.message) == (True, 0, "exit code 0")
    bad = await dispatcher.wait_status("j-bad", state=FAILED)
    assert (bad.has_exit_code, bad.exit_code, bad.message) == (True, 3, "exit code 3")
    for job in ("j-ok", "j-bad"):
        updates = dispatcher.statuses_of(job)
        assert updates[0].state == RUNNING
        assert len(updates) == 2
        assert updates[0].seq < updates[1].seq
        assert updates[1].time.ToNanoseconds() >= updates[0].time.ToNanoseconds()
    seqs = [u.seq for u in dispatcher.statuses]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_command_that_cannot_start_fails_with_127(
    dispatcher: Any, make_assignment: MakeAssignment
) -> None:
    (ack,) = await dispatcher.dispatch(make_assignment("j-nf", command=["no-such-binary-x"]))
    assert ack.accepted
    failed = await dispatcher.wait_status("j-nf", state=FAILED)
    assert (failed.has_exit_code, failed.exit_code) == (True, 127)
    assert "no-such-binary-x" in failed.message
    assert [u.state for u in dispatcher.statuses_of("j-nf")] == [FAILED]  # never RUNNING


async def test_duplicate_and_stale_attempts(
    dispatcher: Any, make_assignment: MakeAssignment
) -> None:
    (first,) = await dispatcher.dispatch(make_assignment("j-d", 2))
    assert first.accepted and not first.duplicate
    await dispatcher.wait_status("j-d", 2, state=SUCCEEDED)
    dup, stale, dup_in_batch_a, dup_in_batch_b = await dispatcher.dispatch(
        make_assignment("j-d", 2),
        make_assignment("j-d", 1),
        make_assignment("j-e", 1),
        make_assignment("j-e", 1),
    )
    assert (dup.accepted, dup.duplicate) == (True, True)
    assert (stale.accepted, stale.reason) == (False, "stale attempt 1 < 2")
    assert (dup_in_batch_a.accepted, dup_in_batch_a.duplicate) == (True, False)
    assert (dup_in_batch_b.accepted, dup_in_batch_b.duplicate) == (True, True)
    await dispatcher.wait_status("j-e", state=SUCCEEDED)
    await dispatcher.wait_heartbeats(2)
    assert len(dispatcher.statuses_of("j-d", 2)) == 2  # the duplicate started nothing
    assert dispatcher.statuses_of("j-d", 1) == []
    assert len(dispatcher.statuses_of("j-e", 1)) == 2


async def test_residency_refusal(dispatcher: Any, make_assignment: MakeAssignment) -> None:
    refused, allowed = await dispatcher.dispatch(
        make_assignment("j-ae", allowed=["AE", "US"]),
        make_assignment("j-no", allowed=["SE", "NO"]),
    )
    assert not refused.accepted
    assert "AE" in refused.reason and "NO" in refused.reason and "narvik" in refused.reason
    assert allowed.accepted
    await dispatcher.wait_status("j-no", state=SUCCEEDED)
    await dispatcher.wait_heartbeats(2)
    assert dispatcher.statuses_of("j-ae") == []  # a refusal is only an ack


async def test_gpu_slots_env_and_capacity(
    dispatcher: Any, agent: AgentServer, make_assignment: MakeAssignment, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    command = wait_for_file_command(go)
    acks = await dispatcher.dispatch(
        make_assignment("j-g1", gpus=2, gpu_type="H100", command=command),
        make_assignment("j-g2", gpus=1, nodes=2, assigned_gpu_type="H100", command=command),
        make_assignment("j-g3", gpus=1, gpu_type="H100", command=command),
        make_assignment("j-g4", gpus=1, gpu_type="A100", command=command),
        make_assignment("j-g5", gpus=2, command=command),  # first type with 2 free: GB200
        make_assignment("j-cpu", command=command),
    )
    assert [a.accepted for a in acks] == [True, True, False, False, True, True]
    assert acks[2].reason.startswith("insufficient capacity: need 1 H100 GPUs, 0 free")
    assert acks[3].reason.startswith("insufficient capacity")
    for job in ("j-g1", "j-g2", "j-g5", "j-cpu"):
        await dispatcher.wait_status(job, state=RUNNING)
    await dispatcher.wait_heartbeats(1)
    capacity = dispatcher.heartbeats[-1].capacity
    assert {p.type: p.count for p in capacity.gpus_free} == {"H100": 0, "GB200": 0}
    assert capacity.running == 4

    envs: dict[str, dict[str, str]] = {}
    for job in ("j-g1", "j-g2", "j-g5", "j-cpu"):
        deadline = asyncio.get_running_loop().time() + 5
        while not (output := await read_logs(agent.address, job)).endswith(b"END\n"):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        envs[job] = env_of(output)
    for job, env in envs.items():
        assert env["JOB_ID"] == job
        assert env["JOB_ATTEMPT"] == "1"
        assert env["SG_SITE"] == "narvik"
        assert env["TRACEPARENT"].startswith("00-")
    h100 = [set(envs[j]["CUDA_VISIBLE_DEVICES"].split(",")) for j in ("j-g1", "j-g2")]
    assert h100[0] | h100[1] == {"0", "1", "2", "3"} and not h100[0] & h100[1]
    assert envs["j-g2"]["SG_NODES"] == "2" and envs["j-g2"]["SG_GPU_TYPE"] == "H100"
    assert envs["j-g5"]["SG_GPU_TYPE"] == "GB200"
    assert envs["j-g5"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert envs["j-cpu"]["CUDA_VISIBLE_DEVICES"] == ""

    go.touch()
    for job in ("j-g1", "j-g2", "j-g5", "j-cpu"):
        await dispatcher.wait_status(job, state=SUCCEEDED)
    (again,) = await dispatcher.dispatch(make_assignment("j-all", gpus=4, gpu_type="H100"))
    assert again.accepted  # the slots came back


async def test_spans_join_the_dispatch_trace(
    dispatcher: Any,
    agent: AgentServer,
    make_assignment: MakeAssignment,
    span_exporter: InMemorySpanExporter,
) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    parent = f"00-{trace_id}-b7ad6b7169203331-01"
    (ack,) = await dispatcher.dispatch(
        make_assignment(
            "j-tr", command=["sh", "-c", "echo $TRACEPARENT; exit 4"], traceparent=parent
        )
    )
    assert ack.accepted
    await dispatcher.wait_status("j-tr", state=FAILED)
    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    accept, run = spans["agent.accept"], spans["job.run"]
    assert f"{accept.context.trace_id:032x}" == trace_id
    assert accept.parent is not None and f"{accept.parent.span_id:016x}" == "b7ad6b7169203331"
    assert run.parent is not None and run.parent.span_id == accept.context.span_id
    assert run.context.trace_id == accept.context.trace_id
    assert run.attributes is not None
    assert run.attributes["job.id"] == "j-tr"
    assert run.attributes["job.attempt"] == 1
    assert run.attributes["site.id"] == "narvik"
    assert run.attributes["job.exit_code"] == 4
    printed = (await read_logs(agent.address, "j-tr")).decode().strip()
    assert printed == f"00-{trace_id}-{run.context.span_id:016x}-01"


async def test_unacked_updates_are_resent_on_reconnect_and_not_after_ack(
    agent: AgentServer, open_dispatcher: Callable[..., Any], make_assignment: MakeAssignment
) -> None:
    first = await open_dispatcher(agent.address)
    await first.dispatch(make_assignment("j-r"))
    await first.wait_status("j-r", state=SUCCEEDED)
    seqs = [u.seq for u in first.statuses_of("j-r")]
    await first.close()

    second = await open_dispatcher(agent.address)
    await second.wait_for(lambda: len(second.statuses) >= 2)
    assert [u.seq for u in second.statuses] == seqs
    assert [u.state for u in second.statuses] == [RUNNING, SUCCEEDED]
    assert second.messages[:2] == ["hello", "status"]  # resent before any heartbeat
    await second.ack(seqs)
    await second.wait_heartbeats(2)
    await second.close()

    third = await open_dispatcher(agent.address)
    await third.wait_heartbeats(3)
    assert third.statuses == []


async def test_a_new_stream_replaces_the_old_one(
    agent: AgentServer, open_dispatcher: Callable[..., Any], make_assignment: MakeAssignment
) -> None:
    old = await open_dispatcher(agent.address)
    new = await open_dispatcher(agent.address)
    await asyncio.wait_for(old.ended.wait(), 5)
    assert old.code == grpc.StatusCode.ABORTED
    (ack,) = await new.dispatch(make_assignment("j-new"))
    assert ack.accepted
    await new.wait_status("j-new", state=SUCCEEDED)


async def test_cancel_stops_the_process_group(
    dispatcher: Any,
    make_assignment: MakeAssignment,
    tmp_path: Path,
    pid_alive: Callable[[int], bool],
    wait_until: Callable[..., Any],
) -> None:
    pids = tmp_path / "pids"
    script = f"echo $$ > {pids}.tmp; sleep 600 & echo $! >> {pids}.tmp; mv {pids}.tmp {pids}; wait"
    (ack,) = await dispatcher.dispatch(
        make_assignment("j-c", command=["sh", "-c", script], gpus=4, gpu_type="H100")
    )
    assert ack.accepted
    await wait_until(pids.exists)
    leader, child = (int(p) for p in pids.read_text().split())
    loop = asyncio.get_running_loop()
    started = loop.time()
    await dispatcher.cancel("j-c", grace=2.0, reason="user asked")
    cancelled = await dispatcher.wait_status("j-c", state=CANCELLED, timeout=5)
    assert loop.time() - started < 5
    assert "user asked" in cancelled.message and "SIGTERM" in cancelled.message
    assert not pid_alive(leader)
    assert not pid_alive(child)
    (again,) = await dispatcher.dispatch(make_assignment("j-c2", gpus=4, gpu_type="H100"))
    assert again.accepted  # the GPUs were released


async def test_cancel_of_unknown_and_of_finished_attempts(
    dispatcher: Any, make_assignment: MakeAssignment
) -> None:
    await dispatcher.cancel("j-never", 3)
    update = await dispatcher.wait_status("j-never", 3, state=CANCELLED)
    assert update.message == "not running at this site"
    assert not update.has_exit_code
    refused, older = await dispatcher.dispatch(
        make_assignment("j-never", 3), make_assignment("j-never", 2)
    )
    assert (refused.accepted, refused.reason) == (False, "cancelled")
    assert (older.accepted, older.reason) == (False, "stale attempt 2 < 3")

    await dispatcher.dispatch(make_assignment("j-done"))
    await dispatcher.wait_status("j-done", state=SUCCEEDED)
    await dispatcher.cancel("j-done", 1)
    await dispatcher.wait_heartbeats(3)
    assert [u.state for u in dispatcher.statuses_of("j-done")] == [RUNNING, SUCCEEDED]


async def test_max_runtime_fails_the_attempt(
    dispatcher: Any, make_assignment: MakeAssignment
) -> None:
    (ack,) = await dispatcher.dispatch(
        make_assignment("j-t", command=["sleep", "600"], max_runtime=1)
    )
    assert ack.accepted
    failed = await dispatcher.wait_status("j-t", state=FAILED, timeout=5)
    assert failed.message == "exceeded max runtime 1s"
    assert not failed.has_exit_code


async def test_status_updates_are_batched_under_load(
    dispatcher: Any, make_assignment: MakeAssignment
) -> None:
    jobs = [make_assignment(f"j-load-{i}") for i in range(40)]
    acks = await dispatcher.dispatch(*jobs)
    assert all(a.accepted for a in acks)
    await dispatcher.wait_for(
        lambda: sum(u.state == SUCCEEDED for u in dispatcher.statuses) == 40, timeout=15
    )
    assert len(dispatcher.statuses) == 80
    assert dispatcher.status_batches < 80
