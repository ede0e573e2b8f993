"""EpochGuard's logic on an in-memory stand-in for Redis (the real one: tests/integration/
test_redis_crash.py): a fresh guard seeds its baseline, a drop alarms once, concurrent calls of
one guard never alarm falsely."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from orchestrator.errors import StoreUnavailableError
from orchestrator.store.epoch import EpochGuard, Rollback, epoch_key

KEY = epoch_key("t:")


class FakeRedis:
    """INCR, GET and XADD on a dict; ``hold_get`` delays GET answers (the value is read at once,
    as Redis would execute it); ``down`` makes every command fail like an unreachable Redis."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.streams: dict[str, list[dict[str, str]]] = {}
        self.hold_get: asyncio.Event | None = None
        self.down = False
        self.xadd_down = False

    def _reach(self) -> None:
        if self.down:
            raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:1.")

    async def incr(self, key: str) -> int:
        self._reach()
        self.values[key] = self.values.get(key, 0) + 1
        return self.values[key]

    async def get(self, key: str) -> bytes | None:
        self._reach()
        value = self.values.get(key)
        if self.hold_get is not None:
            await self.hold_get.wait()
        return None if value is None else str(value).encode()

    async def xadd(self, name: str, fields: dict[str, Any], **_: Any) -> bytes:
        self._reach()
        if self.xadd_down:
            raise redis.exceptions.ConnectionError("Connection closed by server.")
        self.streams.setdefault(name, []).append({k: str(v) for k, v in fields.items()})
        return b"1-0"


@pytest.fixture
def fake() -> FakeRedis:
    return FakeRedis()


def guard(fake: FakeRedis, name: str = "scheduler") -> EpochGuard:
    return EpochGuard(cast(aioredis.Redis, fake), prefix="t:", name=name)


def criticals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]


async def test_a_fresh_guard_takes_its_first_read_as_baseline(fake: FakeRedis) -> None:
    g = guard(fake)
    assert await g.check() is None  # no key yet: nothing to compare with
    assert g.seen == 0
    fake.values[KEY] = 41  # other processes advanced it before this one started
    assert await g.check() is None
    assert g.seen == 41
    assert await g.advance() == 42
    assert await g.check() is None  # the same value again is no rollback
    assert g.last_rollback is None
    assert fake.streams == {}


async def test_a_lower_value_is_a_rollback_reported_once(
    fake: FakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    g = guard(fake)
    for _ in range(7):
        await g.advance()
    fake.values[KEY] = 3  # Redis restored from an older file
    with caplog.at_level(logging.CRITICAL, logger="orchestrator.store.epoch"):
        rollback = await g.check()
        assert isinstance(rollback, Rollback)
        assert (rollback.seen, rollback.now, rollback.key) == (7, 3, KEY)
        assert not rollback.key_missing and rollback.observer == "scheduler"
        assert "Redis went back in time" in rollback.message
        assert "had seen epoch 7" in rollback.message and "now holds epoch 3" in rollback.message
        assert "appendfsync always" in rollback.message  # what the operator should check
        assert g.last_rollback == rollback and g.seen == 3
        # the new value is the baseline: no alarm on every later call
        assert await g.check() is None
        assert await g.advance() == 4
        assert await g.check() is None
    assert criticals(caplog) == [rollback.message]
    [record] = fake.streams["t:events"]
    assert record == {
        "job": "",
        "state": "0",
        "attempt": "0",
        "site": "",
        "msg": rollback.message,
        "t": f"{rollback.at:.6f}",
        "epoch_seen": "7",
        "epoch_now": "3",
    }


async def test_a_missing_key_after_one_was_seen_is_a_rollback(fake: FakeRedis) -> None:
    g = guard(fake, name="api-1")
    await g.advance()
    await g.advance()
    fake.values.clear()  # flushed, or an empty replica promoted
    rollback = await g.check()
    assert rollback is not None and rollback.key_missing
    assert (rollback.seen, rollback.now) == (2, 0)
    assert "api-1 had seen epoch 2" in rollback.message
    assert "no epoch key at all" in rollback.message
    assert await g.check() is None
    assert await g.advance() == 1  # and it starts again from there


async def test_advance_notices_a_rollback_too(
    fake: FakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    g = guard(fake)
    for _ in range(5):
        await g.advance()
    fake.values[KEY] = 4
    with caplog.at_level(logging.CRITICAL, logger="orchestrator.store.epoch"):
        assert await g.advance() == 5  # the INCR answers no more than 5: seen before
        assert g.last_rollback is not None
        assert (g.last_rollback.seen, g.last_rollback.now) == (5, 5)
        assert await g.advance() == 6
        assert await g.check() is None
    assert len(criticals(caplog)) == 1
    assert len(fake.streams["t:events"]) == 1


async def test_each_process_compares_with_what_it_saw_itself(fake: FakeRedis) -> None:
    scheduler, api = guard(fake, "scheduler"), guard(fake, "api")
    assert await api.check() is None
    for _ in range(10):
        await scheduler.advance()  # values grow whoever INCRs them
    assert await api.check() is None
    assert api.seen == 10
    fake.values[KEY] = 6
    api_rollback = await api.check()
    scheduler_epoch = await scheduler.advance()
    assert api_rollback is not None and (api_rollback.seen, api_rollback.now) == (10, 6)
    assert scheduler_epoch == 7 and scheduler.last_rollback is not None
    assert (scheduler.last_rollback.seen, scheduler.last_rollback.now) == (10, 7)
    first, second = fake.streams["t:events"]  # one record per process that noticed
    assert "time: api had seen epoch 10" in first["msg"]
    assert "time: scheduler had seen epoch 10" in second["msg"]


async def test_a_read_overtaken_by_this_guards_own_advance_is_no_rollback(
    fake: FakeRedis,
) -> None:
    g = guard(fake)
    await g.advance()
    fake.hold_get = asyncio.Event()
    read = asyncio.create_task(g.check())  # GET runs now (1) but its answer comes late
    await asyncio.sleep(0)
    assert await g.advance() == 2  # meanwhile this guard saw 2
    fake.hold_get.set()
    assert await read is None  # 1 < 2, but 1 was read before 2 was made: no alarm
    assert g.seen == 2 and g.last_rollback is None


async def test_concurrent_calls_report_one_incident(fake: FakeRedis) -> None:
    g = guard(fake)
    for _ in range(9):
        await g.advance()
    fake.values[KEY] = 2
    fake.hold_get = asyncio.Event()
    read = asyncio.create_task(g.check())  # reads 2, answers late
    await asyncio.sleep(0)
    assert await g.advance() == 3  # notices the rollback first
    fake.hold_get.set()
    assert await read is None  # the same incident: not reported twice
    assert g.last_rollback is not None and g.last_rollback.now == 3
    assert len(fake.streams["t:events"]) == 1
    assert g.seen == 3


async def test_redis_down_is_store_unavailable(fake: FakeRedis) -> None:
    g = guard(fake)
    await g.advance()
    fake.down = True
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        await g.advance()
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        await g.check()
    fake.down = False
    assert await g.check() is None and g.seen == 1


async def test_a_rollback_is_returned_even_when_it_cannot_be_recorded(
    fake: FakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    g = guard(fake)
    await g.advance()
    await g.advance()
    fake.values[KEY] = 1
    fake.xadd_down = True
    with caplog.at_level(logging.ERROR, logger="orchestrator.store.epoch"):
        rollback = await g.check()
    assert rollback is not None and rollback.now == 1
    assert any("could not record" in r.getMessage() for r in caplog.records)
    assert await g.check() is None  # still reported once
