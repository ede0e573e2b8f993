"""The API server: JobService, SiteService, TenantService, FederationService and gRPC health on
one grpc.aio server.

The server is stateless; the :class:`JobStore` it is given holds everything. Its
:class:`SecurityConfig` decides TLS (the certificate is re-read for new connections when its
files change; connections are closed after ``max_connection_age_seconds`` so every client
moves to it), token authentication, per-principal rate limits, and the limits on message
size, metadata size and calls in progress. ``ApiServer`` is
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

from orchestrator._pb.orchestrator.v1 import (
    federation_pb2,
    federation_pb2_grpc,
    service_pb2,
    service_pb2_grpc,
)
from orchestrator.api.auth import Authenticator
from orchestrator.api.errors import ErrorInterceptor
from orchestrator.api.federation import FederationServicer
from orchestrator.api.jobs import JobServiceServicer
from orchestrator.api.logs import LogProxy
from orchestrator.api.sites import SiteServiceServicer
from orchestrator.api.tenants import TenantServiceServicer
from orchestrator.config import SecurityConfig
from orchestrator.errors import InvalidSpecError, StoreUnavailableError
from orchestrator.security.tls import server_credentials
from orchestrator.security.tokens import TokenSigner
from orchestrator.store import JobStore

__all__ = ["SERVICE_NAMES", "ApiServer", "run_until_signalled"]

log = logging.getLogger(__name__)

#: Fully qualified names of the services served, as the health service knows them.
SERVICE_NAMES: tuple[str, ...] = (
    *(
        service_pb2.DESCRIPTOR.services_by_name[name].full_name
        for name in ("JobService", "SiteService", "TenantService")
    ),
    federation_pb2.DESCRIPTOR.services_by_name["FederationService"].full_name,
)


def _host_of(listen: str) -> str:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidSpecError("listen", f"{listen!r} is not host:port")
    return host


class ApiServer:
    """The public services and health, on a grpc.aio server bound to ``listen``.

    ``listen`` is ``host:port``; port 0 picks a free port, reported by :meth:`start`. The
    server does not own ``store``: closing it is the caller's job. ``security`` defaults to
    plaintext without authentication (for tests and embedding; both are logged as warnings).
    """

    def __init__(
        self,
        store: JobStore,
        *,
        listen: str = "127.0.0.1:0",
        security: SecurityConfig | None = None,
        agent_channel_options: Sequence[tuple[str, Any]] = (),
        server_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._store = store
        self._listen = listen
        self._host = _host_of(listen)
        self._security = security or SecurityConfig(insecure=True)
        sec = self._security
        self._logs = LogProxy(
            store,
            channel_options=agent_channel_options,
            tls=None if sec.insecure else sec.agent_tls,
        )
        # SO_REUSEPORT off: a second server on a taken port must fail, not share it.
        self._server_options = [
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", sec.max_message_bytes),
            ("grpc.max_metadata_size", sec.max_metadata_bytes),
            ("grpc.max_connection_age_ms", int(sec.max_connection_age_seconds * 1000)),
            ("grpc.max_connection_age_grace_ms", 30_000),
            *server_options,
        ]
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
        sec = self._security
        server = aio.server(
            interceptors=[ErrorInterceptor(Authenticator(sec))],
            options=self._server_options,
            maximum_concurrent_rpcs=sec.max_concurrent_rpcs,
        )
        signer = (
            TokenSigner.from_file(sec.token_signing_key)
            if sec.token_signing_key is not None
            else None
        )
        agent_ca = sec.agent_tls.ca if sec.agent_tls is not None else None
        federation_pb2_grpc.add_FederationServiceServicer_to_server(
            FederationServicer(
                self._store,
                signer=signer,
                audience=sec.token_audience,
                issuing_ca=sec.issuing_ca,
                agent_ca=agent_ca,
            ),
            server,
        )
        service_pb2_grpc.add_JobServiceServicer_to_server(
            JobServiceServicer(self._store, logs=self._logs), server
        )
        service_pb2_grpc.add_SiteServiceServicer_to_server(SiteServiceServicer(self._store), server)
        service_pb2_grpc.add_TenantServiceServicer_to_server(
            TenantServiceServicer(self._store), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        try:
            if sec.insecure or sec.api_tls is None:
                log.warning(
                    "the API on %s is PLAINTEXT (insecure): tokens and jobs cross the network "
                    "unencrypted",
                    self._listen,
                )
                port = server.add_insecure_port(self._listen)
            else:
                creds = server_credentials(sec.api_tls, require_client_auth=False)
                port = server.add_secure_port(self._listen, creds)
        except RuntimeError as exc:
            await server.stop(None)
            raise InvalidSpecError("listen", f"cannot bind {self._listen}: {exc}") from exc
        await server.start()
        self._server = server
        self._address = f"{self._host}:{port}"
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "API server listening on %s (%s, %s)",
            self._address,
            "plaintext" if sec.insecure else "TLS",
            "token authentication" if sec.auth_enabled else "NO authentication",
        )
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
    security: SecurityConfig | None = None,
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
    server = ApiServer(store, listen=listen, security=security)
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
