"""``sgctl``: the operator CLI. Parse, call the SDK, print; errors are one line and an exit code.

The API address is ``--api``, else ``$SG_API``, else the ``api`` that ``sgctl up`` wrote to
``<state dir>/up.json``, else 127.0.0.1:50051.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Final

import click

from orchestrator.cli import jobs, placement, sites
from orchestrator.cli.output import DEFAULT_API, Settings, api_from_state
from orchestrator.errors import (
    IllegalTransitionError,
    InvalidSpecError,
    NotFoundError,
    OrchestratorError,
    ServiceUnavailableError,
    StoreUnavailableError,
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
EXIT_INTERRUPTED: Final = 130

#: Domain error -> exit code; the first matching row wins. Anything else exits 1.
EXIT_CODES: Final[tuple[tuple[type[OrchestratorError], int], ...]] = (
    (InvalidSpecError, EXIT_USAGE),
    (NotFoundError, EXIT_NOT_FOUND),
    (StoreUnavailableError, EXIT_UNAVAILABLE),
    (ServiceUnavailableError, EXIT_UNAVAILABLE),
    (WaitTimeoutError, EXIT_TIMEOUT),
    (IllegalTransitionError, EXIT_CONFLICT),
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
  130 interrupted

\b
Environment: SG_API (API address), SG_STATE_DIR (where `sgctl up` keeps its state).
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
    help="Where `sgctl up` wrote up.json (read for the API address).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds each call to the API server may take.",
)
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.version_option(package_name="sovereign-grid", prog_name="sgctl")
@click.pass_context
def cli(ctx: click.Context, api: str | None, state_dir: Path, timeout: float, verbose: int) -> None:
    """Submit and follow jobs across the federation's sites, and administer the sites."""
    if verbose:
        logging.basicConfig(
            level=logging.DEBUG if verbose > 1 else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    ctx.obj = Settings(api=api or api_from_state(state_dir) or DEFAULT_API, timeout=timeout)


for _command in (*jobs.COMMANDS, *sites.COMMANDS, *placement.COMMANDS):
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
