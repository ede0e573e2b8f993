"""Placement commands: ``explain`` (why is my job pending / why there) and ``tenants``."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator._pb.orchestrator.v1 import service_pb2, types_pb2
from orchestrator.cli.output import Settings, echo_records, output_option, pass_settings, table
from orchestrator.tenantfile import load_tenant_file

__all__ = ["COMMANDS"]

_VERDICT_HEADERS = ("SITE", "VERDICT", "DETAIL")


def _reason_name(value: service_pb2.PlacementReason.ValueType) -> str:
    return service_pb2.PlacementReason.Name(value).removeprefix("PLACEMENT_REASON_").lower()


def _explain_table(report: service_pb2.ExplainJobResponse) -> str:
    job = report.job
    lines = [f"{job.id} ({job.spec.name}, tenant {job.spec.tenant}): {report.summary}"]
    if report.unschedulable_reason:
        lines.append(f"Unschedulable: {report.unschedulable_reason}")
    rows = []
    for v in report.verdicts:
        verdict = _reason_name(v.reason)
        if v.reason == service_pb2.PLACEMENT_REASON_FEASIBLE:
            verdict = f"ok (score {v.score:.1f})"
        rows.append((v.site_id, verdict, v.detail))
    lines += ["", table(_VERDICT_HEADERS, rows)]
    return "\n".join(lines)


@click.command()
@click.argument("job_id", metavar="JOB")
@output_option
@pass_settings
def explain(settings: Settings, job_id: str, output: str) -> None:
    """Why a job is pending, or why it landed where it did: each site's verdict.

    Per site, the first constraint that rejects the job (state, excluded, residency, policy,
    gpu_type, too_large, quota, surplus, power, capacity) or its score, and the job's place in
    its queue. Computed from the same snapshot and policy as the scheduler's next cycle.
    """
    with settings.connect() as client:
        report = client.explain(job_id)
    echo_records(report, output, lambda: _explain_table(report))


_TENANT_HEADERS = ("TENANT", "COUNTRY", "WEIGHT", "GPUS USED", "QUOTA")


def _tenant_rows(tenants: list[types_pb2.TenantStatus]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for status in tenants:
        t = status.tenant
        quota = [str(t.quota_gpus)] if t.has_quota_gpus else []
        quota += [f"{code} {n}" for code, n in sorted(t.quota_gpus_by_jurisdiction.items())]
        rows.append(
            (
                t.id,
                t.country or "-",
                f"{t.weight:g}",
                str(status.gpus_used),
                ", ".join(quota) or "-",
            )
        )
    return rows


@click.group(invoke_without_command=True)
@output_option
@click.pass_context
def tenants(ctx: click.Context, output: str) -> None:
    """List tenants (home country, fair-share weight, GPUs used, quotas)."""
    if ctx.invoked_subcommand is None:
        settings = ctx.find_object(Settings)
        if settings is None:  # pragma: no cover - the sgctl group always sets it
            raise click.UsageError("no settings")
        with settings.connect() as client:
            found = client.tenants()
        echo_records(found, output, lambda: table(_TENANT_HEADERS, _tenant_rows(found)))


@tenants.command("apply")
@click.option(
    "-f", "--file", "path", required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Tenant file (see examples/tenants.yaml).",
)  # fmt: skip
@pass_settings
def apply_tenants(settings: Settings, path: Path) -> None:
    """Create or replace the tenants in a file."""
    loaded = load_tenant_file(path)
    with settings.connect() as client:
        for tenant in loaded:
            client.put_tenant(tenant)
    click.echo(f"{len(loaded)} tenant(s) applied: {', '.join(t.id for t in loaded)}")


COMMANDS: tuple[click.Command, ...] = (explain, tenants)
