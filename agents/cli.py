"""``sg-agent``: run the agent of one site. The only module of the agent that reads the environment.

Transport security is chosen explicitly: ``--tls-ca``, ``--tls-cert`` and ``--tls-key`` (mutual
TLS; only the control plane may call), or ``--insecure`` (plaintext, unauthenticated; logged as
a warning). Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 1 if the agent could not start
(port taken, unwritable state directory), 2 for bad arguments, a bad site file or bad
certificate files.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from agents.config import AGENT_VERSION, AgentConfig
from agents.executors.base import Executor
from agents.executors.local import LocalExecutor
from agents.executors.sim import SimExecutor
from agents.server import AgentServer
from orchestrator.config import TlsFiles
from orchestrator.errors import InvalidSpecError, SiteNotFoundError
from orchestrator.gc_tuning import tune_garbage_collector
from orchestrator.tracing import configure_tracing

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "add_log_level",
    "add_ready_file",
    "add_transport_security",
    "build_parser",
    "main",
    "parse_serving_args",
    "serve_until_signalled",
    "transport_security",
    "write_ready_file",
]

log = logging.getLogger(__name__)

EXIT_OK = 0
"""Stopped cleanly (SIGTERM or SIGINT)."""
EXIT_FAILED = 1
"""Could not start (address in use, unwritable state directory, ...)."""
EXIT_USAGE = 2
"""Bad arguments, site file or certificate files."""


def build_parser() -> argparse.ArgumentParser:
    """The ``sg-agent`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="sg-agent",
        description=(
            "Run the agent of one site: it serves the control plane's control stream, runs the "
            "jobs it is sent as local process groups (or, with --executor sim, only simulates "
            "them), and reports their status. Stops on SIGTERM or SIGINT, stopping its jobs "
            "first."
        ),
        epilog=(
            "example:\n"
            "  sgctl certs issue --site narvik      # writes .sg/certs/sites/narvik{,-key}.pem\n"
            "  sg-agent --sites examples/sites.yaml --site narvik \\\n"
            "           --listen 0.0.0.0:7401 --state-dir .sg/agents/narvik \\\n"
            "           --tls-ca .sg/certs/ca.pem --tls-cert .sg/certs/sites/narvik.pem \\\n"
            "           --tls-key .sg/certs/sites/narvik-key.pem\n\n"
            "Transport security: give --tls-ca, --tls-cert and --tls-key (mutual TLS: the\n"
            "certificate must name <site>.site.sovereign-grid, and only a client with the\n"
            "control plane's certificate from that CA may call), or --insecure (plaintext\n"
            "and unauthenticated: anyone who reaches the port can run jobs; for tests and\n"
            "loopback only). One of the two is required. Replaced certificate files are\n"
            "used for new connections without a restart.\n\n"
            "Tracing follows the standard OTEL_* variables (OTEL_TRACES_EXPORTER,\n"
            "OTEL_EXPORTER_OTLP_ENDPOINT, ...). Exit codes: 0 stopped cleanly, 1 could not\n"
            "start (address in use, unwritable state directory), 2 bad arguments, site file\n"
            "or certificate files."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sites", required=True, type=Path, metavar="PATH", help="site file (YAML) to read"
    )
    parser.add_argument(
        "--site", required=True, metavar="ID", help="id of the site this agent serves"
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="address to serve gRPC on; port 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="journal and job output directory (default: .sg/agents/<site>)",
    )
    add_ready_file(parser)
    parser.add_argument(
        "--executor",
        choices=["local", "sim"],
        default="local",
        help=(
            "how jobs run: local process groups, or sim, which starts nothing: a job takes "
            "SG_SIM_SECONDS from its env (else N for `sleep N`, else 0) and exits with "
            "SG_SIM_EXIT (else 0); for benchmarks (default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--kill-grace",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="seconds between SIGTERM and SIGKILL when stopping a job (default: %(default)s)",
    )
    add_transport_security(
        parser,
        cert_help="this agent's certificate, naming <site>.site.sovereign-grid (sgctl certs issue)",
    )
    add_log_level(parser, default="info")
    parser.add_argument("--version", action="version", version=f"sg-agent {AGENT_VERSION}")
    return parser


def add_ready_file(parser: argparse.ArgumentParser) -> None:
    """Add ``--ready-file`` (for ``serve_until_signalled``)."""
    parser.add_argument(
        "--ready-file",
        type=Path,
        metavar="PATH",
        help="once serving, write the bound host:port here (atomically)",
    )


def add_log_level(parser: argparse.ArgumentParser, *, default: str, note: str = "") -> None:
    """Add ``--log-level`` (read back by ``parse_serving_args``); ``note`` is added to its help
    after the default."""
    parser.add_argument(
        "--log-level",
        default=default,
        choices=["debug", "info", "warning", "error"],
        help=f"log level (default: %(default)s{note})",
    )


def add_transport_security(parser: argparse.ArgumentParser, *, cert_help: str) -> None:
    """Add ``--tls-ca``, ``--tls-cert``, ``--tls-key`` and ``--insecure`` (read them back with
    ``transport_security``)."""
    security = parser.add_argument_group(
        "transport security", "mutual TLS (all three files) or --insecure; one is required"
    )
    security.add_argument(
        "--tls-ca", type=Path, metavar="PATH", help="CA the control plane's certificate chains to"
    )
    security.add_argument("--tls-cert", type=Path, metavar="PATH", help=cert_help)
    security.add_argument("--tls-key", type=Path, metavar="PATH", help="its private key")
    security.add_argument(
        "--insecure",
        action="store_true",
        help="serve plaintext without authentication (tests and loopback only)",
    )


def parse_serving_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, TlsFiles | None]:
    """Parse the arguments of a command built with ``add_transport_security`` and
    ``add_log_level``, read its transport security (exits 2 as ``transport_security`` does) and
    configure logging at the chosen level: what ``sg-agent`` and ``python -m agents.fleet`` do
    first."""
    args = parser.parse_args(argv)
    tls = transport_security(parser, args)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return args, tls


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sg-agent`` and ``python -m agents``; returns the exit code."""
    parser = build_parser()
    args, tls = parse_serving_args(parser, argv)
    if tls is None:
        log.warning(
            "--insecure: the control stream is plaintext and unauthenticated; anyone who can "
            "reach %s can run jobs on this site",
            args.listen,
        )
    try:
        config = AgentConfig.from_site_file(
            args.sites,
            args.site,
            state_dir=args.state_dir or Path(".sg") / "agents" / args.site,
            listen=args.listen,
            kill_grace_seconds=args.kill_grace,
            tls=tls,
        )
    except (InvalidSpecError, SiteNotFoundError) as exc:
        print(f"sg-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_tracing("sg-agent", os.environ)
    tune_garbage_collector()
    executor: Executor = (
        SimExecutor() if args.executor == "sim" else LocalExecutor(base_env=os.environ)
    )
    try:
        return asyncio.run(_serve(config, executor, ready_file=args.ready_file))
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return EXIT_FAILED


def transport_security(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> TlsFiles | None:
    """The TLS files of ``add_transport_security``'s options, None for ``--insecure``; exits 2
    (``parser.error``) unless exactly one of the two was chosen."""
    given = {
        flag: value
        for flag, value in (
            ("--tls-ca", args.tls_ca),
            ("--tls-cert", args.tls_cert),
            ("--tls-key", args.tls_key),
        )
        if value is not None
    }
    if args.insecure:
        if given:
            parser.error(f"--insecure cannot be combined with {', '.join(given)}")
        return None
    if len(given) != 3:
        missing = [f for f in ("--tls-ca", "--tls-cert", "--tls-key") if f not in given]
        if given:
            parser.error(
                f"mutual TLS needs --tls-ca, --tls-cert and --tls-key; missing {', '.join(missing)}"
            )
        parser.error(
            "choose transport security: --tls-ca, --tls-cert and --tls-key (mutual TLS), "
            "or --insecure (plaintext, unauthenticated)"
        )
    return TlsFiles(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)


async def _serve(config: AgentConfig, executor: Executor, *, ready_file: Path | None) -> int:
    server = AgentServer(config, executor=executor)

    def ready(address: str) -> None:
        log.info(
            "sg-agent for site %s ready on %s (%s executor)",
            config.site.id, address, type(executor).__name__,
        )  # fmt: skip

    async def stop() -> None:
        log.info("stopping: terminating running jobs")
        await server.stop(kill_jobs=True)

    return await serve_until_signalled(
        prog="sg-agent",
        what="the agent",
        start=server.start,
        stop=stop,
        listen=config.listen,
        ready_file=ready_file,
        ready=ready,
    )


async def serve_until_signalled(
    *,
    prog: str,
    what: str,
    start: Callable[[], Awaitable[str]],
    stop: Callable[[], Awaitable[None]],
    listen: str,
    ready_file: Path | None,
    ready: Callable[[str], None],
) -> int:
    """Run a server until SIGTERM or SIGINT; returns the exit code.

    ``start()`` serves and returns the bound ``host:port``: ``InvalidSpecError`` (certificate
    files) is reported as ``<prog>: <error>`` and exit code 2, a failure to start (``OSError``,
    ``RuntimeError``, ``sqlite3.Error``) as ``<prog>: cannot start <what> on <listen>: <error>``
    and 1. Once serving, the address is written to ``ready_file`` (if given), ``ready(address)``
    is called, and the first signal makes it ``stop()`` (also if anything before fails) and
    return 0.
    """
    try:
        address = await start()
    except InvalidSpecError as exc:  # certificate files
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, RuntimeError, sqlite3.Error) as exc:
        print(f"{prog}: cannot start {what} on {listen}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        if ready_file is not None:
            write_ready_file(ready_file, address)
        ready(address)
        await stopping.wait()
    finally:
        await stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return EXIT_OK


def write_ready_file(path: Path, address: str) -> None:
    """Write ``address`` and a newline to ``path`` in one step (a reader never sees half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(address + "\n", encoding="utf-8")
    os.replace(tmp, path)
