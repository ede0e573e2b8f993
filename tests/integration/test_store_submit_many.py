"""``JobStore.submit_many`` against a real redis-server: one atomic, durable Lua call per batch,
ids and queue order as single submits make them, deduplication by client request id."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.config import RedisConfig
from orchestrator.errors import InvalidSpecError
from orchestrator.states import JobState
from orchestrator.store import JobStore, LocalRedis, pending_score
from orchestrator.validation import normalize_spec


def spec(
    name: str = "job",
    *,
    rid: str = "",
    tenant: str = "acme",
    queue: str = "",
    priority: types_pb2.PriorityClass.ValueType = types_pb2.PRIORITY_CLASS_UNSPECIFIED,
) -> types_pb2.JobSpec:
    return normalize_spec(
        types_pb2.JobSpec(
            name=name,
            tenant=tenant,
            queue=queue,
            priority=priority,
            command=["true"],
            client_request_id=rid,
        )
    )


async def keys_of(store: JobStore) -> dict[str, bytes]:
    """Every key under the store's prefix with its serialised value (DUMP)."""
    keys = sorted([k async for k in store.client.scan_iter(match=f"{store.prefix}*", count=1000)])
    return {k.decode(): await store.client.dump(k) for k in keys}


async def test_a_batch_is_written_in_order_and_answered_as_stored(store: JobStore) -> None:
    specs = [spec(f"j{i}", queue="gpu" if i % 2 else "") for i in range(50)]
    results = await store.submit_many(specs)
    assert [dedup for _, dedup in results] == [False] * 50
    jobs = [job for job, _ in results]
    ids = [job.id for job in jobs]
    assert len(set(ids)) == 50 and ids == sorted(ids)  # ids increase in batch order
    assert [job.spec for job in jobs] == specs
    # what the batch answers is what a read gives back, field for field
    assert await store.get_jobs(ids) == jobs
    assert {job.state for job in jobs} == {JobState.PENDING.value}
    assert {job.created_at.ToNanoseconds() for job in jobs} == {jobs[0].created_at.ToNanoseconds()}
    for job in jobs[:3]:
        assert [e.message for e in await store.events(job.id)] == ["submitted"]
    listed, _ = await store.list_jobs(page_size=100)
    assert [j.id for j in listed] == ids[::-1]


async def test_jobs_land_in_their_queues_where_the_scheduler_looks(store: JobStore) -> None:
    surplus = [spec(f"s{i}", priority=types_pb2.PRIORITY_CLASS_SURPLUS) for i in range(3)]
    high = [spec(f"h{i}", queue="urgent", priority=types_pb2.PRIORITY_CLASS_HIGH) for i in range(3)]
    normal = [spec(f"n{i}") for i in range(3)]
    results = await store.submit_many([*surplus, *high, *normal])
    by_name = {job.spec.name: job for job, _ in results}

    window = await store.pending_window(100)
    # priority class first, then batch order (one submit time for the whole batch)
    expected = ["h0", "h1", "h2", "n0", "n1", "n2", "s0", "s1", "s2"]
    assert [r.job_id for r in window] == [by_name[name].id for name in expected]
    assert {r.attempt for r in window} == {1}
    priority = {job.id: job.spec.priority for job, _ in results}
    submit_ms = {int(r.score) - pending_score(priority[r.job_id], 0) for r in window}
    assert len(submit_ms) == 1  # scored as single submits are: class, then submit time
    created_ms = by_name["s0"].created_at.ToMilliseconds()
    assert abs(submit_ms.pop() - created_ms) <= 1
    assert await store.client.zcard(store.keys.pending("urgent")) == 3
    assert await store.client.zcard(store.keys.pending("default")) == 6
    queues = await store.client.smembers(store.keys.queues)
    assert {q.decode() for q in queues} == {"default", "urgent"}


async def test_a_client_request_id_deduplicates_within_and_across_batches(
    store: JobStore,
) -> None:
    first, _ = await store.submit(spec("a", rid="r1"))
    results = await store.submit_many(
        [
            spec("a", rid="r1"),  # an earlier submit's
            spec("b", rid="r2"),
            spec("b", rid="r2"),  # the same call's, earlier
            spec("c"),
            spec("d", rid="r2", tenant="other"),  # request ids are per tenant
        ]
    )
    [(a, a_dup), (b, b_dup), (b2, b2_dup), (_, c_dup), (d, d_dup)] = results
    assert (a.id, a_dup) == (first.id, True)
    assert not b_dup and (b2.id, b2_dup) == (b.id, True)
    assert not c_dup and not d_dup and d.id != b.id
    assert b2 == b
    assert await store.client.zcard(store.keys.pending("default")) == 4  # a, b, c, d

    # an earlier job comes back as it is now, not as it was submitted
    await store.cancel(b.id)
    [(again, dup)] = await store.submit_many([spec("b", rid="r2")])
    assert dup and again.id == b.id and again.state == JobState.CANCELLED.value
    assert len((await store.list_jobs(page_size=100))[0]) == 4


async def test_traceparents_are_recorded_per_job(store: JobStore) -> None:
    tps = [f"00-{i:032x}-{i:016x}-01" for i in range(1, 4)]
    results = await store.submit_many([spec("a"), spec("b"), spec("c")], traceparents=tps)
    assert [await store.job_trace(job.id) for job, _ in results] == tps
    [(untraced, _)] = await store.submit_many([spec("d")])
    assert await store.job_trace(untraced.id) == ""


async def test_bad_arguments_write_nothing(store: JobStore) -> None:
    assert await store.submit_many([]) == []
    before = await keys_of(store)
    with pytest.raises(InvalidSpecError) as err:
        await store.submit_many([spec("a"), spec("b")], traceparents=[""])
    assert err.value.field == "traceparents"
    unnormalised = types_pb2.JobSpec(name="x", tenant="a b", command=["true"])
    with pytest.raises(InvalidSpecError):
        await store.submit_many([spec("a"), unnormalised])
    assert await keys_of(store) == before


async def test_a_batch_is_one_atomic_step(store: JobStore, redis_config: RedisConfig) -> None:
    """A reader on another connection sees a whole batch or none of it, never a part."""
    batch = 2000
    seen: set[int] = set()
    reader = JobStore.from_config(redis_config)
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen.add(await reader.client.zcard(reader.keys.pending("default")))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        for b in range(3):
            await store.submit_many([spec(f"b{b}-{i}") for i in range(batch)])
    finally:
        done.set()
        await watcher
        await reader.close()
    assert seen <= {0, batch, 2 * batch, 3 * batch}, sorted(seen)
    assert await store.client.zcard(store.keys.pending("default")) == 3 * batch


async def test_an_answered_batch_survives_a_redis_crash(tmp_path: Path) -> None:
    """The answer comes after the write is in the AOF (fsync always): kill -9 loses nothing."""
    redis = LocalRedis(tmp_path / "redis")
    redis.start()
    try:
        config = RedisConfig(url=redis.url, prefix="crash:")
        store = JobStore.from_config(config)
        try:
            results = await store.submit_many([spec(f"j{i}", rid=f"r{i}") for i in range(500)])
        finally:
            await store.close()
        redis.kill()
        redis.start()
        store = JobStore.from_config(config)
        try:
            ids = [job.id for job, _ in results]
            assert [job.id for job in await store.get_jobs(ids)] == ids
            assert await store.client.zcard(store.keys.pending("default")) == 500
            again = await store.submit_many([spec("j7", rid="r7")])
            assert again == [(results[7][0], True)]
        finally:
            await store.close()
    finally:
        redis.stop()
