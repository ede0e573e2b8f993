"""JobService end to end: real grpc.aio server, real Redis, real AsyncClient."""

from __future__ import annotations

import asyncio
import time

import pytest
from api_drive import finish, place, site_pb
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from orchestrator import sdk
from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.api import ApiServer
from orchestrator.errors import (
    IllegalTransitionError,
    InvalidSpecError,
    JobNotFoundError,
    WaitTimeoutError,
)
from orchestrator.sdk import AsyncClient
from orchestrator.spec import JobSpec, Placement, PriorityClass, Resources
from orchestrator.states import JobState
from orchestrator.store import JobStore


def spec(name: str = "job", **kwargs: object) -> JobSpec:
    kwargs.setdefault("tenant", "acme")
    kwargs.setdefault("command", ["python", "-c", "print(1)"])
    return JobSpec(name=name, **kwargs)  # type: ignore[arg-type]


async def test_submit_get_cancel_and_events(client: AsyncClient) -> None:
    job = await client.submit(
        spec(
            "train",
            priority=PriorityClass.HIGH,
            resources=Resources(gpus=2, gpu_type="H100"),
            placement=Placement(allowed_jurisdictions=("NO", "SE")),
            env={"EPOCHS": "3"},
        )
    )
    assert job.id.startswith("j-") and not job.deduplicated
    assert job.state is JobState.PENDING
    got = await client.get_job(job.id)
    assert got == job.info
    assert got.spec.priority == types_pb2.PRIORITY_CLASS_HIGH
    assert list(got.spec.placement.allowed_jurisdictions) == ["NO", "SE"]
    assert got.spec.env["EPOCHS"] == "3"
    assert JobSpec.from_proto(got.spec).resources == Resources(gpus=2, gpu_type="H100")

    cancelled = await job.cancel(reason="changed my mind")
    assert cancelled.state == JobState.CANCELLED.value
    assert job.state is JobState.CANCELLED
    assert [e.message for e in [e async for e in job.events()]] == [
        "submitted",
        "cancelled: changed my mind",
    ]
    again = await client.cancel(job.id)  # idempotent
    assert again.state == JobState.CANCELLED.value


async def test_submit_takes_a_proto_spec_and_fills_defaults(client: AsyncClient) -> None:
    job = await client.submit(types_pb2.JobSpec(name="raw", tenant="acme", command=["true"]))
    assert job.info is not None
    assert job.info.spec.queue == "default"
    assert job.info.spec.priority == types_pb2.PRIORITY_CLASS_NORMAL
    assert (job.info.spec.resources.cpus, job.info.spec.resources.nodes) == (1, 1)


async def test_retried_submit_with_client_request_id_returns_the_same_job(
    client: AsyncClient,
) -> None:
    first = await client.submit(spec("a", client_request_id="req-42"))
    again = await client.submit(spec("a", client_request_id="req-42"))
    other = await client.submit(spec("a", client_request_id="req-43"))
    assert again.id == first.id and again.deduplicated and not first.deduplicated
    assert other.id != first.id
    assert len(await client.list_jobs()) == 2


async def test_list_jobs_filters_and_pages(
    client: AsyncClient, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.register_site(site_pb())
    ids = []
    for i in range(7):
        tenant = "acme" if i % 2 else "uio"
        queue = "gpu" if i < 3 else "default"
        ids.append((await client.submit(spec(f"j{i}", tenant=tenant, queue=queue))).id)
    newest_first = ids[::-1]
    await client.cancel(ids[5])
    await place(store, ids[6])

    monkeypatch.setattr(sdk.client, "_PAGE_SIZE", 2)  # make the SDK page through
    assert [j.id for j in await client.list_jobs()] == newest_first
    assert [j.id for j in await client.list_jobs(limit=3)] == newest_first[:3]
    assert [j.id for j in await client.list_jobs(states=["cancelled"])] == [ids[5]]
    assert [j.id for j in await client.list_jobs(states=[JobState.DISPATCHED])] == [ids[6]]
    assert [j.id for j in await client.list_jobs(tenant="acme")] == [ids[5], ids[3], ids[1]]
    assert [j.id for j in await client.list_jobs(queue="gpu")] == [ids[2], ids[1], ids[0]]
    assert [j.id for j in await client.list_jobs(site="narvik")] == [ids[6]]
    assert await client.list_jobs(tenant="nobody") == []
    with pytest.raises(ValueError, match="unknown job state"):
        await client.list_jobs(states=["sleeping"])


async def test_invalid_spec_is_invalid_argument_naming_the_field(client: AsyncClient) -> None:
    bad = types_pb2.JobSpec(name="x", tenant="acme", command=["true"])
    bad.resources.gpu_type = "H100"  # but gpus is 0
    with pytest.raises(InvalidSpecError) as err:
        await client.submit(bad)
    assert err.value.field == "resources.gpu_type"
    assert "gpus is 0" in err.value.problem
    assert err.value.fields() == {"field": "resources.gpu_type", "problem": err.value.problem}

    with pytest.raises(InvalidSpecError) as err:
        await client.submit(types_pb2.JobSpec(name="x", tenant="acme"))
    assert err.value.field == "command"


async def test_unknown_and_malformed_job_ids(client: AsyncClient) -> None:
    with pytest.raises(JobNotFoundError) as err:
        await client.get_job("j-0000000000-000000")
    assert err.value.job_id == "j-0000000000-000000"
    assert str(err.value) == "job 'j-0000000000-000000' not found"
    with pytest.raises(JobNotFoundError):
        await client.cancel("j-0000000000-000000")
    with pytest.raises(JobNotFoundError):
        [e async for e in client.events("j-0000000000-000000")]
    # a malformed id cannot be any job's: INVALID_ARGUMENT naming job_id
    with pytest.raises(InvalidSpecError) as bad:
        await client.get_job("not-a-job")
    assert bad.value.field == "job_id"


async def test_cancel_of_a_finished_job_is_failed_precondition(
    client: AsyncClient, store: JobStore
) -> None:
    await client.register_site(site_pb())
    job = await client.submit(spec())
    await place(store, job.id)
    await finish(store, job.id, JobState.SUCCEEDED)
    with pytest.raises(IllegalTransitionError) as err:
        await job.cancel()
    assert (err.value.job_id, err.value.state, err.value.action) == (job.id, "SUCCEEDED", "cancel")


async def test_watch_follows_until_a_terminal_event(client: AsyncClient, store: JobStore) -> None:
    await client.register_site(site_pb())
    job = await client.submit(spec())
    follower = asyncio.create_task(_collect(client.events(job.id, follow=True)))
    waiter = asyncio.create_task(job.wait(timeout=10))
    await asyncio.sleep(0.2)
    assert not follower.done() and not waiter.done()

    await place(store, job.id)
    await finish(store, job.id, JobState.FAILED, exit_code=3)
    events = await asyncio.wait_for(follower, 5)
    assert [JobState(e.state) for e in events] == [
        JobState.PENDING,
        JobState.SCHEDULED,
        JobState.DISPATCHED,
        JobState.RUNNING,
        JobState.FAILED,
    ]
    assert events[-1].has_exit_code and events[-1].exit_code == 3
    final = await asyncio.wait_for(waiter, 5)
    assert final.state == JobState.FAILED.value and final.exit_code == 3

    # a finished job: follow replays and ends; resuming after the last event yields nothing
    replay = await _collect(client.events(job.id, follow=True))
    assert [e.event_id for e in replay] == [e.event_id for e in events]
    assert await _collect(client.events(job.id, follow=True, after=events[-1].event_id)) == []
    assert [
        e.event_id for e in await _collect(client.events(job.id, after=events[1].event_id))
    ] == [e.event_id for e in events[2:]]
    with pytest.raises(InvalidSpecError) as err:
        await _collect(client.events(job.id, after="yesterday"))
    assert err.value.field == "after_event_id"


async def test_wait_times_out_and_polls(client: AsyncClient) -> None:
    job = await client.submit(spec())
    started = time.monotonic()
    with pytest.raises(WaitTimeoutError) as err:
        await job.wait(timeout=0.3)
    assert time.monotonic() - started < 3
    assert (err.value.job_id, err.value.state) == (job.id, "PENDING")
    waiter = asyncio.create_task(job.wait(timeout=5, poll_interval=0.05))
    await asyncio.sleep(0.1)
    await job.cancel()
    assert (await waiter).state == JobState.CANCELLED.value


async def test_watch_stream_ends_on_the_server_when_the_client_goes_away(
    store: JobStore,
) -> None:
    server = ApiServer(store)
    address = await server.start()
    client = await AsyncClient.connect(address)
    try:
        job = await client.submit(spec())
        follower = asyncio.create_task(_collect(client.events(job.id, follow=True)))
        await asyncio.sleep(0.3)
        follower.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follower
        await asyncio.sleep(0.1)
    finally:
        await client.close()
        started = time.monotonic()
        await server.stop(grace=5)
    # no call was left open on the server: stopping did not wait out the grace period
    assert time.monotonic() - started < 2


async def test_wait_resumes_across_an_api_server_restart(store: JobStore) -> None:
    first = ApiServer(store)
    address = await first.start()
    client = await AsyncClient.connect(address)
    try:
        job = await client.submit(spec())
        waiter = asyncio.create_task(job.wait(timeout=15))
        await asyncio.sleep(0.2)
        await first.stop(0)  # the follow stream breaks
        await asyncio.sleep(0.2)
        second = ApiServer(store, listen=address)
        await second.start()
        try:
            await store.cancel(job.id)
            final = await asyncio.wait_for(waiter, 10)
        finally:
            await second.stop(0)
    finally:
        await client.close()
    assert final.state == JobState.CANCELLED.value


async def test_submit_continues_the_callers_trace(client: AsyncClient, store: JobStore) -> None:
    trace_id = 0x0AF7651916CD43DD8448EB211C80319C
    parent = SpanContext(
        trace_id=trace_id,
        span_id=0x00F067AA0BA902B7,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    with trace.use_span(NonRecordingSpan(parent)):
        job = await client.submit(spec())
    traceparent = await store.job_trace(job.id)
    assert traceparent.split("-")[1] == f"{trace_id:032x}"


async def _collect(events: object) -> list[types_pb2.JobEvent]:
    return [e async for e in events]  # type: ignore[attr-defined]
