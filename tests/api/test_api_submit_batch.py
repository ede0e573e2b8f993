"""JobService.SubmitJobs end to end: real grpc.aio server, real Redis, real AsyncClient.

All or nothing: a bad spec anywhere fails the whole call, naming ``specs[i].<field>``, with not
one key written. Authorisation per spec is in ``tests/security/test_submit_batch_auth.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from orchestrator._pb.orchestrator.v1 import service_pb2, service_pb2_grpc, types_pb2
from orchestrator.api import ApiServer
from orchestrator.errors import InvalidSpecError
from orchestrator.sdk import AsyncClient, error_from_rpc
from orchestrator.spec import JobSpec
from orchestrator.states import JobState
from orchestrator.store import MAX_SUBMIT_BATCH, JobStore


def spec(name: str = "job", **kwargs: object) -> JobSpec:
    kwargs.setdefault("tenant", "acme")
    kwargs.setdefault("command", ["python", "-c", "print(1)"])
    return JobSpec(name=name, **kwargs)  # type: ignore[arg-type]


def raw_spec(name: str = "job", **kwargs: object) -> types_pb2.JobSpec:
    kwargs.setdefault("tenant", "acme")
    kwargs.setdefault("command", ["true"])
    return types_pb2.JobSpec(name=name, **kwargs)  # type: ignore[arg-type]


async def keys_of(store: JobStore) -> dict[str, bytes]:
    """Every key under the store's prefix with its serialised value (DUMP)."""
    keys = sorted([k async for k in store.client.scan_iter(match=f"{store.prefix}*", count=1000)])
    return {k.decode(): await store.client.dump(k) for k in keys}


@pytest.fixture
async def jobs(api: ApiServer) -> AsyncIterator[service_pb2_grpc.JobServiceStub]:
    """A raw stub, for calls the SDK would split or refuse before sending."""
    async with aio.insecure_channel(api.address) as channel:
        yield service_pb2_grpc.JobServiceStub(channel)


async def submit_jobs(
    stub: service_pb2_grpc.JobServiceStub, specs: list[types_pb2.JobSpec]
) -> service_pb2.SubmitJobsResponse:
    try:
        return await stub.SubmitJobs(service_pb2.SubmitJobsRequest(specs=specs), timeout=30)
    except aio.AioRpcError as exc:
        raise error_from_rpc(exc, address="api") from exc


async def test_one_result_per_spec_in_order_with_unique_ids(
    client: AsyncClient, store: JobStore
) -> None:
    specs = [spec(f"j{i}", queue="gpu" if i % 3 == 0 else "") for i in range(25)]
    handles = await client.submit_many(specs)
    assert [h.info.spec.name for h in handles if h.info] == [f"j{i}" for i in range(25)]
    ids = [h.id for h in handles]
    assert len(set(ids)) == 25 and ids == sorted(ids)
    assert not any(h.deduplicated for h in handles)
    assert {h.state for h in handles} == {JobState.PENDING}
    # the answer is the stored record
    assert await store.get_jobs(ids) == [h.info for h in handles]
    assert [h.info.spec.queue for h in handles if h.info][:4] == [
        "gpu",
        "default",
        "default",
        "gpu",
    ]
    assert [j.id for j in await client.list_jobs()] == ids[::-1]


async def test_client_request_ids_deduplicate_within_and_across_calls(
    client: AsyncClient, store: JobStore
) -> None:
    single = await client.submit(spec("a", client_request_id="r-1"))
    first = await client.submit_many(
        [
            spec("a", client_request_id="r-1"),  # an earlier SubmitJob's
            spec("b", client_request_id="r-2"),
            spec("b", client_request_id="r-2"),  # earlier in this call
            spec("c"),
        ]
    )
    assert [(h.id, h.deduplicated) for h in first] == [
        (single.id, True),
        (first[1].id, False),
        (first[1].id, True),
        (first[3].id, False),
    ]
    assert first[2].info == first[1].info
    second = await client.submit_many(
        [spec("b", client_request_id="r-2"), spec("d", client_request_id="r-3")]
    )
    assert (second[0].id, second[0].deduplicated) == (first[1].id, True)
    assert not second[1].deduplicated
    assert len(await client.list_jobs()) == 4  # a, b, c, d
    assert await store.client.zcard(store.keys.pending("default")) == 4


async def test_a_bad_spec_fails_the_whole_call_and_writes_nothing(
    jobs: service_pb2_grpc.JobServiceStub, store: JobStore
) -> None:
    await submit_jobs(jobs, [raw_spec("earlier")])
    before = await keys_of(store)
    specs = [raw_spec(f"j{i}") for i in range(6)]
    del specs[3].command[:]
    with pytest.raises(InvalidSpecError) as err:
        await submit_jobs(jobs, specs)
    assert err.value.field == "specs[3].command"
    assert "at least one element" in err.value.problem
    nested = [raw_spec("a"), raw_spec("b", resources=types_pb2.Resources(gpus=1000))]
    with pytest.raises(InvalidSpecError) as err:
        await submit_jobs(jobs, nested)
    assert err.value.field == "specs[1].resources.gpus"
    assert await keys_of(store) == before


async def test_the_sdk_reports_the_bad_spec_by_its_index_in_the_call(
    client: AsyncClient, store: JobStore
) -> None:
    bad = raw_spec("bad", env={"JOB_ID": "forged"})  # a variable the orchestrator sets
    with pytest.raises(InvalidSpecError) as err:
        await client.submit_many([raw_spec("a"), raw_spec("b"), bad])
    assert err.value.field == "specs[2].env.JOB_ID"
    assert await client.list_jobs() == []


async def test_at_most_ten_thousand_specs_per_call(
    jobs: service_pb2_grpc.JobServiceStub, store: JobStore
) -> None:
    assert MAX_SUBMIT_BATCH == 10_000
    tiny = [raw_spec(f"j{i}") for i in range(MAX_SUBMIT_BATCH + 1)]
    before = await keys_of(store)
    with pytest.raises(InvalidSpecError) as err:
        await submit_jobs(jobs, tiny)
    assert err.value.field == "specs"
    assert await keys_of(store) == before
    # exactly the limit fits (the message too: well under the default 4 MiB)
    response = await submit_jobs(jobs, tiny[:MAX_SUBMIT_BATCH])
    assert len(response.results) == MAX_SUBMIT_BATCH
    assert [r.job.spec.name for r in response.results[-2:]] == ["j9998", "j9999"]
    assert await store.client.zcard(store.keys.pending("default")) == MAX_SUBMIT_BATCH


async def test_an_empty_call_answers_an_empty_list(
    jobs: service_pb2_grpc.JobServiceStub, store: JobStore
) -> None:
    before = await keys_of(store)
    assert list((await submit_jobs(jobs, [])).results) == []
    assert await keys_of(store) == before


async def test_every_job_of_a_call_joins_the_callers_trace(
    client: AsyncClient, store: JobStore
) -> None:
    trace_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736
    parent = SpanContext(
        trace_id=trace_id,
        span_id=0x00F067AA0BA902B7,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    with trace.use_span(NonRecordingSpan(parent)):
        handles = await client.submit_many([spec(f"j{i}") for i in range(5)])
    traceparents = {await store.job_trace(h.id) for h in handles}
    assert len(traceparents) == 1  # one context for the call, shared by its jobs
    assert traceparents.pop().split("-")[1] == f"{trace_id:032x}"


async def test_the_submit_batch_method_is_served_with_its_status_codes(
    jobs: service_pb2_grpc.JobServiceStub,
) -> None:
    with pytest.raises(aio.AioRpcError) as err:
        await jobs.SubmitJobs(service_pb2.SubmitJobsRequest(specs=[raw_spec(tenant="")]), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(err.value.trailing_metadata() or ())["sg-field-field"] == "specs[0].tenant"
