"""``SubmitCoalescer`` against a real redis-server: concurrent single submits share store
writes, each caller gets its own job, a request id seen twice in one batch is one job, and a
store that cannot be reached fails every job of the batch with the store's error."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.api.coalesce import SubmitCoalescer
from orchestrator.config import RedisConfig
from orchestrator.errors import StoreUnavailableError
from orchestrator.states import JobState
from orchestrator.store import JobStore, LocalRedis
from orchestrator.validation import normalize_spec


def spec(name: str, *, rid: str = "") -> types_pb2.JobSpec:
    return normalize_spec(
        types_pb2.JobSpec(name=name, tenant="acme", command=["true"], client_request_id=rid)
    )


async def test_concurrent_submits_share_writes_and_each_gets_its_job(store: JobStore) -> None:
    coalescer = SubmitCoalescer(store)
    results = await asyncio.gather(
        *(coalescer.submit(spec(f"job-{n}"), f"00-{n:032x}-{n:016x}-01") for n in range(200))
    )
    ids = [job.id for job, _ in results]
    assert len(set(ids)) == 200 and not any(dedup for _, dedup in results)
    assert coalescer.batches < 50  # 200 submits, far fewer writes
    stored = {j.id: j for j in await store.get_jobs(ids)}
    for n, (job, _) in enumerate(results):
        assert stored[job.id].spec.name == f"job-{n}"  # each caller got its own job
        assert stored[job.id].state == JobState.PENDING.value
        assert await store.job_trace(job.id) == f"00-{n:032x}-{n:016x}-01"


async def test_a_request_id_twice_in_one_batch_is_one_job(store: JobStore) -> None:
    coalescer = SubmitCoalescer(store)
    first, second, other = await asyncio.gather(
        coalescer.submit(spec("a", rid="r-1"), ""),
        coalescer.submit(spec("a", rid="r-1"), ""),
        coalescer.submit(spec("b", rid="r-2"), ""),
    )
    assert first[0].id == second[0].id != other[0].id
    assert (first[1], second[1], other[1]) == (False, True, False)


async def test_an_unreachable_store_fails_every_job_of_the_batch(tmp_path: Path) -> None:
    redis = LocalRedis(tmp_path)
    redis.start()
    store = JobStore.from_config(RedisConfig(url=redis.url, socket_timeout=1.0))
    try:
        coalescer = SubmitCoalescer(store)
        await coalescer.submit(spec("before"), "")
        redis.stop()
        results = await asyncio.gather(
            *(coalescer.submit(spec(f"job-{n}"), "") for n in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, StoreUnavailableError) for r in results), results
    finally:
        await store.close()
        redis.stop()


@pytest.mark.parametrize("max_batch", [1, 7])
async def test_batches_never_exceed_the_limit(store: JobStore, max_batch: int) -> None:
    coalescer = SubmitCoalescer(store, max_batch=max_batch)
    await asyncio.gather(*(coalescer.submit(spec(f"job-{n}"), "") for n in range(21)))
    assert coalescer.batches >= -(-21 // max_batch)
