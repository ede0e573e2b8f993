"""The synchronous Client: the AsyncClient on a private loop thread, called from plain code.

The API server runs in the test's event loop; each test body runs the sync client in a worker
thread (``asyncio.to_thread``), as a user's script would from its own thread.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from orchestrator import (
    Client,
    IllegalTransitionError,
    JobNotFoundError,
    JobSpec,
    JobState,
    ServiceUnavailableError,
    WaitTimeoutError,
)
from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.api import ApiServer
from orchestrator.store import JobStore, free_port


def _sdk_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "sg-sdk-loop")


def spec(name: str = "job", **kwargs: object) -> JobSpec:
    return JobSpec(name=name, tenant="acme", command=["true"], **kwargs)  # type: ignore[arg-type]


async def test_sync_client_round_trip(api: ApiServer) -> None:
    threads_before = _sdk_threads()

    def body() -> None:
        with Client.connect(api.address, timeout=5) as client:
            job = client.submit(spec("a"))
            assert job.state is JobState.PENDING
            assert client.get_job(job.id).spec.name == "a"
            assert client.job(job.id).status() == job.status()
            again = client.submit(spec("a", client_request_id="r1"))
            assert client.submit(spec("a", client_request_id="r1")).deduplicated
            assert [j.id for j in client.list_jobs(limit=10)] == [again.id, job.id]

            with pytest.raises(WaitTimeoutError) as err:
                job.wait(timeout=0.2)
            assert err.value.state == "PENDING"
            assert job.cancel(reason="test").state == JobState.CANCELLED.value
            assert job.wait(timeout=5).state == JobState.CANCELLED.value
            assert [e.message for e in job.events(follow=True)][-1].startswith("cancelled")
            with pytest.raises(IllegalTransitionError, match="has not started"):
                list(job.logs())
            with pytest.raises(JobNotFoundError):
                client.get_job("j-0000000000-000000")

            site = types_pb2.Site(
                id="abilene", jurisdiction="US", endpoint="127.0.0.1:1", cpus=1, memory_mb=1
            )
            assert client.register_site(site).state == types_pb2.SITE_STATE_ACTIVE
            assert client.cordon("abilene").state == types_pb2.SITE_STATE_CORDONED
            assert client.drain("abilene").state == types_pb2.SITE_STATE_DRAINING
            assert client.activate("abilene").state == types_pb2.SITE_STATE_ACTIVE
            assert [s.site.id for s in client.sites()] == ["abilene"]
            assert client.get_site("abilene").site.jurisdiction == "US"
        with pytest.raises(RuntimeError, match="closed"):
            client.get_job(job.id)

    await asyncio.to_thread(body)
    assert _sdk_threads() == threads_before  # the loop thread ended with the client


async def test_leaving_an_event_stream_early_closes_it(api: ApiServer, store: JobStore) -> None:
    def body() -> str:
        with Client.connect(api.address) as client:
            job = client.submit(spec())
            for event in client.events(job.id, follow=True):
                assert event.message == "submitted"
                break  # the follow stream would otherwise wait for the job to end
            return job.id

    job_id = await asyncio.wait_for(asyncio.to_thread(body), 10)
    assert (await store.get_job(job_id)).state == JobState.PENDING.value


async def test_sync_calls_carry_the_callers_trace(api: ApiServer, store: JobStore) -> None:
    trace_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736

    def body() -> str:
        parent = SpanContext(
            trace_id=trace_id,
            span_id=0x00F067AA0BA902B7,
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        with Client.connect(api.address) as client, trace.use_span(NonRecordingSpan(parent)):
            return client.submit(spec()).id

    job_id = await asyncio.to_thread(body)
    assert f"{trace_id:032x}" in await store.job_trace(job_id)


def test_connect_to_nothing_is_service_unavailable_and_leaves_no_thread() -> None:
    threads_before = _sdk_threads()
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(ServiceUnavailableError, match=address):
        Client.connect(address, timeout=3)
    assert _sdk_threads() == threads_before
