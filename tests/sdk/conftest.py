"""A real ApiServer on loopback for the SDK tests (the sync Client is driven from a thread)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from orchestrator.api import ApiServer
from orchestrator.store import JobStore


@pytest.fixture
async def api(store: JobStore) -> AsyncIterator[ApiServer]:
    server = ApiServer(store)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)
