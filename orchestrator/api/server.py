"""The API server: JobService, SiteService and gRPC health on one grpc.aio server.

The server is stateless; the :class:`JobStore` it is given holds everything. ``ApiServer`` is
the embeddable piece (tests, ``sgctl up``); :func:`run_until_signalled` is for entrypoints: it
serves until SIGTERM or SIGINT, then stops with a grace period.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from typing import Any

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from orchestrator._pb.orchestrator.v1 import service_pb2, service_pb2_grpc
from orchestrator.api.errors import ErrorInterceptor
from orchestrator.api.jobs import JobServiceServicer
from orchestrator.api.logs import LogProxy
from orchestrator.api.sites import SiteServiceServicer
from orchestrator.api.tenants import TenantServiceServicer
from orchestrator.errors import InvalidSpecError, StoreUnavailableError
from orchestrator.store import JobStore

__all__ = ["SERVICE_NAMES", "ApiServer", "run_until_signalled"]

log = logging.getLogger(__name__)

#: Fully qualified names of the services served, as the health service knows them.
SERVICE_NAMES: tuple[str, ...] = tuple(
    service_pb2.DESCRIPTOR.services_by_name[name].full_name
    for name in ("JobService", "SiteService")
)


def _host_of(listen: str) -> str:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidSpecError("listen", f"{listen!r} is not host:port")
    return host


class ApiServer:
    """JobService + SiteService + health, on a grpc.aio server bound to ``listen``.

    ``listen`` is ``host:port``; port 0 picks a free port, reported by :meth:`start`. The
    server does not own ``store``: closing it is the caller's job.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        listen: str = "127.0.0.1:0",
        agent_channel_options: Sequence[tuple[str, Any]] = (),
        server_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._store = store
        self._listen = listen
        self._host = _host_of(listen)
        self._logs = LogProxy(store, channel_options=agent_channel_options)
        # SO_REUSEPORT off: a second server on a taken port must fail, not share it.
        self._server_options = [("grpc.so_reuseport", 0), *server_options]
        self._health = health.aio.HealthServicer()
        self._server: aio.Server | None = None
        self._address = ""

    @property
    def address(self) -> str:
        """``host:port`` the server is bound to ("" before :meth:`start`)."""
        return self._address

    async def start(self) -> str:
        """Bind, start serving, and return the bound ``host:port``."""
        if self._server is not None:
            raise RuntimeError("ApiServer already started")
        server = aio.server(interceptors=[ErrorInterceptor()], options=self._server_options)
        service_pb2_grpc.add_JobServiceServicer_to_server(
            JobServiceServicer(self._store, logs=self._logs), server
        )
        service_pb2_grpc.add_SiteServiceServicer_to_server(SiteServiceServicer(self._store), server)
        service_pb2_grpc.add_TenantServiceServicer_to_server(
            TenantServiceServicer(self._store), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        try:
            port = server.add_insecure_port(self._listen)
        except RuntimeError as exc:
            await server.stop(None)
            raise InvalidSpecError("listen", f"cannot bind {self._listen}: {exc}") from exc
        await server.start()
        self._server = server
        self._address = f"{self._host}:{port}"
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("API server listening on %s", self._address)
        return self._address

    async def stop(self, grace: float | None = 5.0) -> None:
        """Report NOT_SERVING, let open calls finish for up to ``grace`` seconds, then stop."""
        server, self._server = self._server, None
        if server is None:
            return
        await self._health.enter_graceful_shutdown()
        await server.stop(grace)
        await self._logs.close()
        log.info("API server on %s stopped", self._address)

    async def wait_for_termination(self) -> None:
        """Wait until the server stops."""
        if self._server is not None:
            await self._server.wait_for_termination()


async def run_until_signalled(
    store: JobStore,
    *,
    listen: str,
    grace: float = 5.0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve on ``listen`` until SIGTERM or SIGINT, then stop with ``grace`` seconds to spare.

    For entrypoints. Logs the store's durability warnings (or that it is unreachable) first;
    ``on_ready`` gets the bound address once the server is serving.
    """
    try:
        for warning in await store.durability_warnings():
            log.warning("%s", warning)
    except StoreUnavailableError as exc:
        log.warning("%s; serving anyway, calls will be UNAVAILABLE until it is back", exc)
    server = ApiServer(store, listen=listen)
    address = await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stopping.set)
    try:
        if on_ready is not None:
            on_ready(address)
        await stopping.wait()
        log.info("signal received: stopping (grace %.1fs)", grace)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await server.stop(grace)
