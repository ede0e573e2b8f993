"""``sgctl`` against a live in-process API server (over the session's Redis).

The server runs in the test's event loop; each CLI invocation runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from click.testing import CliRunner, Result

from orchestrator.api import ApiServer
from orchestrator.cli import cli

Sgctl = Callable[..., Awaitable[Result]]


@pytest.fixture
def sgctl(api: ApiServer) -> Sgctl:
    """Run ``sgctl ARGS`` against the test's API server; returns click's Result."""

    async def run(*args: str, env: dict[str, str | None] | None = None) -> Result:
        runner = CliRunner()
        env = {"SG_API": api.address, "SG_INSECURE": "1", **(env or {})}
        return await asyncio.to_thread(runner.invoke, cli, list(args), env=env)

    return run
