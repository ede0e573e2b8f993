"""ApiServer lifecycle: binding, stopping, and serving until SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from orchestrator.api import ApiServer, run_until_signalled
from orchestrator.errors import InvalidSpecError, ServiceUnavailableError
from orchestrator.sdk import AsyncClient
from orchestrator.store import JobStore


async def test_bad_or_taken_listen_address(store: JobStore, api: ApiServer) -> None:
    with pytest.raises(InvalidSpecError) as err:
        ApiServer(store, listen="nowhere")
    assert err.value.field == "listen"
    second = ApiServer(store, listen=api.address)
    with pytest.raises(InvalidSpecError, match="cannot bind"):
        await second.start()


async def test_start_reports_the_bound_port_and_stop_is_idempotent(store: JobStore) -> None:
    server = ApiServer(store, listen="127.0.0.1:0")
    assert server.address == ""
    address = await server.start()
    assert address.startswith("127.0.0.1:") and not address.endswith(":0")
    with pytest.raises(RuntimeError):
        await server.start()
    await server.stop(0)
    await server.stop(0)
    with pytest.raises(ServiceUnavailableError):
        await AsyncClient.connect(address, timeout=2)


async def test_run_until_signalled_serves_then_stops_on_sigterm(store: JobStore) -> None:
    seen: list[str] = []
    tasks: list[asyncio.Task[None]] = []

    async def probe_then_signal(address: str) -> None:
        async with await AsyncClient.connect(address, timeout=2) as client:
            seen.append(f"{len(await client.sites())} sites")
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the server's loop, not fatal

    def on_ready(address: str) -> None:
        seen.append(address)
        tasks.append(asyncio.get_running_loop().create_task(probe_then_signal(address)))

    await asyncio.wait_for(
        run_until_signalled(store, listen="127.0.0.1:0", grace=1, on_ready=on_ready), 10
    )
    await asyncio.gather(*tasks)
    assert seen[0].startswith("127.0.0.1:") and seen[1] == "0 sites"
    with pytest.raises(ServiceUnavailableError):
        await AsyncClient.connect(seen[0], timeout=2)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
