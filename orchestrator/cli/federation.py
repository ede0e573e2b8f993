"""Federation commands: enrolment tokens for partners (operators), offers and usage (partners
and operators). Partners' own code does the same with the SDK (``examples/partner_federation.py``).
"""

from __future__ import annotations

import click

from orchestrator._pb.orchestrator.v1 import federation_pb2
from orchestrator.cli.output import Settings, echo_records, output_option, pass_settings, table
from orchestrator.cli.tokens import parse_duration

__all__ = ["COMMANDS"]


@click.group()
def partners() -> None:
    """Let partners in: enrolment tokens (operators only)."""


@partners.command("enrol")
@click.argument("partner_id", metavar="PARTNER")
@click.option(
    "--ttl",
    default="24h",
    show_default=True,
    metavar="DURATION",
    help="How long the token may be used (once): 90m, 24h, 7d; at most 30d.",
)
@pass_settings
def enrol(settings: Settings, partner_id: str, ttl: str) -> None:
    """Print a single-use, expiring enrolment token for PARTNER (and nothing else on stdout).

    \b
    Hand it to the partner over a trusted channel; its code spends it with the SDK:
      Client.connect(API, tls=..., token=ENROLMENT_TOKEN).enrol().token
    and uses the partner token it gets back from then on.
    """
    try:
        seconds = parse_duration(ttl)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ttl") from None
    with settings.connect() as client:
        reply = client.create_enrolment(partner_id, ttl_seconds=seconds)
    click.echo(reply.token)
    click.echo(
        f"enrolment token for {partner_id}, single use, until "
        f"{reply.expires_at.ToDatetime():%Y-%m-%d %H:%M} UTC",
        err=True,
    )


def _hours(offer: federation_pb2.CapacityOffer) -> str:
    if not offer.hours:
        return "all day"
    return ",".join(f"{w.start_hour:02d}-{w.end_hour:02d}" for w in offer.hours)


@click.command("offers")
@click.argument("site_id", metavar="[SITE]", default="")
@output_option
@pass_settings
def offers(settings: Settings, site_id: str, output: str) -> None:
    """Capacity offers on SITE, or on every site you manage."""
    with settings.connect() as client:
        found = client.offers(site_id)
    rows = [
        (
            o.site_id,
            o.id,
            ", ".join(f"{g.type} {g.count}" for g in o.gpus),
            ",".join([*o.tenant_countries, *o.jurisdictions]),
            _hours(o) + " UTC",
            "yes" if o.active_now else "no",
        )
        for o in found
    ]
    headers = ("SITE", "OFFER", "GPUS", "FOR", "HOURS", "ACTIVE")
    echo_records(found, output, lambda: table(headers, rows))


@click.command("usage")
@click.argument("site_ids", metavar="[SITE]...", nargs=-1)
@output_option
@pass_settings
def usage(settings: Settings, site_ids: tuple[str, ...], output: str) -> None:
    """GPU-hours and energy per tenant on SITEs (default: every site you manage)."""
    with settings.connect() as client:
        found = client.usage(site_ids)
    rows = [
        (s.site_id, t.tenant, f"{t.gpu_hours:.2f}", f"{t.energy_kwh:.2f}")
        for s in found
        for t in s.tenants
    ]
    headers = ("SITE", "TENANT", "GPU-HOURS", "KWH")
    echo_records(found, output, lambda: table(headers, rows))


COMMANDS: tuple[click.Command, ...] = (partners, offers, usage)
