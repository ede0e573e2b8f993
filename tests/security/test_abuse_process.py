"""The API server as its own process (``python -m orchestrator.roles api``, TLS and tokens from
the environment) under a flood of hostile calls: it stays up, its memory stays bounded, and a
well-behaved tenant is served throughout."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from secure_stack import Pki, Tokens

from orchestrator._pb.orchestrator.v1 import service_pb2, service_pb2_grpc, types_pb2
from orchestrator.security.tls import channel_credentials
from orchestrator.store import LocalRedis, free_port

ROOT = Path(__file__).resolve().parents[2]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def api_process(redis_server: LocalRedis, pki: Pki) -> Iterator[tuple[str, int]]:
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "SG_REDIS_URL": redis_server.url,
        "SG_REDIS_PREFIX": f"abuse-{os.getpid()}-{secrets.token_hex(3)}:",
        "SG_API_LISTEN": address,
        "SG_TLS_DIR": str(pki.certs),
        "SG_TOKEN_VERIFY_KEYS": str(pki.verify_key),
        "SG_RATE_PER_SECOND": "100000",
        "SG_RATE_BURST": "100000",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.roles", "api"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        while line and "serving on" not in line:
            line = proc.stdout.readline()
        assert "serving on" in line, "the API process did not start"
        yield address, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_a_flood_of_hostile_calls_leaves_the_server_up_and_bounded(
    api_process: tuple[str, int], pki: Pki, tokens: Tokens
) -> None:
    address, pid = api_process
    tenant = (("authorization", f"Bearer {tokens.acme}"),)
    async with aio.secure_channel(address, channel_credentials(pki.security().api_tls)) as ch:
        jobs = service_pb2_grpc.JobServiceStub(ch)
        submit = jobs.SubmitJob
        spec = types_pb2.JobSpec(name="ok", tenant="acme", command=["true"])
        good = await submit(service_pb2.SubmitJobRequest(spec=spec), metadata=tenant, timeout=10)

        async def hostile(i: int) -> grpc.StatusCode:
            kind = i % 4
            try:
                if kind == 0:  # a different garbage token each time
                    token = "sg1." + secrets.token_urlsafe(64) + "." + secrets.token_urlsafe(64)
                    await jobs.GetJob(
                        service_pb2.GetJobRequest(job_id=good.job.id),
                        metadata=(("authorization", f"Bearer {token}"),),
                        timeout=10,
                    )
                elif kind == 1:  # malformed bytes
                    await ch.unary_unary("/orchestrator.v1.JobService/SubmitJob")(
                        b"\x0a\xff\xff\xff\xff\x0f", metadata=tenant, timeout=10
                    )
                elif kind == 2:  # another tenant's job
                    await jobs.GetJob(
                        service_pb2.GetJobRequest(job_id=good.job.id),
                        metadata=(("authorization", f"Bearer {tokens.globex}"),),
                        timeout=10,
                    )
                else:  # a hostile name
                    bad = types_pb2.JobSpec(name="x\u202e" * 2000, tenant="acme", command=["a"])
                    await submit(service_pb2.SubmitJobRequest(spec=bad), metadata=tenant)
            except aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        expected = {
            0: grpc.StatusCode.UNAUTHENTICATED,
            1: grpc.StatusCode.INVALID_ARGUMENT,
            2: grpc.StatusCode.NOT_FOUND,
            3: grpc.StatusCode.INVALID_ARGUMENT,
        }
        for i in range(400):  # warm up: caches, pools, allocator
            assert await hostile(i) == expected[i % 4]
        baseline = _rss_kib(pid)
        started = time.monotonic()
        for i in range(4000):
            assert await hostile(i) == expected[i % 4]
            if i % 500 == 0:  # the well-behaved tenant is served throughout
                reply = await jobs.GetJob(
                    service_pb2.GetJobRequest(job_id=good.job.id), metadata=tenant, timeout=10
                )
                assert reply.job.id == good.job.id
        grown = _rss_kib(pid) - baseline
        elapsed = time.monotonic() - started
    print(f"RSS grew {grown} KiB over 4,000 hostile calls in {elapsed:.1f}s")
    assert grown < 30 * 1024, f"RSS grew {grown} KiB over 4,000 hostile calls ({elapsed:.1f}s)"
