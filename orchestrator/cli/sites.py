"""Site commands: sites, cordon, drain, uncordon."""

from __future__ import annotations

import click

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.cli.output import (
    SITE_HEADERS,
    Settings,
    echo_records,
    output_option,
    pass_settings,
    site_rows,
    state_name,
    table,
)

__all__ = ["COMMANDS"]


def _done(status: types_pb2.SiteStatus) -> None:
    click.echo(f"{status.site.id}: {state_name(status.state, prefix='SITE_STATE_')}")


@click.command("sites")
@output_option
@pass_settings
def list_sites(settings: Settings, output: str) -> None:
    """List the federation's sites with their state and use."""
    with settings.connect() as client:
        found = client.sites()
    echo_records(found, output, lambda: table(SITE_HEADERS, site_rows(found)))


_reason = click.option("--reason", default="", help="Why; recorded in the API server's log.")


@click.command()
@click.argument("site_id", metavar="SITE")
@_reason
@pass_settings
def cordon(settings: Settings, site_id: str, reason: str) -> None:
    """Take no new work at a site; running jobs continue."""
    with settings.connect() as client:
        _done(client.cordon(site_id, reason=reason))


@click.command()
@click.argument("site_id", metavar="SITE")
@_reason
@pass_settings
def drain(settings: Settings, site_id: str, reason: str) -> None:
    """Take no new work at a site while its running jobs finish."""
    with settings.connect() as client:
        _done(client.drain(site_id, reason=reason))


@click.command()
@click.argument("site_id", metavar="SITE")
@_reason
@pass_settings
def uncordon(settings: Settings, site_id: str, reason: str) -> None:
    """Let a cordoned or draining site take new work again."""
    with settings.connect() as client:
        _done(client.activate(site_id, reason=reason))


COMMANDS: tuple[click.Command, ...] = (list_sites, cordon, drain, uncordon)
