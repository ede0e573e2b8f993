"""``sgctl certs``: the federation's private PKI on disk (``init``, ``issue``)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from orchestrator.security.certs import write_dev_pki, write_site_certificate

__all__ = ["COMMANDS"]

_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Where the certificates live. [default: <state dir>/certs, the state dir being "
    "sgctl's --state-dir, else $SG_STATE_DIR, else .sg]",
)
_days_option = click.option(
    "--days",
    type=click.IntRange(min=1),
    default=365,
    show_default=True,
    help="How long the certificates are valid.",
)


def _certs_dir(ctx: click.Context, directory: Path | None) -> Path:
    if directory is not None:
        return directory
    state_dir = ctx.find_root().params.get("state_dir")
    if state_dir is None:  # the group run on its own, outside sgctl
        state_dir = os.environ.get("SG_STATE_DIR") or ".sg"
    return Path(state_dir) / "certs"


@click.group()
def certs() -> None:
    """Create the CA and certificates of mutual TLS between the control plane and site agents.

    The control plane presents control-plane.pem to every agent; each agent presents a
    certificate naming <site>.site.sovereign-grid; both chain to ca.pem.

    \b
    Example:
      sgctl certs init                     # .sg/certs: CA, control plane, API server
      sgctl certs issue --site narvik      # .sg/certs/sites/narvik.pem and its key
    """


@certs.command()
@_dir_option
@click.option(
    "--api-host",
    "api_hosts",
    multiple=True,
    metavar="HOST",
    help="A host name or address clients reach the API server by (repeat for several). "
    "[default: localhost and 127.0.0.1]",
)
@_days_option
@click.option(
    "--force", is_flag=True, help="Replace an existing CA and every certificate it signed."
)
@click.pass_context
def init(
    ctx: click.Context, directory: Path | None, api_hosts: tuple[str, ...], days: int, force: bool
) -> None:
    """Create a CA and the control plane's certificates (client and API server).

    Writes ca.pem, ca-key.pem, control-plane.pem, control-plane-key.pem, api.pem and
    api-key.pem (keys readable by the owner only) and prints each file written. An existing
    CA is kept (only missing certificates are issued) unless --force.

    \b
    Example:
      sgctl certs init --api-host grid.example.org --api-host 10.0.0.5
    """
    target = _certs_dir(ctx, directory)
    written = write_dev_pki(
        target, api_hosts=api_hosts or ("localhost", "127.0.0.1"), days=days, force=force
    )
    for path in written.values():
        click.echo(str(path))
    if not written:
        click.echo(f"{target} already has every certificate; nothing written", err=True)


@certs.command()
@click.option("--site", "site_id", required=True, metavar="ID", help="The site's id.")
@_dir_option
@_days_option
@click.pass_context
def issue(ctx: click.Context, site_id: str, directory: Path | None, days: int) -> None:
    """Issue the agent certificate of a site, signed by the CA of `sgctl certs init`.

    Writes sites/<ID>.pem (naming <ID>.site.sovereign-grid) and sites/<ID>-key.pem under the
    certificate directory, replacing any earlier ones, and prints both. A running agent
    picks the new files up for new connections.

    \b
    Example:
      sgctl certs issue --site narvik
      sg-agent --sites sites.yaml --site narvik --tls-ca .sg/certs/ca.pem \\
               --tls-cert .sg/certs/sites/narvik.pem \\
               --tls-key .sg/certs/sites/narvik-key.pem
    """
    cert, key = write_site_certificate(_certs_dir(ctx, directory), site_id, days=days)
    click.echo(str(cert))
    click.echo(str(key))


COMMANDS: tuple[click.Command, ...] = (certs,)
