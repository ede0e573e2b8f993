"""``submit_many`` of the SDK: a list of specs in SubmitJobs calls of ``batch_size`` (and about
2 MiB), handles in the order of the list, the sync facade the same.

The jobs of one call share one submit time (``created_at``), which is how these tests count
the calls that were made.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

import pytest

from orchestrator import Client, InvalidSpecError, JobSpec, JobState
from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.api import ApiServer
from orchestrator.sdk import AsyncClient, AsyncJob
from orchestrator.store import JobStore


def spec(name: str, **kwargs: object) -> JobSpec:
    kwargs.setdefault("command", ["true"])
    return JobSpec(name=name, tenant="acme", **kwargs)  # type: ignore[arg-type]


def call_sizes(jobs: Sequence[AsyncJob]) -> list[int]:
    """How many jobs each call made, in order of the calls."""
    created = Counter(j.info.created_at.ToNanoseconds() for j in jobs if j.info is not None)
    return [n for _, n in sorted(created.items())]


async def test_specs_go_in_calls_of_batch_size_and_come_back_in_order(
    api: ApiServer, store: JobStore
) -> None:
    async with await AsyncClient.connect(api.address, timeout=10) as client:
        specs: list[JobSpec | types_pb2.JobSpec] = [spec(f"j{i}") for i in range(1000)]
        specs[10] = types_pb2.JobSpec(name="j10", tenant="acme", command=["true"])  # protos too
        jobs = await client.submit_many(specs, batch_size=400)
        assert call_sizes(jobs) == [400, 400, 200]
        assert [j.info.spec.name for j in jobs if j.info] == [f"j{i}" for i in range(1000)]
        assert [j.id for j in jobs] == sorted(j.id for j in jobs)
        assert {j.state for j in jobs} == {JobState.PENDING}
        assert (await jobs[5].status()).id == jobs[5].id
        assert await client.submit_many([]) == []


async def test_calls_in_flight_together_keep_the_order_of_the_answer(api: ApiServer) -> None:
    async with await AsyncClient.connect(api.address, timeout=10) as client:
        jobs = await client.submit_many(
            [spec(f"j{i}") for i in range(700)], batch_size=100, concurrency=3
        )
        assert [j.info.spec.name for j in jobs if j.info] == [f"j{i}" for i in range(700)]
        assert sorted(call_sizes(jobs)) == [100] * 7
        assert len({j.id for j in jobs}) == 700


async def test_large_specs_are_split_to_fit_the_message_limit(
    api: ApiServer, store: JobStore
) -> None:
    # 45 specs of 100 kB each: 4.5 MB in one call would be refused (RESOURCE_EXHAUSTED)
    specs = [spec(f"big{i}", command=["echo", "x" * 100_000]) for i in range(45)]
    async with await AsyncClient.connect(api.address, timeout=10) as client:
        jobs = await client.submit_many(specs)
    sizes = call_sizes(jobs)
    assert len(sizes) >= 3 and sum(sizes) == 45
    assert await store.client.zcard(store.keys.pending("default")) == 45


async def test_a_failed_call_raises_and_the_calls_before_it_stand(api: ApiServer) -> None:
    async with await AsyncClient.connect(api.address, timeout=10) as client:
        specs: list[JobSpec | types_pb2.JobSpec] = [spec(f"j{i}") for i in range(6)]
        specs[3] = types_pb2.JobSpec(name="j3", tenant="acme")  # no command
        with pytest.raises(InvalidSpecError) as err:
            await client.submit_many(specs, batch_size=2)
        assert err.value.field == "specs[1].command"  # the second spec of the second call
        assert sorted(j.spec.name for j in await client.list_jobs()) == ["j0", "j1"]


async def test_bad_options_are_refused_before_any_call(api: ApiServer) -> None:
    async with await AsyncClient.connect(api.address, timeout=10) as client:
        for options in ({"batch_size": 0}, {"batch_size": 10_001}, {"concurrency": 0}):
            with pytest.raises(InvalidSpecError) as err:
                await client.submit_many([spec("a")], **options)  # type: ignore[arg-type]
            assert err.value.field in options
        assert await client.list_jobs() == []


async def test_the_sync_client_submits_many(api: ApiServer) -> None:
    def body() -> None:
        with Client.connect(api.address, timeout=10) as client:
            jobs = client.submit_many([spec(f"j{i}", client_request_id=f"r{i}") for i in range(5)])
            assert [j.info.spec.name for j in jobs if j.info] == [f"j{i}" for i in range(5)]
            again = client.submit_many([spec("j2", client_request_id="r2")], batch_size=1)
            assert again[0].id == jobs[2].id and again[0].deduplicated
            assert jobs[0].status().state == JobState.PENDING.value

    await asyncio.to_thread(body)
