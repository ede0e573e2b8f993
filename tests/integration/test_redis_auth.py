"""The store against Redis servers that authenticate: an ACL user limited to the store's key
prefix, and TLS with client certificates.

The redis-server used here is built without TLS, so ``rediss://`` goes through a small
TLS-terminating proxy (below) in front of a plain redis-server; the proxy requires and verifies
a client certificate, as a Redis with ``tls-auth-clients yes`` does. Certificates are made per
module with the project's own PKI helpers (``orchestrator.security.certs``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import ssl
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.config import RedisConfig
from orchestrator.errors import StoreUnavailableError
from orchestrator.processes import stop_process
from orchestrator.security.certs import create_ca, issue_certificate
from orchestrator.security.files import write_atomically
from orchestrator.states import JobState
from orchestrator.store import EpochGuard, JobStore, LocalRedis, find_redis_server, free_port
from orchestrator.validation import normalize_spec

T = TypeVar("T")

USER = "sg-orch"
PREFIX = "acl:"
ACL_RULES = (
    # only the store's keys and channels; data, scripts and pub/sub, nothing dangerous but
    # CONFIG GET (the durability check reads appendonly and appendfsync)
    f"resetkeys ~{PREFIX}* resetchannels &{PREFIX}* "
    "-@all +@read +@write +@scripting +@pubsub +@connection -@dangerous +config|get"
)


def spec(name: str) -> types_pb2.JobSpec:
    s = types_pb2.JobSpec(name=name, tenant="acme", command=["true"])
    s.resources.gpus = 1
    s.resources.gpu_type = "H100"
    return normalize_spec(s)


async def exercise(store: JobStore) -> None:
    """What every control-plane process does with the store: Lua scripts (EVALSHA, and SCRIPT
    LOAD on a fresh server), reads and pipelines, stream reads (blocking too), the epoch and the
    scheduler's wake channel."""
    pubsub = store.client.pubsub()
    try:
        await pubsub.subscribe(store.keys.wake_channel)
        assert await EpochGuard.for_store(store, name="test").advance() >= 1
        job, _ = await store.submit(spec("over-auth"))
        assert (await store.get_job(job.id)).state == JobState.PENDING.value
        assert [r.job_id for r in await store.pending_window(10)] == [job.id]
        assert set(await store.pending_jobs([job.id])) == {job.id}
        woken = None
        deadline = time.monotonic() + 5.0
        while woken is None and time.monotonic() < deadline:
            woken = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        assert woken is not None and woken["channel"] == store.keys.wake_channel.encode()
        first = await store.events(job.id)
        assert [e.state for e in first] == [JobState.PENDING.value]
        await store.cancel(job.id, "done testing")
        later = await store.events(job.id, after=first[-1].event_id, block_ms=1000)
        assert [e.state for e in later] == [JobState.CANCELLED.value]
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


# ------------------------------------------------------------------ an ACL-protected redis-server


@dataclass(frozen=True)
class AclRedis:
    host: str
    port: int
    password: str

    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[AclRedis]:
    """A redis-server whose ``default`` user is off and whose one user may touch only keys and
    channels under ``PREFIX``. The password is in a config file, not on the command line."""
    password = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="sg-redis-acl-") as tmp:
        port = free_port()
        conf = Path(tmp) / "redis.conf"
        conf.write_text(
            f'port {port}\nbind 127.0.0.1\ndir {tmp}\nsave ""\nappendonly no\n'
            f"daemonize no\nlogfile {tmp}/redis.log\n"
            "user default off\n"
            f"user {USER} on >{password} {ACL_RULES}\n"
        )
        conf.chmod(0o600)
        proc = subprocess.Popen(
            [find_redis_server(), str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        try:
            _wait_for(proc, redis.Redis("127.0.0.1", port, username=USER, password=password), tmp)
            yield AclRedis("127.0.0.1", port, password)
        finally:
            stop_process(proc, timeout=10)


def _wait_for(proc: subprocess.Popen[bytes], client: redis.Redis, data_dir: str) -> None:
    deadline = time.monotonic() + 15
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited: {Path(data_dir, 'redis.log').read_text()}"
                )
            try:
                if client.ping():
                    return
            except redis.exceptions.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not answer")
            time.sleep(0.02)
    finally:
        client.close()


@pytest.fixture
def acl_config(acl_redis: AclRedis) -> RedisConfig:
    return RedisConfig(
        url=acl_redis.url(), prefix=PREFIX, username=USER, password=acl_redis.password,
        socket_timeout=2.0,
    )  # fmt: skip


async def test_an_acl_user_limited_to_the_prefix_runs_the_store(
    acl_config: RedisConfig, acl_redis: AclRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = JobStore.from_config(acl_config)
    try:
        await store.ping()
        assert "appendonly=no" in " ".join(await store.durability_warnings())
        await exercise(store)
        # the ACL is real: nothing outside the prefix, nothing dangerous
        with pytest.raises(redis.exceptions.NoPermissionError):
            await store.client.set("elsewhere:x", "1")
        with pytest.raises(redis.exceptions.NoPermissionError):
            await store.client.flushall()
    finally:
        await store.close()
    assert acl_redis.password not in caplog.text


async def test_a_command_the_acl_denies_names_the_user(acl_config: RedisConfig) -> None:
    outside = JobStore.from_config(dataclasses.replace(acl_config, prefix="elsewhere:"))
    try:
        with pytest.raises(
            StoreUnavailableError, match=f"Redis denied a command for user '{USER}'"
        ):
            await outside.get_job("j-1")
    finally:
        await outside.close()


@pytest.mark.parametrize(
    ("username", "password", "named"),
    [
        (USER, "not-the-password-4Kp9", USER),
        ("intruder", None, "intruder"),  # None: the right password, for the wrong user
        (None, None, "default"),  # no credentials at all
    ],
    ids=["wrong-password", "wrong-user", "no-credentials"],
)
async def test_refused_credentials_name_the_user_and_never_the_password(
    acl_redis: AclRedis,
    caplog: pytest.LogCaptureFixture,
    username: str | None,
    password: str | None,
    named: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    if username is not None and password is None:
        password = acl_redis.password
    config = RedisConfig(
        url=acl_redis.url(), username=username, password=password, socket_timeout=1.0
    )
    store = JobStore.from_config(config)
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailableError) as err:
            await store.ping()
        with pytest.raises(StoreUnavailableError):
            await store.submit(spec("refused"))
    finally:
        await store.close()
    assert time.monotonic() - started < 30
    message = str(err.value)
    assert f"authentication to Redis failed for user '{named}'" in message
    shown = [message, "".join(traceback.format_exception(err.value)), repr(config), caplog.text]
    secrets_used = [acl_redis.password] + ([password] if password else [])
    for secret in secrets_used:
        assert all(secret not in text for text in shown)


# -------------------------------------------------------- TLS: certificates and a terminating proxy


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate it issued, and a
    second CA that issued neither."""
    d = tmp_path_factory.mktemp("pki")
    ca_pem, ca_key_pem = create_ca("sg test redis CA", days=1)
    other_ca_pem, _ = create_ca("some other CA", days=1)
    server = issue_certificate(
        ca_pem, ca_key_pem, common_name="sg-server", dns_names=[], ip_addresses=["127.0.0.1"],
        server_auth=True, client_auth=False, days=1,
    )  # fmt: skip
    client = issue_certificate(
        ca_pem, ca_key_pem, common_name="sg-client", dns_names=["sg-client"],
        server_auth=False, client_auth=True, days=1,
    )  # fmt: skip
    files = {
        "ca.pem": (ca_pem, 0o644),
        "other-ca.pem": (other_ca_pem, 0o644),
        "server.pem": (server[0], 0o644),
        "server-key.pem": (server[1], 0o600),
        "client.pem": (client[0], 0o644),
        "client-key.pem": (client[1], 0o600),
    }
    for name, (data, mode) in files.items():
        write_atomically(d / name, data, mode=mode)
    return Pki(
        ca=d / "ca.pem", other_ca=d / "other-ca.pem", server_cert=d / "server.pem",
        server_key=d / "server-key.pem", client_cert=d / "client.pem",
        client_key=d / "client-key.pem",
    )  # fmt: skip


class TlsProxy:
    """TLS in front of a plain TCP server: requires a client certificate issued by ``ca``,
    then pipes bytes both ways. Runs its own event loop in a thread, on a port of its own."""

    def __init__(self, backend: tuple[str, int], *, cert: Path, key: Path, ca: Path) -> None:
        self.backend = backend
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.load_verify_locations(ca)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.clients: list[str] = []
        """Common names of the client certificates of accepted connections."""
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tls-proxy", daemon=True
        )
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> None:
        self._thread.start()
        self.port = self._call(self._serve())

    def stop(self) -> None:
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _serve(self) -> int:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self.context, ssl_handshake_timeout=5
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert") or {}
        subject = dict(pair[0] for pair in peer.get("subject", ()))
        self.clients.append(str(subject.get("commonName", "")))
        up_reader, up_writer = await asyncio.open_connection(*self.backend)
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


@pytest.fixture(scope="module")
def plain_redis() -> Iterator[LocalRedis]:
    """A redis-server without TLS or a password, for the proxy to front."""
    with tempfile.TemporaryDirectory(prefix="sg-redis-tls-") as tmp:
        server = LocalRedis(Path(tmp))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def tls_proxy(plain_redis: LocalRedis, pki: Pki) -> Iterator[TlsProxy]:
    assert plain_redis.port is not None
    proxy = TlsProxy(
        (plain_redis.host, plain_redis.port), cert=pki.server_cert, key=pki.server_key, ca=pki.ca
    )
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def tls_config(tls_proxy: TlsProxy, pki: Pki) -> RedisConfig:
    return RedisConfig(
        url=f"rediss://127.0.0.1:{tls_proxy.port}/0", prefix=f"tls{secrets.token_hex(4)}:",
        ssl_ca_certs=str(pki.ca), ssl_certfile=str(pki.client_cert),
        ssl_keyfile=str(pki.client_key), socket_timeout=1.0,
    )  # fmt: skip


@pytest.fixture
async def tls_store(tls_config: RedisConfig) -> AsyncIterator[JobStore]:
    store = JobStore.from_config(tls_config)
    try:
        yield store
    finally:
        await store.close()


async def test_the_store_works_over_rediss_with_a_client_certificate(
    tls_store: JobStore, tls_proxy: TlsProxy
) -> None:
    await tls_store.ping()
    await exercise(tls_store)
    assert "sg-client" in tls_proxy.clients


async def _refused(config: RedisConfig) -> tuple[StoreUnavailableError, float]:
    store = JobStore.from_config(config)
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailableError) as err:
            await store.ping()
    finally:
        await store.close()
    return err.value, time.monotonic() - started


async def test_a_server_certificate_from_another_ca_is_refused(
    tls_config: RedisConfig, pki: Pki
) -> None:
    err, seconds = await _refused(dataclasses.replace(tls_config, ssl_ca_certs=str(pki.other_ca)))
    assert "certificate verify failed" in str(err)
    assert seconds < 20  # retries with back-off, each bounded by socket_timeout; never a hang


async def test_no_client_certificate_is_refused_by_a_server_that_requires_one(
    tls_config: RedisConfig, tls_proxy: TlsProxy
) -> None:
    accepted = len(tls_proxy.clients)
    config = dataclasses.replace(tls_config, ssl_certfile=None, ssl_keyfile=None)
    _, seconds = await _refused(config)
    assert seconds < 20
    assert len(tls_proxy.clients) == accepted  # no connection got through to Redis
