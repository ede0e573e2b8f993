"""A real AsyncClient to the shared ApiServer fixture (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from orchestrator.api import ApiServer
from orchestrator.sdk import AsyncClient


@pytest.fixture
async def client(api: ApiServer) -> AsyncIterator[AsyncClient]:
    c = await AsyncClient.connect(api.address, timeout=5)
    try:
        yield c
    finally:
        await c.close()
