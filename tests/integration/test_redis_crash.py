"""Redis crashes and rollbacks, against a real redis-server (AOF, appendfsync always) started
here on a free port, the real API server on loopback and the real SDK.

- ``kill -9`` of redis-server during a storm of submits loses no acknowledged submit; while
  Redis is down every submit fails with an UNAVAILABLE-class error (never a false OK); after a
  restart on the same port and data dir the control plane serves again by itself, and a retried
  submit with the same client request id returns the job it had acknowledged.
- Redis restarted from an older copy of its data is reported by ``EpochGuard``, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc import aio

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.api import ApiServer
from orchestrator.config import RedisConfig
from orchestrator.errors import JobNotFoundError, OrchestratorError, StoreUnavailableError
from orchestrator.sdk import AsyncClient
from orchestrator.states import JobState
from orchestrator.store import JobStore, LocalRedis
from orchestrator.store.epoch import EpochGuard
from orchestrator.validation import normalize_spec

pytestmark = pytest.mark.timeout(60)

SUBMITTERS = 4
DOWN_SECONDS = 1.0
ERROR_PAUSE = 0.01  # a submitter's pause after an error, as a client's retry loop would make

# (job id, deduplicated) for a client request id
Submit = Callable[[str], Awaitable[tuple[str, bool]]]


def spec(rid: str) -> types_pb2.JobSpec:
    return normalize_spec(
        types_pb2.JobSpec(name="storm", tenant="acme", command=["true"], client_request_id=rid)
    )


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[LocalRedis]:
    """A redis-server of this test's own (it gets killed), data in ``tmp_path/redis``."""
    server = LocalRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def store(redis: LocalRedis) -> AsyncIterator[JobStore]:
    s = JobStore.from_config(RedisConfig(url=redis.url, prefix="crash:", socket_timeout=2.0))
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def client(store: JobStore) -> AsyncIterator[AsyncClient]:
    server = ApiServer(store)
    await server.start()
    try:
        async with await AsyncClient.connect(server.address, timeout=5) as c:
            yield c
    finally:
        await server.stop(0)


@dataclass(frozen=True)
class Outcome:
    """One submit: when it started and ended (monotonic), the job id if it was acknowledged,
    else the error."""

    rid: str
    started: float
    ended: float
    job_id: str = ""
    error: OrchestratorError | None = None


class Storm:
    """``SUBMITTERS`` tasks submitting jobs back to back, each with a new client request id."""

    def __init__(self, submit: Submit) -> None:
        self._submit = submit
        self._stop = asyncio.Event()
        self.outcomes: list[Outcome] = []
        self._tasks = [asyncio.create_task(self._run(w)) for w in range(SUBMITTERS)]

    async def _run(self, worker: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            rid = f"w{worker}-{n}"
            started = time.monotonic()
            try:
                job_id, _ = await self._submit(rid)
            except OrchestratorError as exc:  # anything else ends the test
                self.outcomes.append(Outcome(rid, started, time.monotonic(), error=exc))
                await asyncio.sleep(ERROR_PAUSE)
            else:
                self.outcomes.append(Outcome(rid, started, time.monotonic(), job_id=job_id))

    def acked(self, *, started_after: float = 0.0) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is None and o.started >= started_after]

    async def until(self, done: Callable[[], bool], *, what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            for task in self._tasks:
                if task.done():
                    task.result()  # a submitter died: show why
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


@dataclass(frozen=True)
class Crash:
    """A storm's outcomes and the moments Redis died and came back (monotonic)."""

    outcomes: list[Outcome]
    killed: float  # redis-server was dead (SIGKILL delivered and reaped)
    restarting: float  # a new redis-server was about to be started
    up: float  # the new one answered PING


async def storm_through_a_crash(redis: LocalRedis, submit: Submit) -> Crash:
    """Submit continuously; mid-storm SIGKILL redis-server, keep submitting for DOWN_SECONDS,
    restart it on the same port and data dir, and go on until submits succeed again."""
    storm = Storm(submit)
    await storm.until(lambda: len(storm.acked()) >= 100, what="100 acknowledged submits")
    redis.kill()
    killed = time.monotonic()
    await asyncio.sleep(DOWN_SECONDS)
    restarting = time.monotonic()
    await asyncio.to_thread(redis.start)  # the submitters go on meanwhile
    up = time.monotonic()
    await storm.until(
        lambda: len(storm.acked(started_after=up)) >= 20,
        what="20 submits acknowledged after the restart (no reconnect?)",
    )
    await storm.stop()
    return Crash(storm.outcomes, killed, restarting, up)


def describe(outcomes: list[Outcome]) -> str:
    kinds = Counter(
        f"{type(o.error).__name__}: {o.error.message}" for o in outcomes if o.error is not None
    )
    return "; ".join(f"{n} x {kind}" for kind, n in kinds.most_common(5))


async def check_crash(crash: Crash, store: JobStore, submit: Submit) -> None:
    """No acknowledged submit lost or doubled; no OK while Redis was down; only UNAVAILABLE."""
    failed = [o for o in crash.outcomes if o.error is not None]
    not_unavailable = [o for o in failed if not isinstance(o.error, StoreUnavailableError)]
    assert not not_unavailable, (
        "submits failed with something other than StoreUnavailableError (UNAVAILABLE): "
        + describe(not_unavailable)
    )
    # Submits that started after Redis died and ended before a new one was started cannot
    # have reached any Redis: each must have failed.
    while_down = [
        o for o in crash.outcomes if crash.killed <= o.started and o.ended <= crash.restarting
    ]
    assert len(while_down) >= 2 * SUBMITTERS, "too few submits tried while Redis was down"
    false_ok = [o for o in while_down if o.error is None]
    assert not false_ok, f"acknowledged while Redis was down: {false_ok[:3]}"

    # Every acknowledged job is in Redis with its spec, pending in its queue, once.
    acked = {o.rid: o.job_id for o in crash.outcomes if o.error is None}
    jobs = {j.id: j for j in await store.get_jobs(list(acked.values()))}
    lost = sorted(rid for rid, job_id in acked.items() if job_id not in jobs)
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged submits lost: {lost[:5]}"
    for rid, job_id in acked.items():
        job = jobs[job_id]
        assert job.spec.client_request_id == rid and job.spec.name == "storm"
        assert job.state == JobState.PENDING.value
    async with store.client.pipeline(transaction=False) as pipe:
        for job_id in acked.values():
            pipe.zscore(store.keys.pending("default"), job_id)
        scores = await pipe.execute()
    assert all(s is not None for s in scores), "acknowledged jobs missing from their queue"
    all_ids = [i.decode() for i in await store.client.zrange(store.keys.jobs, 0, -1)]
    per_rid = Counter(j.spec.client_request_id for j in await store.get_jobs(all_ids))
    assert max(per_rid.values()) == 1, "a request id made two jobs"

    # Retried after the restart with the same client request id: the acknowledged job again.
    # (The submits in doubt, cut off by the kill, were perhaps written: a retry must find them.)
    before = [o for o in crash.outcomes if o.error is None and o.ended < crash.killed]
    in_doubt = [o for o in failed if o.started < crash.killed]
    for o in before[-10:]:
        job_id, dedup = await submit(o.rid)
        assert (job_id, dedup) == (o.job_id, True)
    for o in [*in_doubt, *while_down[:10]]:
        job_id, dedup = await submit(o.rid)
        again, dedup_again = await submit(o.rid)
        assert again == job_id and dedup_again
    all_ids = [i.decode() for i in await store.client.zrange(store.keys.jobs, 0, -1)]
    per_rid = Counter(j.spec.client_request_id for j in await store.get_jobs(all_ids))
    assert max(per_rid.values()) == 1, "a retried request id made a second job"


@contextlib.asynccontextmanager
async def ticking(guard: EpochGuard) -> AsyncIterator[None]:
    """Advance the epoch every 10 ms, as the scheduler does once per cycle."""

    async def tick() -> None:
        while True:
            with contextlib.suppress(StoreUnavailableError):
                await guard.advance()
            await asyncio.sleep(0.01)

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_redis_killed_mid_storm_through_the_api(
    redis: LocalRedis, store: JobStore, client: AsyncClient
) -> None:
    async def submit(rid: str) -> tuple[str, bool]:
        job = await client.submit(spec(rid))
        return job.id, job.deduplicated

    guard = EpochGuard.for_store(store, name="scheduler")
    async with ticking(guard):
        crash = await storm_through_a_crash(redis, submit)
    seen = guard.seen
    await check_crash(crash, store, submit)
    # What the clients saw while Redis was down: the server's StoreUnavailableError (gRPC
    # UNAVAILABLE), naming Redis.
    down = [o.error for o in crash.outcomes if crash.killed <= o.started and o.error]
    assert down and all(isinstance(e, StoreUnavailableError) for e in down)
    assert all(e.message.startswith("queue store (Redis) unreachable") for e in down)
    codes = {e.__cause__.code() for e in down if isinstance(e.__cause__, aio.AioRpcError)}
    assert codes == {grpc.StatusCode.UNAVAILABLE}
    # A crash with appendfsync always keeps the epoch: no false rollback alarm.
    assert await guard.check() is None
    assert guard.last_rollback is None and guard.seen >= seen > 0


async def test_redis_killed_mid_storm_through_the_store(redis: LocalRedis, store: JobStore) -> None:
    async def submit(rid: str) -> tuple[str, bool]:
        job, dedup = await store.submit(spec(rid))
        return job.id, dedup

    crash = await storm_through_a_crash(redis, submit)
    await check_crash(crash, store, submit)


async def reconnected(store: JobStore, *, timeout: float = 5.0) -> None:
    """Ping until the store answers again, as the control plane does before ``check()``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await store.ping()
            return
        except StoreUnavailableError:
            assert time.monotonic() < deadline, "the store did not reconnect"
            await asyncio.sleep(0.01)


def copy_data(data_dir: Path, to: Path) -> None:
    """Copy Redis's data files (not its log), as a backup of a running server would."""
    shutil.copytree(data_dir, to, ignore=shutil.ignore_patterns("redis.log"))


def restore_data(copy: Path, data_dir: Path) -> None:
    for path in data_dir.iterdir():
        if path.name == "redis.log":
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    shutil.copytree(copy, data_dir, dirs_exist_ok=True)


async def test_redis_restored_from_an_older_copy_is_reported_once(
    redis: LocalRedis, store: JobStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = EpochGuard.for_store(store, name="scheduler")
    api = EpochGuard.for_store(store, name="api server")
    assert await api.check() is None  # nothing yet
    assert await scheduler.advance() == 1
    early = [(await store.submit(spec(f"early-{i}")))[0].id for i in range(5)]
    assert await scheduler.advance() == 2
    copy_data(redis.data_dir, tmp_path / "backup")  # holds epoch 2 and the early jobs
    later = [(await store.submit(spec(f"later-{i}")))[0].id for i in range(5)]
    for _ in range(3):
        await scheduler.advance()
    assert await api.check() is None and api.seen == 5

    redis.stop()
    restore_data(tmp_path / "backup", redis.data_dir)
    await asyncio.to_thread(redis.start)
    await reconnected(store)

    with caplog.at_level(logging.CRITICAL, logger="orchestrator.store.epoch"):
        rollback = await api.check()
        assert rollback is not None
        assert (rollback.seen, rollback.now, rollback.key) == (5, 2, "crash:epoch")
        assert rollback.message.startswith(
            "Redis went back in time: api server had seen epoch 5 at 'crash:epoch', "
            "but Redis now holds epoch 2."
        )
        # the scheduler's next cycle notices it too: its INCR answers 3, not above 5
        assert await scheduler.advance() == 3
        assert scheduler.last_rollback is not None
        assert (scheduler.last_rollback.seen, scheduler.last_rollback.now) == (5, 3)
        # once per incident: the values found are the new baselines
        for _ in range(3):
            assert await api.check() is None
            await scheduler.advance()
        # a control plane (re)started after the incident takes what Redis holds as baseline
        assert await EpochGuard.for_store(store).check() is None
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL] == [
        rollback.message,
        scheduler.last_rollback.message,
    ]

    # That is what went back in time: the later jobs are gone, the early ones are there.
    assert len(await store.get_jobs(early)) == 5
    for job_id in later:
        with pytest.raises(JobNotFoundError):
            await store.get_job(job_id)

    # Recorded in the event stream, one entry per process, in the layout of job events.
    records = [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in await store.client.xrange(store.keys.events)
    ]
    incidents = [r for r in records if r["job"] == ""]
    submitted = next(r for r in records if r["job"] == early[0])
    assert [(r["epoch_seen"], r["epoch_now"]) for r in incidents] == [("5", "2"), ("5", "3")]
    assert [r["msg"] for r in incidents] == [rollback.message, scheduler.last_rollback.message]
    for r in incidents:
        assert (r["state"], r["attempt"], r["site"]) == ("0", "0", "")
        assert float(r["t"]) > 0
        assert set(submitted) <= set(r)  # every field a job's event has


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason=(
        "the store's pools keep connections that sat idle through the outage: after the first "
        "call finds one dead, others still fail once each (UNAVAILABLE, never a false OK). "
        "Closing idle connections from a background task raced with calls taking them and "
        "could hang a call, so it was taken out; the fix wants a health check per checkout"
    ),
)
async def test_the_pool_heals_after_the_first_call_that_finds_redis_restarted(
    redis: LocalRedis, store: JobStore, client: AsyncClient
) -> None:
    """Connections that sat idle through the outage are dead. The first call to find one fails
    (UNAVAILABLE: a script it carried may or may not have run, so it is not retried blindly);
    the store then drops every idle connection, and the calls after it connect afresh.

    The pool the API's store uses is first made to hold ``calls`` connections at once (each
    taken by a short blocking read): concurrent API calls alone may share fewer (the API
    writes concurrent submits in one batch, and fast reads reuse connections)."""
    calls = 8
    job = await client.submit(spec("seed"))
    await asyncio.gather(*(store.client.blpop([f"{job.id}:none"], 0.05) for _ in range(calls)))
    redis.kill()  # idle: no call in flight, none made while it is down
    await asyncio.to_thread(redis.start)
    with contextlib.suppress(StoreUnavailableError):  # the one allowed failure: it found
        await client.get_job(job.id)  # a dead connection
    await asyncio.sleep(0.05)  # the pools close their idle connections in the background
    results = await asyncio.gather(
        *(client.get_job(job.id) for _ in range(calls)), return_exceptions=True
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    for exc in failed:
        if not isinstance(exc, StoreUnavailableError):
            raise exc  # anything but UNAVAILABLE fails this test outright
    assert not failed, (
        f"{len(failed)} of {calls} reads failed after Redis was back and answering: {failed[0]}"
    )
