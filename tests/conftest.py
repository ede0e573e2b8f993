"""Shared fixtures: a real redis-server per test session (fresh key prefix per test), and a
real ApiServer on loopback over it."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from orchestrator.api import ApiServer
from orchestrator.config import RedisConfig
from orchestrator.store import JobStore, LocalRedis

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    """A real redis-server on a free loopback port, durable settings, stopped after the session."""
    with tempfile.TemporaryDirectory(prefix="sg-redis-") as tmp:
        server = LocalRedis(Path(tmp))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def redis_config(redis_server: LocalRedis) -> RedisConfig:
    """A Redis config with a key prefix of its own, so tests never see each other's keys."""
    return RedisConfig(url=redis_server.url, prefix=f"t{os.getpid()}-{next(_prefixes)}:")


@pytest.fixture
async def store(redis_config: RedisConfig) -> AsyncIterator[JobStore]:
    """A JobStore on the session's Redis, under a fresh prefix."""
    s = JobStore.from_config(redis_config)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def api(store: JobStore) -> AsyncIterator[ApiServer]:
    """A real ApiServer on a free loopback port, over the test's store."""
    server = ApiServer(store)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)
