"""Many simulated sites in one process, behind one gRPC server: the benchmarks' fleet.

``SimFleet`` runs one ``AgentRuntime`` and one ``AgentService`` per site, every runtime with the
same ``SimExecutor`` (attempts start nothing; see ``agents.executors.sim``), all served on one
port. The control plane registers every site of the fleet with the fleet's address as its
endpoint; each site's control stream is then a ``Connect`` call of its own to that address:

- ``Connect`` reads the dispatcher's hello and hands the stream (hello first) to the service of
  the site it names, which runs it exactly as a site's own agent does (see ``agents.server``).
  A site the fleet does not have is answered NOT_FOUND; a first message that is not a hello,
  INVALID_ARGUMENT.
- ``ReadLogs`` names no site: it is answered by the site that holds the attempt (NOT_FOUND if
  none does). Simulated attempts write no output, so their logs read empty.

A site costs its runtime's bookkeeping, its journal and, while connected, its stream's three
tasks and its heartbeats; no thread or process. By default each journal is kept in memory
(``journal="memory"``: ``agents.journal.MemoryJournal``, a few dictionary operations per change of
an attempt): a file per site would cost 3 file descriptors, more memory and an SQL transaction per
change, for records that are of no use after a restart anyway (no simulated attempt survives its
process). ``journal="file"`` keeps each in its state directory, as a site's own agent does. Each
site has a state directory under ``state_root`` either way; simulated sites write no lease file
(``SimExecutor.needs_lease_file``).

With ``tls`` the fleet serves mutual TLS as an agent does: its certificate must name
``site_server_name(id)`` of every site (else ``start`` raises ``InvalidSpecError`` naming the
missing ones), and only the control plane's client certificate may call. Replaced certificate
files are served to new connections without a restart (the names of a replacement are not
checked again). One certificate naming 1,000 sites is about 30 KB (DER); TLS stacks commonly
refuse certificate chains past 100 KB, so for much larger fleets run several.

``python -m agents.fleet --sites N ...`` generates N sites (``sim_sites``), serves them and
prints a one-line summary; run ``python -m agents.fleet --help`` for the options.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.trace import Tracer

from agents.cli import (
    EXIT_FAILED,
    EXIT_USAGE,
    add_log_level,
    add_ready_file,
    add_transport_security,
    parse_serving_args,
    serve_until_signalled,
)
from agents.config import AgentConfig
from agents.executors.sim import SimExecutor
from agents.journal import MemoryJournal
from agents.runtime import AgentRuntime, AttemptNotFoundError
from agents.server import SERVICE_NAME, AgentService
from orchestrator._pb.agent.v1 import agent_pb2, agent_pb2_grpc
from orchestrator._pb.orchestrator.v1 import service_pb2
from orchestrator.config import TlsFiles
from orchestrator.errors import InvalidSpecError
from orchestrator.gc_tuning import tune_garbage_collector
from orchestrator.security.certs import CONTROL_PLANE_NAME, certificate_dns_names, site_server_name
from orchestrator.security.tls import peer_dns_names, server_credentials
from orchestrator.sitefile import SiteConfig
from orchestrator.tracing import configure_tracing

__all__ = ["JournalKind", "SimFleet", "main", "sim_sites"]

log = logging.getLogger(__name__)

JournalKind = Literal["memory", "file"]
"""Where each simulated site keeps its journal: in memory (``MemoryJournal``), or in a SQLite
file in its state directory as a site's own agent does."""

DEFAULT_JURISDICTIONS = ("NO", "SE", "FI", "DK", "IS")
"""Jurisdictions ``sim_sites`` deals out, in turn, unless told others."""

_MAX_CONNECTION_AGE_SECONDS = 24 * 3600.0


def sim_sites(
    count: int,
    *,
    prefix: str = "sim",
    jurisdictions: Sequence[str] = DEFAULT_JURISDICTIONS,
    gpus: int = 8,
    gpu_type: str = "H100",
) -> list[SiteConfig]:
    """``count`` site configs: ids ``<prefix>-0001``, ``<prefix>-0002``, ... (at least four
    digits), jurisdictions dealt out in turn, ``gpus`` GPUs of ``gpu_type`` each.

    The same arguments always give the same sites, so a benchmark can register the sites of a
    fleet it started as a separate process. Raises ``InvalidSpecError`` for a bad prefix or
    jurisdiction.
    """
    if count < 1:
        raise InvalidSpecError("count", f"a fleet needs at least one site, got {count}")
    if not jurisdictions:
        raise InvalidSpecError("jurisdictions", "name at least one")
    width = max(4, len(str(count)))
    return [
        SiteConfig(
            id=f"{prefix}-{n:0{width}d}",
            name=f"Simulated site {n}",
            jurisdiction=jurisdictions[(n - 1) % len(jurisdictions)],
            regions=("sim",),
            owner=f"{prefix}-owner",
            power_cap_mw=max(1.0, gpus * 0.002),
            cpus=max(8, 16 * gpus),
            memory_mb=max(8192, 128 * 1024 * gpus),
            gpus={gpu_type: gpus} if gpus else {},
        )
        for n in range(1, count + 1)
    ]


@dataclass(frozen=True)
class _Site:
    runtime: AgentRuntime
    service: AgentService


class _FleetService(agent_pb2_grpc.AgentServiceServicer):
    """Routes each call to the service of one site (see the module docstring)."""

    def __init__(self, sites: Mapping[str, _Site], *, tls: bool) -> None:
        self._sites = sites
        self._tls = tls

    async def _allow_caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """With TLS, abort the call unless the client certificate is the control plane's (before
        anything is read, so that no one else learns which sites the fleet has)."""
        if not self._tls:
            return
        names = peer_dns_names(context)
        if CONTROL_PLANE_NAME not in names:
            log.warning(
                "refused a call from %s presenting %s: only the control plane may call",
                context.peer(), names or "no certificate name",
            )  # fmt: skip
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "only the control plane may call this fleet"
            )

    async def Connect(
        self,
        request_iterator: AsyncIterator[agent_pb2.ControlMessage],
        context: grpc.aio.ServicerContext[agent_pb2.ControlMessage, agent_pb2.AgentMessage],
    ) -> AsyncIterator[agent_pb2.AgentMessage]:
        """Read the hello, then run the stream as the service of the site it names."""
        await self._allow_caller(context)
        messages = aiter(request_iterator)
        first = await anext(messages, None)
        if first is None:
            return
        if first.WhichOneof("kind") != "hello":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first control message must be hello"
            )
        site_id = first.hello.site_id
        site = self._sites.get(site_id)
        if site is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"site {site_id!r} is not one of the {len(self._sites)} sites of this fleet",
            )
        async for message in site.service.Connect(_Prepended(first, messages), context):
            yield message

    async def ReadLogs(
        self,
        request: agent_pb2.ReadLogsRequest,
        context: grpc.aio.ServicerContext[agent_pb2.ReadLogsRequest, service_pb2.LogChunk],
    ) -> AsyncIterator[service_pb2.LogChunk]:
        """The output of an attempt, from the site that holds it."""
        await self._allow_caller(context)
        site = self._holder(request.job_id, request.attempt)
        if site is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"attempt {request.attempt} of job {request.job_id!r} is not known at any site "
                "of this fleet",
            )
        async for chunk in site.service.ReadLogs(request, context):
            yield chunk

    def _holder(self, job_id: str, attempt: int) -> _Site | None:
        for site in self._sites.values():
            try:
                site.runtime.attempt_output(job_id, attempt)
            except AttemptNotFoundError:
                continue
            return site
        return None


class _Prepended:
    """``first``, then what ``rest`` yields: the stream as the site's service expects it. Past
    the first message each read is ``rest``'s own, with no generator in between."""

    def __init__(
        self, first: agent_pb2.ControlMessage, rest: AsyncIterator[agent_pb2.ControlMessage]
    ) -> None:
        self._first: agent_pb2.ControlMessage | None = first
        self._rest = rest

    def __aiter__(self) -> _Prepended:
        return self

    def __anext__(self) -> Awaitable[agent_pb2.ControlMessage]:
        first, self._first = self._first, None
        if first is None:
            return self._rest.__anext__()
        return _ready(first)


async def _ready(message: agent_pb2.ControlMessage) -> agent_pb2.ControlMessage:
    return message


class SimFleet:
    """Simulated sites served by one gRPC server. ``start()`` before use, ``stop()`` after."""

    def __init__(
        self,
        sites: Sequence[SiteConfig],
        *,
        state_root: Path,
        listen: str = "127.0.0.1:0",
        tls: TlsFiles | None = None,
        heartbeat_interval_seconds: float = 1.0,
        journal: JournalKind = "memory",
        tracer: Tracer | None = None,
    ) -> None:
        """
        ``state_root`` holds one state directory per site (named by its id). ``listen`` is the
        one ``host:port`` every site is served on (port 0: a free one). ``tls``: the fleet's
        certificate (naming every site) and key, and the CA the control plane's certificate
        chains to; None for plaintext. ``heartbeat_interval_seconds`` is each site's heartbeat
        period when the dispatcher's hello asks for none (a dispatcher asks for its
        ``DispatcherOptions.heartbeat_interval_seconds``). Raises ``InvalidSpecError`` for no
        sites, a site id given twice, or a bad option.
        """
        if not sites:
            raise InvalidSpecError("sites", "a fleet needs at least one site")
        twice = sorted(i for i, n in Counter(site.id for site in sites).items() if n > 1)
        if twice:
            raise InvalidSpecError("sites", f"site ids given more than once: {', '.join(twice)}")
        if journal not in ("memory", "file"):
            raise InvalidSpecError("journal", f"{journal!r} is not 'memory' or 'file'")
        configs = [
            AgentConfig(
                site=site,
                state_dir=Path(state_root) / site.id,
                listen=listen,
                heartbeat_interval_seconds=heartbeat_interval_seconds,
                max_connection_age_seconds=_MAX_CONNECTION_AGE_SECONDS,
                tls=tls,
            )
            for site in sites
        ]
        self._listen = listen
        self._tls = tls
        executor = SimExecutor()
        in_memory = MemoryJournal if journal == "memory" else None
        self._sites: dict[str, _Site] = {}
        for config in configs:
            runtime = AgentRuntime(config, executor=executor, tracer=tracer, journal=in_memory)
            self._sites[config.site.id] = _Site(runtime, AgentService(runtime))
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._address: str | None = None

    @property
    def site_ids(self) -> list[str]:
        """Ids of the fleet's sites, in the order given."""
        return list(self._sites)

    @property
    def address(self) -> str:
        """``host:port`` every site is served on; only after ``start()``."""
        if self._address is None:
            raise RuntimeError("SimFleet is not started")
        return self._address

    def runtime(self, site_id: str) -> AgentRuntime:
        """The runtime of one site (``KeyError`` for a site the fleet does not have)."""
        return self._sites[site_id].runtime

    async def start(self) -> str:
        """Open every site's journal, serve, return ``host:port``.

        Raises ``InvalidSpecError`` for bad certificate files (or one that does not name every
        site) and ``RuntimeError``/``OSError`` when the address cannot be bound.
        """
        if self._server is not None:
            return self.address
        credentials = self._credentials()
        opened: list[AgentRuntime] = []
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_connection_age_ms", int(_MAX_CONNECTION_AGE_SECONDS * 1000)),
                ("grpc.max_connection_age_grace_ms", 10_000),
            ]
        )
        try:
            for site in self._sites.values():
                await site.runtime.open()
                opened.append(site.runtime)
            service = _FleetService(self._sites, tls=self._tls is not None)
            agent_pb2_grpc.add_AgentServiceServicer_to_server(service, server)
            self._health = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
            if credentials is None:
                port = server.add_insecure_port(self._listen)
            else:
                port = server.add_secure_port(self._listen, credentials)
            await server.start()
        except BaseException:
            await server.stop(None)
            await asyncio.gather(*(runtime.close(grace_seconds=0.1) for runtime in opened))
            raise
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        self._address = f"{self._listen.rpartition(':')[0]}:{port}"
        log.info(
            "simulated fleet of %d sites serving on %s (%s)",
            len(self._sites), self._address, "plaintext" if credentials is None else "mutual TLS",
        )  # fmt: skip
        return self._address

    def _credentials(self) -> grpc.ServerCredentials | None:
        tls = self._tls
        if tls is None:
            return None
        credentials = server_credentials(tls, require_client_auth=True)  # checks the files
        if tls.cert is None:  # server_credentials refused that already
            raise InvalidSpecError("tls.cert", "the fleet needs its own certificate and key")
        names = set(certificate_dns_names(tls.cert.read_bytes()))
        missing = [site_server_name(s) for s in self._sites if site_server_name(s) not in names]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise InvalidSpecError(
                "tls.cert",
                f"{tls.cert} does not name {len(missing)} of the fleet's {len(self._sites)} "
                f"sites: {shown}",
            )
        return credentials

    async def stop(self, grace: float = 1.0) -> None:
        """End every control stream (UNAVAILABLE), stop serving (open calls get ``grace``
        seconds), and stop every site's attempts and close its journal."""
        server, self._server = self._server, None
        if server is not None:
            await self._health.enter_graceful_shutdown()
            for site in self._sites.values():
                site.service.end_control_stream(
                    grpc.StatusCode.UNAVAILABLE, "the simulated fleet is shutting down"
                )
            await server.stop(grace)
            log.info("simulated fleet stopped serving")
        await asyncio.gather(*(site.runtime.close() for site in self._sites.values()))


# --- python -m agents.fleet ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m agents.fleet`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m agents.fleet",
        description=(
            "Serve many simulated sites from one process on one port, for benchmarks: each "
            "site is a full agent whose jobs start nothing (the sim executor: a job takes "
            "SG_SIM_SECONDS from its env, else N for `sleep N`, else 0). Register every site "
            "with the printed address as its endpoint (agents.fleet.sim_sites with the same "
            "arguments gives the same sites). Stops on SIGTERM or SIGINT."
        ),
    )
    parser.add_argument(
        "--sites", type=int, required=True, metavar="N", help="how many sites to simulate"
    )
    parser.add_argument(
        "--prefix", default="sim", help="site ids are <prefix>-0001, ... (default: %(default)s)"
    )
    parser.add_argument(
        "--jurisdictions",
        default=",".join(DEFAULT_JURISDICTIONS),
        metavar="CODES",
        help="comma-separated jurisdictions dealt out to the sites in turn (default: %(default)s)",
    )
    parser.add_argument(
        "--gpus", type=int, default=8, metavar="N", help="GPUs per site (default: %(default)s)"
    )
    parser.add_argument(
        "--gpu-type", default="H100", metavar="TYPE", help="their type (default: %(default)s)"
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="address to serve every site on; port 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="parent of the sites' state directories (default: a temporary one, removed after)",
    )
    parser.add_argument(
        "--journal",
        choices=["memory", "file"],
        default="memory",
        help="where each site keeps its journal (default: %(default)s)",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="heartbeat period when the dispatcher asks for none (default: %(default)s)",
    )
    add_ready_file(parser)
    add_transport_security(
        parser,
        cert_help="the fleet's certificate, naming <site>.site.sovereign-grid for every site",
    )
    add_log_level(parser, default="warning", note="; info logs every stream and job")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m agents.fleet``; returns the exit code (0 after a clean stop,
    1 if the fleet could not start, 2 for bad arguments or certificate files)."""
    parser = build_parser()
    args, tls = parse_serving_args(parser, argv)
    try:
        sites = sim_sites(
            args.sites,
            prefix=args.prefix,
            jurisdictions=[j.strip() for j in args.jurisdictions.split(",") if j.strip()],
            gpus=args.gpus,
            gpu_type=args.gpu_type,
        )
    except InvalidSpecError as exc:
        print(f"agents.fleet: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _raise_open_files_limit()
    tune_garbage_collector()
    configure_tracing("sg-fleet", os.environ)
    try:
        if args.state_dir is not None:
            return asyncio.run(_serve(args, sites, tls, args.state_dir))
        with tempfile.TemporaryDirectory(prefix="sg-fleet-") as state_dir:
            return asyncio.run(_serve(args, sites, tls, Path(state_dir)))
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return EXIT_FAILED


async def _serve(
    args: argparse.Namespace, sites: list[SiteConfig], tls: TlsFiles | None, state_root: Path
) -> int:
    try:
        fleet = SimFleet(
            sites,
            state_root=state_root,
            listen=args.listen,
            tls=tls,
            heartbeat_interval_seconds=args.heartbeat,
            journal=args.journal,
        )
    except InvalidSpecError as exc:
        print(f"agents.fleet: {exc}", file=sys.stderr)
        return EXIT_USAGE

    def ready(address: str) -> None:
        jurisdictions = sorted({site.jurisdiction for site in sites})
        print(
            f"simulated fleet: {len(sites)} sites {sites[0].id}..{sites[-1].id} "
            f"({', '.join(jurisdictions)}; {args.gpus} {args.gpu_type} each) on {address}, "
            f"{'plaintext' if tls is None else 'mutual TLS'}, journals in {args.journal}, "
            f"pid {os.getpid()}",
            flush=True,
        )

    return await serve_until_signalled(
        prog="agents.fleet",
        what="the fleet",
        start=fleet.start,
        stop=fleet.stop,
        listen=args.listen,
        ready_file=args.ready_file,
        ready=ready,
    )


def _raise_open_files_limit() -> None:
    """Every connected site may hold a connection (a file descriptor) of its own: raise the
    soft limit on open files to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open files limit from %d: %s", soft, exc)


if __name__ == "__main__":
    sys.exit(main())
