"""Job commands: submit, jobs, describe, logs, cancel, events, wait."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.cli.output import (
    EVENT_HEADERS,
    JOB_HEADERS,
    Settings,
    clock,
    dump,
    echo_records,
    event_rows,
    job_rows,
    job_state,
    output_option,
    pass_settings,
    table,
    to_data,
)
from orchestrator.errors import IllegalTransitionError, NotFoundError, WaitTimeoutError
from orchestrator.sdk import Client
from orchestrator.spec import load_job_file
from orchestrator.states import JobState

__all__ = ["COMMANDS"]

_STATE_NAMES = [s.name.lower() for s in JobState]
_EXIT_NOT_SUCCEEDED = 1
_RECENT_EVENTS = 20
_FINAL_HEADERS = ("ID", "NAME", "STATE", "EXIT", "SITE", "REASON")
_MAX_SUBMIT_BATCH = 10_000  # specs in one SubmitJobs call


def _final_rows(jobs: list[types_pb2.Job]) -> list[list[str]]:
    return [
        [
            j.id,
            j.spec.name,
            job_state(j),
            str(j.exit_code) if j.has_exit_code else "-",
            j.site or "-",
            j.reason,
        ]
        for j in jobs
    ]


def _wait_all(
    client: Client, ids: list[str], *, timeout: float | None, output: str
) -> list[types_pb2.Job]:
    """Wait for every job, reporting each as it ends; then print the final states."""
    deadline = None if timeout is None else time.monotonic() + timeout
    click.echo(f"waiting for {len(ids)} job(s) ...", err=True)
    finals = []
    for job_id in ids:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            job = client.wait(job_id, timeout=remaining)
        except WaitTimeoutError as exc:  # report the whole wait, not what was left of it
            raise WaitTimeoutError(job_id, timeout or 0.0, exc.state) from None
        code = f" (exit {job.exit_code})" if job.has_exit_code else ""
        where = f" on {job.site}" if job.site else ""
        click.echo(f"  {job.id} {job.spec.name}: {job_state(job)}{code}{where}", err=True)
        finals.append(job)
    echo_records(finals, output, lambda: table(_FINAL_HEADERS, _final_rows(finals)))
    return finals


def _exit_unless_all_succeeded(jobs: list[types_pb2.Job]) -> None:
    if any(j.state != JobState.SUCCEEDED.value for j in jobs):
        sys.exit(_EXIT_NOT_SUCCEEDED)


def _write_logs(client: Client, job_id: str, *, follow: bool, attempt: int = 0) -> None:
    sys.stdout.flush()
    out = sys.stdout.buffer
    for chunk in client.logs(job_id, follow=follow, attempt=attempt):
        out.write(chunk)
        out.flush()


@click.command()
@click.option(
    "-f",
    "--file",
    "job_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Job file (YAML or JSON): one job, or several under `jobs:`.",
)
@click.option(
    "--wait", is_flag=True, help="Wait for the jobs to end; exit 1 if any did not succeed."
)
@click.option("--follow-logs", is_flag=True, help="Stream each job's output, then wait.")
@click.option(
    "--timeout", type=float, help="With --wait: give up after this many seconds (exit 5)."
)
@output_option
@pass_settings
def submit(
    settings: Settings,
    job_file: Path,
    wait: bool,
    follow_logs: bool,
    timeout: float | None,
    output: str,
) -> None:
    """Submit the jobs in a job file and print their ids."""
    specs = load_job_file(job_file)
    with settings.connect() as client:
        # several jobs: one SubmitJobs call, all or nothing (split only past 10,000 jobs or
        # about 2 MiB of specs)
        if len(specs) > 1:
            jobs = client.submit_many(specs, batch_size=_MAX_SUBMIT_BATCH)
        else:
            jobs = [client.submit(specs[0])]
        for job in jobs:
            if job.deduplicated:
                click.echo(
                    f"note: {job.id} was submitted before (same client_request_id)", err=True
                )
        if output == "table":
            click.echo("\n".join(job.id for job in jobs))
        elif not (wait or follow_logs):
            echo_records([j.info for j in jobs if j.info is not None], output, lambda: "")
        ids = [job.id for job in jobs]
        if follow_logs:
            for job in jobs:
                if len(jobs) > 1:
                    click.echo(
                        f"==> {job.id} ({job.info.spec.name if job.info else ''}) <==", err=True
                    )
                try:
                    _write_logs(client, job.id, follow=True)
                except (IllegalTransitionError, NotFoundError) as exc:
                    click.echo(f"note: no output: {exc.message}", err=True)
        if wait or follow_logs:
            _exit_unless_all_succeeded(_wait_all(client, ids, timeout=timeout, output=output))


@click.command("jobs")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(_STATE_NAMES, case_sensitive=False),
    help="Only jobs in this state (repeatable).",
)
@click.option("--tenant", default="", help="Only this tenant's jobs.")
@click.option("--queue", default="", help="Only jobs in this queue.")
@click.option("--site", default="", help="Only jobs whose last attempt was on this site.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@output_option
@pass_settings
def list_jobs(
    settings: Settings,
    states: tuple[str, ...],
    tenant: str,
    queue: str,
    site: str,
    limit: int,
    output: str,
) -> None:
    """List jobs, newest first."""
    with settings.connect() as client:
        found = client.list_jobs(states=states, tenant=tenant, queue=queue, site=site, limit=limit)
    echo_records(found, output, lambda: table(JOB_HEADERS, job_rows(found)))


def _describe_table(job: types_pb2.Job, events: list[types_pb2.JobEvent]) -> str:
    spec = job.spec
    res = spec.resources
    gpus = f"{res.gpus} x {res.gpu_type or 'any'}" if res.gpus else "0"
    fields = [
        ("ID", job.id),
        ("Name", spec.name),
        ("Tenant", spec.tenant),
        ("Queue", spec.queue),
        ("Priority", types_pb2.PriorityClass.Name(spec.priority).removeprefix("PRIORITY_CLASS_")),
        ("Command", shlex.join(spec.command)),
        ("Resources", f"{res.nodes} node(s) x ({gpus} GPUs, {res.cpus} CPUs, {res.memory_mb} MiB)"),
        ("Jurisdictions", ", ".join(spec.placement.allowed_jurisdictions) or "any"),
        ("State", job_state(job) + (" (cancel requested)" if job.cancel_requested else "")),
        ("Attempt", f"{job.attempt} of {spec.max_attempts}"),
        ("Site", job.site or "-"),
        ("Exit code", str(job.exit_code) if job.has_exit_code else "-"),
        ("Reason", job.reason or "-"),
        ("Created", clock(job.created_at)),
        ("Started", clock(job.started_at)),
        ("Finished", clock(job.finished_at)),
    ]
    width = max(len(name) for name, _ in fields) + 1
    lines = [f"{name + ':':<{width}} {value}" for name, value in fields]
    lines += ["", f"Events (last {len(events)}):", table(EVENT_HEADERS, event_rows(events))]
    return "\n".join(lines)


@click.command()
@click.argument("job_id", metavar="JOB")
@output_option
@pass_settings
def describe(settings: Settings, job_id: str, output: str) -> None:
    """Show a job's spec, status and recent events."""
    with settings.connect() as client:
        job = client.get_job(job_id)
        events = list(client.events(job_id))[-_RECENT_EVENTS:]
    record: dict[str, Any] = {"job": job, "events": events}
    echo_records(record, output, lambda: _describe_table(job, events))


@click.command()
@click.argument("job_id", metavar="JOB")
@click.option(
    "-f", "--follow", is_flag=True, help="Wait for the job to start; stream until it ends."
)
@click.option("--attempt", type=click.IntRange(min=0), default=0, help="Attempt (0: the current).")
@pass_settings
def logs(settings: Settings, job_id: str, follow: bool, attempt: int) -> None:
    """Print a job's output (stdout and stderr), read from its site's agent."""
    with settings.connect() as client:
        _write_logs(client, job_id, follow=follow, attempt=attempt)


@click.command()
@click.argument("job_id", metavar="JOB")
@click.option("--reason", default="", help="Why; recorded in the job's events.")
@pass_settings
def cancel(settings: Settings, job_id: str, reason: str) -> None:
    """Cancel a job (a running job is stopped by its site's agent)."""
    with settings.connect() as client:
        job = client.cancel(job_id, reason=reason)
    if job.state == JobState.CANCELLED.value:
        click.echo(f"{job.id}: CANCELLED")
    else:
        click.echo(f"{job.id}: cancel requested ({job_state(job)} on {job.site or '-'})")


@click.command()
@click.argument("job_id", metavar="JOB")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events until the job ends.")
@output_option
@pass_settings
def events(settings: Settings, job_id: str, follow: bool, output: str) -> None:
    """Print a job's events (with -f: as they happen; -o json prints one object per line)."""
    with settings.connect() as client:
        if not follow:
            found = list(client.events(job_id))
            echo_records(found, output, lambda: table(EVENT_HEADERS, event_rows(found)))
            return
        if output == "table":
            click.echo(table(EVENT_HEADERS, []))
        for event in client.events(job_id, follow=True):
            if output == "table":
                click.echo("  ".join(event_rows([event])[0]))
            elif output == "json":
                click.echo(json.dumps(to_data(event), ensure_ascii=False))
            else:
                click.echo("---\n" + dump(to_data(event), "yaml"))


@click.command("wait")
@click.argument("job_ids", metavar="JOB...", nargs=-1, required=True)
@click.option("--timeout", type=float, help="Give up after this many seconds (exit 5).")
@output_option
@pass_settings
def wait_jobs(
    settings: Settings, job_ids: tuple[str, ...], timeout: float | None, output: str
) -> None:
    """Wait for jobs to end; print their final states. Exit 1 if any did not succeed."""
    with settings.connect() as client:
        finals = _wait_all(client, list(job_ids), timeout=timeout, output=output)
    _exit_unless_all_succeeded(finals)


COMMANDS: tuple[click.Command, ...] = (submit, list_jobs, describe, logs, cancel, events, wait_jobs)
