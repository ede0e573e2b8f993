"""SubmitJobs on the secured API (TLS, tokens, default limits): every spec of a batch is
authorised, and one the caller may not submit refuses the whole call with nothing written."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio
from secure_stack import SecureApi, redis_snapshot

from orchestrator._pb.orchestrator.v1 import service_pb2, service_pb2_grpc, types_pb2
from orchestrator.errors import PermissionDeniedError

pytestmark = pytest.mark.asyncio


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def job_spec(tenant: str = "acme", name: str = "train") -> types_pb2.JobSpec:
    return types_pb2.JobSpec(name=name, tenant=tenant, command=["true"])


async def code_of(
    stub: service_pb2_grpc.JobServiceStub, specs: list[types_pb2.JobSpec], token: str
) -> grpc.StatusCode:
    try:
        await stub.SubmitJobs(
            service_pb2.SubmitJobsRequest(specs=specs), metadata=bearer(token), timeout=30
        )
    except aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_a_tenant_cannot_slip_another_tenants_job_into_a_batch(
    secure_api: SecureApi,
) -> None:
    client = await secure_api.client(secure_api.tokens.acme)
    try:
        before = await redis_snapshot(secure_api.store)
        specs = [job_spec("acme", "a"), job_spec("", "b"), job_spec("globex", "c")]
        with pytest.raises(PermissionDeniedError) as err:
            await client.submit_many(specs)
        assert err.value.message.startswith("specs[2]: ")
        assert "acme" in err.value.message
        assert await redis_snapshot(secure_api.store) == before

        # its own jobs go through, and an empty tenant becomes the token's
        jobs = await client.submit_many(specs[:2])
        assert [j.info.spec.tenant for j in jobs if j.info] == ["acme", "acme"]
    finally:
        await client.close()


async def test_who_may_submit_a_batch(secure_api: SecureApi) -> None:
    t = secure_api.tokens
    async with secure_api.channel() as channel:
        stub = service_pb2_grpc.JobServiceStub(channel)
        before = await redis_snapshot(secure_api.store)
        # a partner token lacks jobs:submit: refused before the specs are even read
        assert await code_of(stub, [job_spec()], t.narvik_jv) == grpc.StatusCode.PERMISSION_DENIED
        # a tenant's batch with a bad spec and another tenant's: the permission is checked first
        bad = job_spec("acme")
        del bad.command[:]
        denied = await code_of(stub, [bad, job_spec("globex")], t.acme)
        assert denied == grpc.StatusCode.PERMISSION_DENIED
        assert await redis_snapshot(secure_api.store) == before
        # an operator submits for any tenant
        mixed = [job_spec("acme"), job_spec("globex")]
        assert await code_of(stub, mixed, t.operator) == grpc.StatusCode.OK


async def test_the_default_message_limit_takes_ten_thousand_small_specs(
    secure_api: SecureApi,
) -> None:
    async with secure_api.channel() as channel:
        stub = service_pb2_grpc.JobServiceStub(channel)
        acme = secure_api.tokens.acme
        # a batch over 4 MiB is refused whole: the client must split it
        before = await redis_snapshot(secure_api.store)
        big = [
            types_pb2.JobSpec(name=f"b{i}", tenant="acme", command=["echo", "x" * 100_000])
            for i in range(50)
        ]
        assert await code_of(stub, big, acme) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await redis_snapshot(secure_api.store) == before
        small = [job_spec(name=f"j{i}") for i in range(10_000)]
        assert await code_of(stub, small, acme) == grpc.StatusCode.OK
        assert await secure_api.store.client.zcard(secure_api.store.keys.pending("default")) == (
            10_000
        )
