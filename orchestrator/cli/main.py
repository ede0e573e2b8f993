"""``sgctl``: the operator CLI. Parse, call the SDK, print; errors are one line and an exit code.

The API address is ``--api``, else ``$SG_API``, else the ``api`` that ``sgctl up`` wrote to
``<state dir>/up.json``, else 127.0.0.1:50051. The connection is TLS: checked against ``--ca``
(``$SG_CA``), else the CA ``sgctl up`` made (when talking to it), else the system's CAs;
``--insecure`` (``SG_INSECURE=1``) is plaintext. The bearer token is read from
``--token-file`` (``$SG_TOKEN_FILE``), else ``$SG_TOKEN``, else the operator token ``sgctl up``
wrote (when talking to it); it is never taken on the command line, where other users of the
machine could read it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Final

import click

from orchestrator.cli import certs, federation, jobs, placement, sites, tokens
from orchestrator.cli.output import DEFAULT_API, Settings, connection_from_state
from orchestrator.config import TlsFiles
from orchestrator.errors import (
    IllegalTransitionError,
    InvalidSpecError,
    NotFoundError,
    OrchestratorError,
    PermissionDeniedError,
    RateLimitedError,
    ServiceUnavailableError,
    StoreUnavailableError,
    UnauthenticatedError,
    WaitTimeoutError,
)
from orchestrator.sdk import is_api_unreachable
from orchestrator.tracing import configure_tracing

__all__ = ["EXIT_CODES", "cli", "exit_code_for", "main"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_FOUND: Final = 3
EXIT_UNAVAILABLE: Final = 4
EXIT_TIMEOUT: Final = 5
EXIT_CONFLICT: Final = 6
EXIT_DENIED: Final = 7
EXIT_INTERRUPTED: Final = 130

#: Domain error -> exit code; the first matching row wins. Anything else exits 1.
EXIT_CODES: Final[tuple[tuple[type[OrchestratorError], int], ...]] = (
    (InvalidSpecError, EXIT_USAGE),
    (NotFoundError, EXIT_NOT_FOUND),
    (StoreUnavailableError, EXIT_UNAVAILABLE),
    (ServiceUnavailableError, EXIT_UNAVAILABLE),
    (WaitTimeoutError, EXIT_TIMEOUT),
    (IllegalTransitionError, EXIT_CONFLICT),
    (UnauthenticatedError, EXIT_DENIED),
    (PermissionDeniedError, EXIT_DENIED),
    (RateLimitedError, EXIT_UNAVAILABLE),
)

EPILOG = """\b
Exit codes:
  0  success
  1  a job did not succeed (submit --wait, wait), or an unexpected error
  2  usage error, or an invalid job spec or argument (the field is named)
  3  no such job or site
  4  the API server (or its queue store, or a site's agent) cannot be reached
  5  timed out waiting for a job
  6  not allowed in the job's current state (e.g. cancelling a finished job)
  7  not authenticated (no, expired or bad token) or not allowed (scope, owner)
  130 interrupted

\b
Environment: SG_API (API address), SG_STATE_DIR (where `sgctl up` keeps its state),
SG_CA (CA to check the API's certificate), SG_INSECURE=1 (plaintext),
SG_TOKEN_FILE or SG_TOKEN (bearer token).
"""


def exit_code_for(exc: OrchestratorError) -> int:
    """The exit code for ``exc`` (see :data:`EXIT_CODES`)."""
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_FAILED


class _Group(click.Group):
    """Turns domain errors into one line on stderr and a meaningful exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OrchestratorError as exc:
            message = exc.message
            if is_api_unreachable(exc):
                message += " (sgctl up)"
            click.echo(f"error: {message}", err=True)
            ctx.exit(exit_code_for(exc))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=_Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--api",
    envvar="SG_API",
    metavar="HOST:PORT",
    help=f"API server address. [default: $SG_API, else from sgctl up, else {DEFAULT_API}]",
)
@click.option(
    "--state-dir",
    envvar="SG_STATE_DIR",
    default=".sg",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where `sgctl up` wrote up.json (read for the API address, its CA and token).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds each call to the API server may take.",
)
@click.option(
    "--ca",
    envvar="SG_CA",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CA certificate (PEM) to check the API server's certificate with. "
    "[default: $SG_CA, else the one `sgctl up` made, else the system's CAs]",
)
@click.option(
    "--insecure",
    is_flag=True,
    envvar="SG_INSECURE",
    help="Talk to the API in plaintext (only for an API started with --insecure).",
)
@click.option(
    "--token-file",
    envvar="SG_TOKEN_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the bearer token. [default: $SG_TOKEN_FILE, else $SG_TOKEN, else the "
    "operator token `sgctl up` wrote]",
)
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.version_option(package_name="sovereign-grid", prog_name="sgctl")
@click.pass_context
def cli(
    ctx: click.Context,
    api: str | None,
    state_dir: Path,
    timeout: float,
    ca: Path | None,
    insecure: bool,
    token_file: Path | None,
    verbose: int,
) -> None:
    """Submit and follow jobs across the federation's sites, and administer the sites."""
    if verbose:
        logging.basicConfig(
            level=logging.DEBUG if verbose > 1 else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    ctx.obj = _settings(api, state_dir, timeout, ca, insecure, token_file)


def _settings(
    api: str | None,
    state_dir: Path,
    timeout: float,
    ca: Path | None,
    insecure: bool,
    token_file: Path | None,
) -> Settings:
    """The connection the options, the environment and ``sgctl up``'s state file describe."""
    up = connection_from_state(state_dir)
    # what `sgctl up` made applies only when talking to the API it started
    local = up if up is not None and (api is None or api == up[0]) else None
    address = api or (local[0] if local else DEFAULT_API)
    tls: TlsFiles | bool
    if insecure:
        tls = False
    elif ca is not None:
        tls = TlsFiles(ca=ca)
    elif local is not None:
        tls = TlsFiles(ca=Path(local[1])) if local[1] else False
    else:
        tls = True
    token = None
    path = token_file or (
        Path(local[2]) if local and local[2] and not os.environ.get("SG_TOKEN") else None
    )
    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise click.UsageError(f"cannot read the token file {path}: {exc.strerror}") from None
    elif os.environ.get("SG_TOKEN"):
        token = os.environ["SG_TOKEN"].strip()
    return Settings(api=address, timeout=timeout, tls=tls, token=token or None)


for _command in (
    *jobs.COMMANDS,
    *sites.COMMANDS,
    *placement.COMMANDS,
    *federation.COMMANDS,
    *certs.COMMANDS,
    *tokens.COMMANDS,
):
    cli.add_command(_command)

try:
    from orchestrator.cli import local as _local
except ModuleNotFoundError as _exc:  # the embedded runtime's commands are optional
    if _exc.name != "orchestrator.cli.local":
        raise
else:
    _local.register(cli)


def main(argv: list[str] | None = None) -> None:
    """The ``sgctl`` entrypoint: tracing from the ``OTEL_*`` environment, then the CLI."""
    configure_tracing("sgctl", os.environ)
    cli.main(args=argv, prog_name="sgctl")
