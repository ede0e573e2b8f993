"""ReadLogs over real gRPC: whole output, one stream, chunking, follow, unknown attempts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from agents import AgentServer
from orchestrator._pb.agent.v1 import agent_pb2, agent_pb2_grpc
from orchestrator._pb.orchestrator.v1 import service_pb2, types_pb2

SUCCEEDED = types_pb2.JOB_STATE_SUCCEEDED
RUNNING = types_pb2.JOB_STATE_RUNNING


async def read_chunks(
    address: str, job_id: str, attempt: int = 1, **kwargs: Any
) -> list[service_pb2.LogChunk]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        request = agent_pb2.ReadLogsRequest(job_id=job_id, attempt=attempt, **kwargs)
        return [chunk async for chunk in stub.ReadLogs(request)]


def joined(chunks: list[service_pb2.LogChunk], stream: int) -> bytes:
    return b"".join(c.data for c in chunks if c.stream == stream)


async def test_whole_output_and_one_stream(
    dispatcher: Any, agent: AgentServer, make_assignment: Callable[..., Any]
) -> None:
    await dispatcher.dispatch(
        make_assignment("j-l", command=["sh", "-c", "echo out1; echo err1 >&2; echo out2"])
    )
    await dispatcher.wait_status("j-l", state=SUCCEEDED)
    chunks = await read_chunks(agent.address, "j-l")
    assert joined(chunks, service_pb2.LOG_STREAM_STDOUT) == b"out1\nout2\n"
    assert joined(chunks, service_pb2.LOG_STREAM_STDERR) == b"err1\n"
    only_err = await read_chunks(agent.address, "j-l", stream=service_pb2.LOG_STREAM_STDERR)
    assert [(c.stream, c.data, c.offset) for c in only_err] == [
        (service_pb2.LOG_STREAM_STDERR, b"err1\n", 0)
    ]


async def test_large_output_is_chunked_with_offsets(
    dispatcher: Any,
    agent: AgentServer,
    make_assignment: Callable[..., Any],
    python_command: Callable[[str], list[str]],
) -> None:
    size = 200_000
    code = f"import sys; sys.stdout.buffer.write(bytes(i % 251 for i in range({size})))"
    await dispatcher.dispatch(make_assignment("j-big", command=python_command(code)))
    await dispatcher.wait_status("j-big", state=SUCCEEDED)
    chunks = await read_chunks(agent.address, "j-big", stream=service_pb2.LOG_STREAM_STDOUT)
    assert all(len(c.data) <= 64 * 1024 for c in chunks)
    assert len(chunks) >= 4
    offset = 0
    for chunk in chunks:
        assert chunk.offset == offset
        offset += len(chunk.data)
    assert joined(chunks, service_pb2.LOG_STREAM_STDOUT) == bytes(i % 251 for i in range(size))


async def test_follow_streams_until_the_attempt_ends(
    dispatcher: Any,
    agent: AgentServer,
    make_assignment: Callable[..., Any],
    tmp_path: Any,
) -> None:
    go = tmp_path / "go"
    script = f'echo first; while [ ! -e "{go}" ]; do sleep 0.02; done; echo second'
    await dispatcher.dispatch(make_assignment("j-f", command=["sh", "-c", script]))
    await dispatcher.wait_status("j-f", state=RUNNING)

    async with grpc.aio.insecure_channel(agent.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        call = stub.ReadLogs(
            agent_pb2.ReadLogsRequest(
                job_id="j-f", attempt=1, follow=True, stream=service_pb2.LOG_STREAM_STDOUT
            )
        )
        received = b""
        async with asyncio.timeout(5):
            while received != b"first\n":
                received += (await call.read()).data
        go.touch()  # only now may the job print the rest and exit
        async with asyncio.timeout(5):
            while (chunk := await call.read()) is not grpc.aio.EOF:
                received += chunk.data
    assert received == b"first\nsecond\n"
    await dispatcher.wait_status("j-f", state=SUCCEEDED)  # a stream of its own: no order


async def test_unknown_attempt_is_not_found(agent: AgentServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await read_chunks(agent.address, "j-nope", 1)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "j-nope" in (info.value.details() or "")
