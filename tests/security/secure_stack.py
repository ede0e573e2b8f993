"""Helpers of the security tests: a development PKI with token keys, the secured API's handle,
raw calls of any method with any bytes, and a snapshot of every Redis key under a prefix (to
prove that a refused call changed nothing)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as aioredis
from cryptography import x509
from grpc import aio

from orchestrator._pb.orchestrator.v1 import federation_pb2, service_pb2, types_pb2
from orchestrator.api import ApiServer
from orchestrator.config import SecurityConfig, TlsFiles
from orchestrator.sdk import AsyncClient
from orchestrator.security.tls import channel_credentials
from orchestrator.security.tokens import Kind, TokenSigner
from orchestrator.store import JobStore

#: (service, method, server-streaming) of every public method.
METHODS: list[tuple[str, str, bool]] = [
    (service.full_name, method.name, method.server_streaming)
    for module, names in (
        (service_pb2, ("JobService", "SiteService", "TenantService")),
        (federation_pb2, ("FederationService",)),
    )
    for name in names
    for service in (module.DESCRIPTOR.services_by_name[name],)
    for method in service.methods
]


def peer_certificate(address: str, files: TlsFiles, server_name: str) -> x509.Certificate:
    """The certificate a TLS server presents, read with a plain TLS socket (verifying chain and
    name against ``files.ca``, presenting ``files``' client certificate when it has one)."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=str(files.ca))
    if files.cert is not None and files.key is not None:
        context.load_cert_chain(files.cert, files.key)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def raw_call(
    channel: aio.Channel,
    service: str,
    method: str,
    streaming: bool,
    payload: bytes,
    *,
    metadata: tuple[tuple[str, str], ...],
) -> tuple[grpc.StatusCode, str]:
    """Send ``payload`` as the request bytes of ``/service/method``; the status and details."""
    path = f"/{service}/{method}"
    try:
        if streaming:
            call = channel.unary_stream(path)(payload, metadata=metadata, timeout=5)
            async for _ in call:
                pass
        else:
            await channel.unary_unary(path)(payload, metadata=metadata, timeout=5)
    except aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@dataclass(frozen=True)
class Pki:
    """A development CA and the API's certificate, plus token keys, in one directory."""

    certs: Path
    signing_key: Path
    verify_key: Path

    def security(self, **overrides: Any) -> SecurityConfig:
        base: dict[str, Any] = {
            "api_tls": TlsFiles.in_dir(self.certs, "api"),
            "agent_tls": TlsFiles.in_dir(self.certs, "control-plane"),
            "issuing_ca": TlsFiles(
                ca=self.certs / "ca.pem",
                cert=self.certs / "ca.pem",
                key=self.certs / "ca-key.pem",
            ),
            "token_verify_keys": (self.verify_key,),
            "token_signing_key": self.signing_key,
        }
        return SecurityConfig(**{**base, **overrides})


@dataclass(frozen=True)
class Tokens:
    """One token per principal used by the tests."""

    operator: str
    acme: str  # tenant acme
    globex: str  # tenant globex
    narvik_jv: str  # partner owning narvik
    arctic: str  # partner owning tromso
    signer: TokenSigner

    def issue(self, kind: Kind, subject: str, **kwargs: Any) -> str:
        kwargs.setdefault("ttl_seconds", 3600)
        return self.signer.issue(kind, subject, **kwargs)[0]


@dataclass
class SecureApi:
    server: ApiServer
    store: JobStore
    pki: Pki
    tokens: Tokens

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(ca=self.pki.certs / "ca.pem")

    async def client(self, token: str | None) -> AsyncClient:
        return await AsyncClient.connect(self.address, tls=self.tls, token=token, timeout=10)

    def channel(self) -> aio.Channel:
        """A raw TLS channel (for calls the SDK would never make)."""
        return aio.secure_channel(self.address, channel_credentials(self.tls))


def site(site_id: str, *, owner: str, jurisdiction: str = "NO") -> types_pb2.Site:
    return types_pb2.Site(
        id=site_id,
        jurisdiction=jurisdiction,
        owner=owner,
        gpus=[types_pb2.GpuPool(type="H100", count=8, watts=1000)],
        power_cap_mw=1.0,
        cpus=64,
        memory_mb=256 * 1024,
        endpoint="127.0.0.1:1",
        home_countries=[jurisdiction],
    )


async def redis_snapshot(store: JobStore) -> Mapping[str, Any]:
    """Every key under the store's prefix with its whole value, to compare before and after."""
    client: aioredis.Redis = store.client
    out: dict[str, Any] = {}
    async for raw in client.scan_iter(match=f"{store.keys.prefix}*", count=1000):
        key = raw.decode() if isinstance(raw, bytes) else raw
        kind = await client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "string":
            value: Any = await client.get(key)
        elif kind == "hash":
            value = await client.hgetall(key)
        elif kind == "zset":
            value = await client.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            value = sorted(await client.smembers(key))
        elif kind == "list":
            value = await client.lrange(key, 0, -1)
        elif kind == "stream":
            value = await client.xrange(key)
        else:
            value = kind
        out[key] = (kind, value)
    return out
