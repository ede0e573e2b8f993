"""The processes of the end-to-end benchmark (``bench.e2e``), as deployed without Ray.

``Cluster`` starts, in a directory of its own:

- a ``redis-server`` (``LocalRedis``: append-only file, ``appendfsync always``);
- one ``python -m agents.fleet`` process serving ``sites`` simulated sites (the sim executor:
  jobs start nothing), each with ``SITE_GPUS`` GPUs; the sites (``agents.fleet.sim_sites`` with
  the same arguments, jurisdictions dealt out from ``JURISDICTIONS``) are registered in the
  store with the fleet's address as their endpoint, CPUs, memory and power cap far beyond what
  the benchmark uses, so capacity never limits placement;
- the tenants ``TENANTS`` (the benchmark's jobs) and ``BACKLOG_TENANT`` (a GPU quota of one:
  see ``bench.e2e``), registered in the store;
- the control plane's roles as plain processes (``python -m orchestrator.roles``): ``api``,
  ``scheduler`` and ``dispatcher-0`` .. ``dispatcher-{k-1}`` (``SG_DISPATCHERS=k``), with the
  API's rate limit out of reach (``SG_RATE_PER_SECOND``, ``SG_RATE_BURST``).

Tracing is off in every process (``OTEL_TRACES_EXPORTER=none``) unless ``tracing`` gives other
``OTEL_*`` variables (the same to the fleet and every role): ``bench.e2e`` measures the cost of
tracing with ``memory`` exporters (see ``orchestrator.tracing.configure_tracing``).

Plaintext by default (``SG_INSECURE=1``, no token keys: every caller is an operator); with
``secure`` TLS everywhere and bearer tokens: a development PKI (``write_dev_pki``), a fleet
certificate naming every site, a token key pair and an operator token for the client.

Start-up waits for each process's ready signal (the fleet's ready file, the roles' "serving on"
and "running" lines) and then for every site to be connected and heard from; a process that
exits or stays silent fails the start with the tail of its log. ``stop()`` (also on any failure
and on Ctrl-C, through the context manager) ends every process the cluster started: SIGTERM,
then SIGKILL after a grace period.

Also here, the instruments: ``EventTail``, which follows the store's events stream; a bare gRPC
server (the health service and nothing else) in a process of its own or in this one, and
``bare_rate``, the reference for one call per job; py-spy profiles of the cluster's processes
(``Profiler``, ``top_functions``); CPU time of a process.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self

import grpc
import redis.asyncio as aredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from agents.fleet import sim_sites
from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.background import cancel_and_wait
from orchestrator.config import RedisConfig, TlsFiles
from orchestrator.processes import stop_process
from orchestrator.security.certs import issue_certificate, site_server_name, write_dev_pki
from orchestrator.security.tls import channel_credentials, server_credentials
from orchestrator.security.tokens import Kind, TokenSigner, write_key_pair
from orchestrator.sitefile import SiteConfig
from orchestrator.states import JobState
from orchestrator.store import JobStore, LocalRedis
from orchestrator.validation import normalize_site, normalize_tenant

__all__ = [
    "BACKLOG_TENANT",
    "JURISDICTIONS",
    "NO_TRACING",
    "PREFIX",
    "REPO",
    "RUNNING",
    "SITE_GPUS",
    "STAGES",
    "SUCCEEDED",
    "TENANTS",
    "BareServer",
    "Cluster",
    "ClusterError",
    "E2EError",
    "EventTail",
    "FunctionTime",
    "Profiler",
    "bare_rate",
    "cpu_seconds",
    "rss_bytes",
    "serve_bare",
    "top_functions",
]

REPO = Path(__file__).resolve().parents[1]
"""The repository root: the working directory of every process started."""
PREFIX = "sg:"
"""Key prefix of the cluster's store."""
JURISDICTIONS = ("NO", "SE", "FI", "DK", "IS", "DE")
"""Jurisdictions dealt out to the simulated sites, in turn."""
SITE_GPUS = 100_000
"""GPUs per simulated site (H100): far more than the benchmark's jobs ever hold at once (the
agent hands out GPU slots lazily, so a large pool costs nothing)."""
_POWER_CAP_MW = 1_000_000.0
_CPUS_PER_SITE = 10_000_000
_MEMORY_MB_PER_SITE = 10**12
TENANTS = (("acme-no", "NO"), ("lab-se", "SE"), ("uni-de", "DE"), ("corp-us", "US"))
"""(tenant, country) of the benchmark's jobs."""
BACKLOG_TENANT = "backlog"
"""The tenant of the pre-filled queue: a quota of one GPU."""
BACKLOG_QUOTA_GPUS = 1
NO_TRACING = {"OTEL_TRACES_EXPORTER": "none"}
"""The processes' tracing settings unless told otherwise: none (no provider, no spans)."""
RATE = "1000000000"
"""SG_RATE_PER_SECOND and SG_RATE_BURST of the API: no call is ever throttled."""
RUNNING = str(JobState.RUNNING.value).encode()
"""The RUNNING state as the events stream holds it."""
SUCCEEDED = str(JobState.SUCCEEDED.value).encode()
"""The SUCCEEDED state as the events stream holds it."""
STAGES = tuple(
    str(s.value).encode() for s in (JobState.PENDING, JobState.SCHEDULED, JobState.DISPATCHED)
)
"""The states before RUNNING whose events ``EventTail`` keeps (``reached``), as the stream
holds them."""
_READ_COUNT = 10_000
_IDLE_SECONDS = 0.005
_STALL_SECONDS = 60.0
_READY_TIMEOUT = 60.0
_CONNECT_TIMEOUT = 60.0
_STOP_GRACE = 5.0
_TAIL_LINES = 30


class ClusterError(RuntimeError):
    """A process did not start (or the cluster did not become ready); the message has its log."""


class E2EError(RuntimeError):
    """A measurement's jobs did not all end SUCCEEDED exactly once (or could not be followed)."""


def _tail(path: Path, lines: int = _TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class _Proc:
    """A process of the cluster, logging stdout and stderr to one file."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=REPO,
                start_new_session=True,  # a Ctrl-C at the terminal is ours to handle
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, *, line: str | None = None, ready_file: Path | None = None) -> str:
        """Until ``line`` appears in the log (returns the rest of that line) or ``ready_file``
        exists (returns its content); ``ClusterError`` with the log's tail if the process
        exits first or ``_READY_TIMEOUT`` passes."""
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            if ready_file is not None and ready_file.exists():
                return ready_file.read_text().strip()
            if line is not None:
                text = self.log.read_text(errors="replace")
                at = text.find(line)
                if at >= 0 and "\n" in text[at:]:
                    return text[at + len(line) :].split("\n", 1)[0].strip()
            if not self.alive():
                raise ClusterError(
                    f"{self.name} exited ({self.popen.returncode}) before it was ready; "
                    f"its log ({self.log}) ends:\n{_tail(self.log)}"
                )
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{self.name} was not ready after {_READY_TIMEOUT:g} s; its log ({self.log}) "
                    f"ends:\n{_tail(self.log)}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period (no-op once it has ended)."""
        stop_process(self.popen, timeout=_STOP_GRACE)


@dataclass(frozen=True)
class _Security:
    """Files and token of a ``secure`` cluster."""

    certs: Path
    fleet_cert: Path
    fleet_key: Path
    verify_key: Path
    signing_key: Path
    token: str


class Cluster:
    """Redis, a simulated fleet and the control plane's roles (see the module docstring). Use as
    a context manager, or ``start()`` and ``stop()``: ``stop`` leaves nothing running."""

    def __init__(
        self,
        base_dir: Path,
        *,
        sites: int = 8,
        dispatchers: int = 2,
        secure: bool = False,
        tracing: Mapping[str, str] | None = None,
    ) -> None:
        if sites < 1 or dispatchers < 1:
            raise ValueError("sites and dispatchers must be at least 1")
        self.base_dir = Path(base_dir)
        self.site_count = sites
        self.dispatchers = dispatchers
        self.secure = secure
        self.tracing = dict(tracing) if tracing is not None else dict(NO_TRACING)
        """The ``OTEL_*`` (and ``SG_TRACES_MEMORY_REPORT``) variables of every process."""
        self.redis: LocalRedis | None = None
        self.procs: dict[str, _Proc] = {}
        self.api_address = ""
        self.fleet_address = ""
        self.security: _Security | None = None
        self.logs = self.base_dir / "logs"

    # -- facts ----------------------------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        if self.redis is None:
            raise RuntimeError("the cluster is not started")
        return self.redis.url

    @property
    def redis_config(self) -> RedisConfig:
        return RedisConfig(url=self.redis_url, prefix=PREFIX)

    @property
    def sites(self) -> list[SiteConfig]:
        """The fleet's sites, as ``python -m agents.fleet`` makes them."""
        return sim_sites(self.site_count, jurisdictions=JURISDICTIONS, gpus=SITE_GPUS)

    @property
    def client_tls(self) -> TlsFiles | None:
        """What an API client trusts (None: plaintext)."""
        return None if self.security is None else TlsFiles(ca=self.security.certs / "ca.pem")

    @property
    def token(self) -> str | None:
        """An operator token for the API (None: the API authenticates nobody)."""
        return None if self.security is None else self.security.token

    @property
    def api_tls(self) -> TlsFiles | None:
        """The API server's certificate (for a bare server of the same transport)."""
        return None if self.security is None else TlsFiles.in_dir(self.security.certs, "api")

    def pids(self) -> dict[str, int]:
        """Process id of every running process, by name (``redis`` included)."""
        out = {name: p.pid for name, p in self.procs.items() if p.alive()}
        if self.redis is not None and self.redis.process is not None:
            out["redis"] = self.redis.process.pid
        return out

    def tails(self) -> str:
        """The end of every process's log."""
        return "\n".join(
            f"----- {name} ({p.log}) -----\n{_tail(p.log, 15)}" for name, p in self.procs.items()
        )

    # -- life cycle -----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Start everything and return once every site is connected (``ClusterError`` if not)."""
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
            if self.secure:
                self.security = self._write_security()
            self.redis = LocalRedis(self.base_dir / "redis")
            self.redis.start()
            self._start_fleet()
            asyncio.run(self._register())
            env = self._role_env()
            api = self._spawn("api", ["-m", "orchestrator.roles", "api"], env)
            others = [("scheduler", ["scheduler"])] + [
                (f"dispatcher-{i}", ["dispatcher", "--index", str(i)])
                for i in range(self.dispatchers)
            ]
            started = [
                (name, self._spawn(name, ["-m", "orchestrator.roles", *args], env))
                for name, args in others
            ]
            self.api_address = api.wait_ready(line="serving on ")
            for name, proc in started:
                proc.wait_ready(line=f"{name.split('-')[0]} running")
            asyncio.run(self._wait_connected())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process started (roles first, then the fleet, then Redis)."""
        for name in sorted(self.procs, key=lambda n: n == "fleet"):
            self.procs[name].stop()
        if self.redis is not None:
            self.redis.stop()

    def _spawn(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> _Proc:
        proc = _Proc(name, [sys.executable, *args], env, self.logs / f"{name}.log")
        self.procs[name] = proc
        return proc

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SG_", "OTEL_"))}
        env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
        env.update(self.tracing)
        return env

    def _role_env(self) -> dict[str, str]:
        env = self._base_env()
        env.update(
            SG_REDIS_URL=self.redis_url,
            SG_REDIS_PREFIX=PREFIX,
            SG_API_LISTEN="127.0.0.1:0",
            SG_DISPATCHERS=str(self.dispatchers),
            SG_RATE_PER_SECOND=RATE,
            SG_RATE_BURST=RATE,
        )
        sec = self.security
        if sec is None:
            env["SG_INSECURE"] = "1"
        else:
            env.update(
                SG_TLS_DIR=str(sec.certs),
                SG_TOKEN_VERIFY_KEYS=str(sec.verify_key),
                SG_TOKEN_SIGNING_KEY=str(sec.signing_key),
            )
        return env

    def _write_security(self) -> _Security:
        certs = self.base_dir / "certs"
        write_dev_pki(certs)
        ca, ca_key = (certs / "ca.pem").read_bytes(), (certs / "ca-key.pem").read_bytes()
        cert, key = issue_certificate(
            ca,
            ca_key,
            common_name="sim-fleet",
            dns_names=[site_server_name(s.id) for s in self.sites],
            days=2,
        )
        fleet_cert, fleet_key = certs / "fleet.pem", certs / "fleet-key.pem"
        fleet_cert.write_bytes(cert)
        fleet_key.write_bytes(key)
        fleet_key.chmod(0o600)
        signing, verify = write_key_pair(self.base_dir / "auth")
        token, _ = TokenSigner.from_file(signing).issue(
            Kind.OPERATOR, "bench-e2e", ttl_seconds=2 * 24 * 3600
        )
        return _Security(certs, fleet_cert, fleet_key, verify, signing, token)

    def _start_fleet(self) -> None:
        ready = self.base_dir / "fleet.ready"
        args = [
            "-m", "agents.fleet",
            "--sites", str(self.site_count),
            "--jurisdictions", ",".join(JURISDICTIONS),
            "--gpus", str(SITE_GPUS),
            "--state-dir", str(self.base_dir / "fleet"),
            "--ready-file", str(ready),
        ]  # fmt: skip
        sec = self.security
        if sec is None:
            args.append("--insecure")
        else:
            args += ["--tls-ca", str(sec.certs / "ca.pem"), "--tls-cert", str(sec.fleet_cert)]
            args += ["--tls-key", str(sec.fleet_key)]
        proc = self._spawn("fleet", args, self._base_env())
        self.fleet_address = proc.wait_ready(ready_file=ready)

    async def _register(self) -> None:
        store = JobStore.from_config(self.redis_config)
        try:
            for site in self.sites:
                reg = site.to_proto()
                reg.endpoint = self.fleet_address
                reg.power_cap_mw = _POWER_CAP_MW
                reg.cpus = _CPUS_PER_SITE
                reg.memory_mb = _MEMORY_MB_PER_SITE
                await store.register_site(normalize_site(reg))
            for tenant, country in TENANTS:
                await store.put_tenant(
                    normalize_tenant(types_pb2.Tenant(id=tenant, country=country))
                )
            backlog = types_pb2.Tenant(
                id=BACKLOG_TENANT, country="NO", has_quota_gpus=True, quota_gpus=BACKLOG_QUOTA_GPUS
            )
            await store.put_tenant(normalize_tenant(backlog))
        finally:
            await store.close()

    async def _wait_connected(self) -> None:
        """Until every site is connected and was heard from in the last two seconds."""
        store = JobStore.from_config(self.redis_config)
        deadline = time.monotonic() + _CONNECT_TIMEOUT
        try:
            while True:
                now = time.time()
                records = await store.site_records()
                waiting = sorted(
                    r.site.id
                    for r in records
                    if not r.connected_by or r.last_heartbeat is None or now - r.last_heartbeat > 2
                )
                if len(records) == self.site_count and not waiting:
                    return
                for name, proc in self.procs.items():
                    if not proc.alive():
                        raise ClusterError(
                            f"{name} exited ({proc.popen.returncode}) while sites connected:\n"
                            + _tail(proc.log)
                        )
                if time.monotonic() > deadline:
                    shown = ", ".join(waiting[:5]) + (", ..." if len(waiting) > 5 else "")
                    raise ClusterError(
                        f"{len(waiting)} of {self.site_count} sites not connected after "
                        f"{_CONNECT_TIMEOUT:g} s ({shown}):\n{self.tails()}"
                    )
                await asyncio.sleep(0.1)
        finally:
            await store.close()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far (0 if it is gone)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0.0
    fields = data[data.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (0 if it is gone)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


# -- a bare gRPC server: the reference for one call per job -------------------------------------


async def _bare_server(tls: TlsFiles | None) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port(
            "127.0.0.1:0", server_credentials(tls, require_client_auth=False)
        )
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, f"127.0.0.1:{port}"


def serve_bare(cert: str = "", key: str = "", ca: str = "") -> None:
    """Body of the bare server's own process: serve the health service, print the address,
    stop when stdin closes. With ``cert``, ``key`` and ``ca``: TLS."""
    tls = TlsFiles(ca=Path(ca), cert=Path(cert), key=Path(key)) if cert else None

    async def serve() -> None:
        server, address = await _bare_server(tls)
        print(address, flush=True)
        await asyncio.to_thread(sys.stdin.read)
        await server.stop(None)

    asyncio.run(serve())


_BARE_CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); import bench._cluster as c; "
    "c.serve_bare(*sys.argv[2:])"
)


class BareServer:
    """A bare gRPC server (the health service only, so a call is the least work a unary call
    can be), in a process of its own (``own_process``) or on this process's event loop, for as
    long as the ``async with``; TLS with ``tls``."""

    def __init__(self, *, own_process: bool, tls: TlsFiles | None = None) -> None:
        self.own_process = own_process
        self.tls = tls
        self.address = ""
        self._server: grpc.aio.Server | None = None
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def __aenter__(self) -> Self:
        if not self.own_process:
            self._server, self.address = await _bare_server(self.tls)
            return self
        argv = ["-c", _BARE_CHILD, str(REPO)]
        if self.tls is not None:
            argv += [str(self.tls.cert), str(self.tls.key), str(self.tls.ca)]
        self._process = proc = await asyncio.create_subprocess_exec(
            sys.executable, *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), _READY_TIMEOUT)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        if not line.strip():
            await self.__aexit__(None, None, None)
            raise ClusterError(f"the bare gRPC server exited ({proc.returncode}) before serving")
        self.address = line.decode().strip()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(None)
        proc, self._process = self._process, None
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), _STOP_GRACE)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def bare_rate(address: str, *, calls: int, concurrency: int, tls: TlsFiles | None) -> float:
    """Calls/s of ``Health.Check`` through a bare stub, ``concurrency`` in flight."""
    if tls is None:
        channel = grpc.aio.insecure_channel(address)
    else:
        channel = grpc.aio.secure_channel(address, channel_credentials(TlsFiles(ca=tls.ca)))
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        await stub.Check(request)
        todo = iter(range(calls))

        async def worker() -> None:
            for _ in todo:
                await stub.Check(request)

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
        return calls / (time.perf_counter() - started)


# -- following the events stream ----------------------------------------------------------------


def _stream_id(raw: bytes) -> tuple[int, int]:
    ms, _, seq = raw.partition(b"-")
    return int(ms), int(seq or 0)


class EventTail:
    """Reads ``{p}events`` with ``XREAD`` on a connection of its own, from the entry that was last
    when it started, and keeps the RUNNING and SUCCEEDED events: (job id, attempt, time); and,
    for the stages before RUNNING (``STAGES``), each entry's job ids and time as it came
    (``reached``; split per job only when asked, after the measurement: ``first_reached``).

    Replies are read raw (no per-entry dicts). Each read (``XREAD`` without blocking, a few ms
    apart when nothing is new) goes in one ``MULTI`` with the stream's oldest entry, which must
    not be past the reader's cursor: a reader that fell behind the stream's cap would miss
    events, and that is an error (``E2EError`` from ``wait_succeeded``), not a silent
    undercount. Use as ``async with``.
    """

    def __init__(self, url: str, key: str) -> None:
        self._pool = aredis.ConnectionPool.from_url(url)
        self._key = key
        self.cursor = b"0-0"
        self.running: list[tuple[bytes, bytes, bytes]] = []
        self.succeeded: list[tuple[bytes, bytes, bytes]] = []
        self.states: Counter[bytes] = Counter()
        self.reached: dict[bytes, list[tuple[bytes, bytes]]] = {state: [] for state in STAGES}
        """State -> (the entry's job ids, separated by spaces; its time), in stream order."""
        self.read = 0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventTail:
        conn = self._pool.make_connection()  # type: ignore[no-untyped-call]
        await conn.connect()
        await conn.send_command("XREVRANGE", self._key, "+", "-", "COUNT", 1)
        last = await conn.read_response()
        if last:
            self.cursor = bytes(last[0][0])
        self._task = asyncio.create_task(self._run(conn))
        return self

    async def __aexit__(self, *exc: object) -> None:
        # A flag stops the reader within one read; cancelling alone could be lost (on Python
        # 3.11 the asyncio.wait_for inside redis-py's send can swallow it: see cancel_and_wait).
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            await asyncio.wait({task}, timeout=5)
            await cancel_and_wait(task)  # its failure was wait_succeeded's to report
        await self._pool.disconnect()

    async def _run(self, conn: Any) -> None:
        key = self._key
        try:
            while not self._stopping:
                # the oldest entry and what follows the cursor, in one atomic step
                await conn.send_packed_command(
                    conn.pack_commands(
                        [
                            ("MULTI",),
                            ("XRANGE", key, "-", "+", "COUNT", 1),
                            ("XREAD", "COUNT", _READ_COUNT, "STREAMS", key, self.cursor),
                            ("EXEC",),
                        ]
                    )
                )
                for _ in range(3):  # OK, QUEUED, QUEUED
                    await conn.read_response()
                first, reply = await conn.read_response()
                # The cursor is the last entry read (or the last one when the reader started):
                # if it is gone, the stream was trimmed past it and entries after it may be
                # gone too. (0-0, from a stream that was empty at the start, precedes every
                # entry without any having been trimmed.)
                if (
                    first
                    and self.cursor != b"0-0"
                    and _stream_id(first[0][0]) > _stream_id(self.cursor)
                ):
                    raise E2EError(
                        f"the events stream was trimmed past this reader ({first[0][0]!r} > "
                        f"{self.cursor!r}): it fell behind and missed events"
                    )
                if isinstance(reply, dict):  # RESP3: a map of stream -> entries
                    reply = list(reply.items())
                if reply:
                    self._take(reply[0][1])
                else:
                    await asyncio.sleep(_IDLE_SECONDS)
        finally:
            await conn.disconnect()

    def _take(self, entries: list[Any]) -> None:
        running, succeeded, states = self.running, self.succeeded, self.states
        reached = self.reached
        for _, fields in entries:
            # flush_events() in orchestrator/store/lua/_lib.lua: job, state, attempt, site, msg, t
            if len(fields) >= 12 and fields[0] == b"job" and fields[10] == b"t":
                job, state, attempt, t = fields[1], fields[3], fields[5], fields[11]
            else:
                f = dict(zip(fields[::2], fields[1::2], strict=False))
                job, state = f.get(b"job", b""), f.get(b"state", b"")
                attempt, t = f.get(b"attempt", b""), f.get(b"t", b"")
            # an entry holds the events of one state for many jobs: ids and attempts by spaces
            jobs = job.split(b" ")
            states[state] += len(jobs)
            if state == RUNNING:
                running.extend(zip(jobs, attempt.split(b" "), itertools.repeat(t)))
            elif state == SUCCEEDED:
                succeeded.extend(zip(jobs, attempt.split(b" "), itertools.repeat(t)))
            elif state in reached:
                reached[state].append((job, t))
        self.read += len(entries)
        self.cursor = bytes(entries[-1][0])

    def first_reached(self, state: bytes) -> dict[str, float]:
        """Job id -> the time of its first event of ``state`` (one of ``STAGES``) read so far."""
        first: dict[str, float] = {}
        for jobs, t in self.reached[state]:
            when = float(t)
            for job in jobs.decode().split(" "):
                first.setdefault(job, when)
        return first

    async def wait_succeeded(self, n: int, *, stall: float = _STALL_SECONDS) -> None:
        """Until ``n`` SUCCEEDED events were read; ``E2EError`` if no event comes for ``stall``
        seconds (or the reader failed)."""
        seen, since = -1, time.monotonic()
        while len(self.succeeded) < n:
            task = self._task
            if task is None or task.done():
                if task is not None and task.exception() is not None:
                    raise E2EError(f"reading events failed: {task.exception()!r}")
                raise E2EError("the events reader stopped")
            if self.read != seen:
                seen, since = self.read, time.monotonic()
            elif time.monotonic() - since > stall:
                raise E2EError(
                    f"no job event for {stall:g} s with {len(self.succeeded)} of {n} jobs "
                    f"SUCCEEDED (events by state so far: {_states(self.states)})"
                )
            await asyncio.sleep(0.02)


def _states(counts: Counter[bytes]) -> str:
    out = []
    for raw, n in sorted(counts.items()):
        try:
            name = JobState(int(raw)).name
        except ValueError:
            name = raw.decode(errors="replace")
        out.append(f"{name} {n}")
    return ", ".join(out) or "none"


# -- profiles -----------------------------------------------------------------------------------


def py_spy() -> str:
    """The py-spy executable (beside this Python, else on PATH)."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise ClusterError(
            f"py-spy is not installed: {sys.executable} -m pip install py-spy (it needs the "
            "right to trace other processes: root, or CAP_SYS_PTRACE)"
        )
    return found


@dataclass(frozen=True, slots=True)
class FunctionTime:
    """A function's own time in a profile: samples whose innermost frame was it."""

    function: str
    """``name (file)``, as py-spy names the frame, without the line."""
    samples: int
    share: float
    """Of the profile's samples (samples are taken only while the process was not idle)."""


_LINE = re.compile(r":\d+\)$")


def top_functions(collapsed: str, n: int = 10) -> tuple[int, list[FunctionTime]]:
    """Total samples and the ``n`` functions with the most own time, from py-spy's ``raw``
    (collapsed stacks: ``frame;frame;... count`` per line) output."""
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        own[_LINE.sub(")", leaf)] += int(count)
        total += int(count)
    return total, [FunctionTime(f, c, c / total) for f, c in own.most_common(n)] if total else []


class Profiler:
    """``py-spy record --format raw`` of several processes at once, from ``start`` to ``stop``
    (SIGINT: py-spy then writes what it sampled). Files: ``<dir>/<name>.txt``, collapsed
    stacks that flamegraph.pl, inferno and speedscope read."""

    RATE = 100
    """Samples per second."""

    def __init__(self, out_dir: Path, pids: Mapping[str, int]) -> None:
        self.out_dir = Path(out_dir)
        self.pids = dict(pids)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[BinaryIO] = []
        self.started = 0.0
        self.seconds = 0.0

    def path(self, name: str) -> Path:
        return self.out_dir / f"{name}.txt"

    def start(self) -> None:
        exe = py_spy()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            argv = [exe, "record", "--format", "raw", "--rate", str(self.RATE)]
            argv += ["--pid", str(pid), "--output", str(self.path(name))]
            out = open(self.out_dir / f"{name}.py-spy.log", "wb")  # noqa: SIM115 - closed in stop
            self._logs.append(out)
            self._procs[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=out,
                start_new_session=True,
            )
        time.sleep(0.5)  # let py-spy attach
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                self.stop()
                log = self.out_dir / f"{name}.py-spy.log"
                raise ClusterError(f"py-spy could not profile {name}:\n{_tail(log)}")
        self.started = time.monotonic()

    def stop(self) -> None:
        self.seconds = time.monotonic() - self.started if self.started else 0.0
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self._procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def results(self, n: int = 10) -> Iterator[tuple[str, int, list[FunctionTime]]]:
        """(name, samples, top ``n`` functions by own time) of each profile written."""
        for name in self.pids:
            path = self.path(name)
            if path.exists():
                yield (name, *top_functions(path.read_text(errors="replace"), n))
