"""A real ApiServer on loopback (over the session's Redis) and a real AsyncClient to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from orchestrator.api import ApiServer
from orchestrator.sdk import AsyncClient
from orchestrator.store import JobStore


@pytest.fixture
async def api(store: JobStore) -> AsyncIterator[ApiServer]:
    server = ApiServer(store)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


@pytest.fixture
async def client(api: ApiServer) -> AsyncIterator[AsyncClient]:
    c = await AsyncClient.connect(api.address, timeout=5)
    try:
        yield c
    finally:
        await c.close()
