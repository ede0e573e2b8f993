"""``sgctl up``, ``sgctl down`` and ``sgctl demo``: the embedded default on one machine."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click

from orchestrator.local.state import UpState, pid_alive, read_state, state_path

__all__ = ["register"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEFAULT_SITES = EXAMPLES / "sites.yaml"
DEFAULT_TENANTS = EXAMPLES / "tenants.yaml"
DEFAULT_DEMO_JOBS = EXAMPLES / "demo-jobs.yaml"

_REDIS_URL_ENV = "SG_UP_REDIS_URL"

_state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: os.environ.get("SG_STATE_DIR", ".sg"),
    show_default=".sg (or $SG_STATE_DIR)",
    help="Where the embedded Redis, Ray, agents and logs keep their state.",
)


def _running(state_dir: Path) -> UpState | None:
    state = read_state(state_dir)
    if state is not None and pid_alive(state.pid):
        return state
    return None


def start_local(
    state_dir: Path,
    *,
    sites: Path,
    api_listen: str,
    redis_url: str | None,
    ray_address: str | None,
    dispatchers: int,
    timeout: float,
    tenants: Path | None = None,
    insecure: bool = False,
) -> UpState:
    """Start the supervisor in its own session and wait (showing its stages) until ready."""
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "logs").mkdir(exist_ok=True)
    args = [
        sys.executable, "-m", "orchestrator.local",
        "--state-dir", str(state_dir), "--sites", str(sites.resolve()),
        "--api-listen", api_listen, "--dispatchers", str(dispatchers),
    ]  # fmt: skip
    if tenants is not None:
        args += ["--tenants", str(tenants.resolve())]
    env = dict(os.environ)
    if redis_url:
        # in the environment, not on the command line, where anyone could read a password
        env[_REDIS_URL_ENV] = redis_url
    if ray_address:
        args += ["--ray-address", ray_address]
    if insecure:
        args += ["--insecure"]
    progress = state_dir / "up.progress"
    progress.unlink(missing_ok=True)
    with (state_dir / "logs" / "supervisor.out").open("ab") as out:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
        )  # fmt: skip
    shown = 0
    started = time.monotonic()
    while True:
        lines = progress.read_text().splitlines() if progress.exists() else []
        for line in lines[shown:]:
            click.echo(f"  [{time.monotonic() - started:5.1f}s] {line}", err=True)
        shown = max(shown, len(lines))
        state = read_state(state_dir)
        if state is not None and state.pid == proc.pid:
            return state
        if proc.poll() is not None or any(line.startswith("FAILED") for line in lines):
            log_file = state_dir / "logs" / "supervisor.log"
            tail = log_file.read_text().splitlines()[-15:] if log_file.exists() else []
            _kill_group(proc.pid)
            raise click.ClickException(
                "the control plane failed to start:\n  "
                + "\n  ".join(tail)
                + f"\n(full log: {log_file})"
            )
        if time.monotonic() - started > timeout:
            _kill_group(proc.pid)
            raise click.ClickException(f"the control plane did not start within {timeout:g}s")
        time.sleep(0.2)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def stop_local(state_dir: Path, *, timeout: float) -> bool:
    """Stop what ``up`` started; returns False when nothing was running."""
    state = read_state(state_dir)
    if state is None:
        return False
    if pid_alive(state.pid):
        os.kill(state.pid, signal.SIGTERM)
        started = time.monotonic()
        last = -1
        while pid_alive(state.pid):
            waited = int(time.monotonic() - started)
            if waited >= timeout:
                click.echo(f"  still running after {timeout:g}s; killing it", err=True)
                break
            if waited != last and waited % 2 == 0:
                click.echo(f"  [{waited:3d}s] stopping agents, API server, Ray and Redis", err=True)
                last = waited
            time.sleep(0.2)
    # whatever the supervisor could not stop (it was killed, say) goes now
    leftovers = [int(a["pid"]) for a in state.agents.values()] + [state.redis_pid or 0]
    for pid in leftovers:
        if pid and pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    _kill_group(state.pid)
    state_path(state_dir).unlink(missing_ok=True)
    return True


@click.command()
@_state_dir_option
@click.option(
    "--sites",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=DEFAULT_SITES,
    show_default="examples/sites.yaml",
    help="Site file; one demo agent is started per site.",
)
@click.option(
    "--tenants",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=DEFAULT_TENANTS,
    show_default="examples/tenants.yaml",
    help="Tenant file to load (home countries, fair-share weights, quotas).",
)
@click.option("--api-listen", default="127.0.0.1:50051", show_default=True, help="API address.")
@click.option("--redis-url", help="Use this Redis instead of starting one (redis:// or rediss://).")
@click.option("--ray-address", help="Join this Ray cluster instead of starting a local one.")
@click.option("--dispatchers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--timeout", type=float, default=180, show_default=True, help="Seconds to wait.")
@click.option(
    "--insecure",
    is_flag=True,
    help="Plaintext API and agent streams, no certificates (bearer tokens are still required).",
)
def up(
    state_dir: Path,
    sites: Path,
    tenants: Path,
    api_listen: str,
    redis_url: str | None,
    ray_address: str | None,
    dispatchers: int,
    timeout: float,
    insecure: bool,
) -> None:
    """Start everything on this machine: Redis, Ray, the control plane, the API and demo sites.

    Returns once the API answers; everything keeps running in the background until
    `sgctl down`. Logs are in STATE_DIR/logs.

    \b
    Security, with no configuration: a development CA and certificates in STATE_DIR/certs
    (TLS on the API, mTLS on every agent stream), token keys in STATE_DIR/auth and an operator
    token in STATE_DIR/auth/operator.token, which sgctl uses when it talks to this API. Other
    tokens: sgctl tokens issue --tenant ID (or --partner ID).
    """
    state = _running(state_dir)
    if state is not None:
        click.echo(f"already running: API on {state.api} (sgctl down to stop)")
        return
    state = start_local(
        state_dir, sites=sites, api_listen=api_listen, redis_url=redis_url,
        ray_address=ray_address, dispatchers=dispatchers, timeout=timeout, tenants=tenants,
        insecure=insecure,
    )  # fmt: skip
    mode = "PLAINTEXT (--insecure)" if not state.ca else "TLS"
    click.echo(
        f"up: API on {state.api} ({mode}), sites: {', '.join(sorted(state.agents)) or 'none'}"
    )
    click.echo(f"operator token in {state.token_file}; sgctl uses it for this API")
    click.echo(f"logs in {Path(state.state_dir) / 'logs'}; stop with: sgctl down")


@click.command()
@_state_dir_option
@click.option("--timeout", type=float, default=60, show_default=True, help="Seconds to wait.")
def down(state_dir: Path, timeout: float) -> None:
    """Stop everything `sgctl up` started (jobs on the demo sites are stopped too)."""
    if stop_local(state_dir, timeout=timeout):
        click.echo("down: everything stopped")
    else:
        click.echo("nothing running")


@click.command()
@_state_dir_option
@click.option(
    "-f", "--jobs", "jobs_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=DEFAULT_DEMO_JOBS, show_default="examples/demo-jobs.yaml",
    help="Job file to submit.",
)  # fmt: skip
@click.option("--keep", is_flag=True, help="Leave everything running afterwards.")
@click.option("--timeout", type=float, default=300, show_default=True, help="Seconds to wait.")
def demo(state_dir: Path, jobs_file: Path, keep: bool, timeout: float) -> None:
    """Start everything (if needed), run the demo workload across the sites, print a summary.

    Exits 0 when every check of the demo holds, 1 otherwise. Stops everything at the end
    unless --keep (or it was already running).
    """
    from orchestrator.spec import load_job_file

    specs = load_job_file(jobs_file)
    state = _running(state_dir)
    started_here = state is None
    if state is None:
        click.echo("starting Redis, Ray, the control plane and the demo sites ...", err=True)
        state = start_local(
            state_dir, sites=DEFAULT_SITES, api_listen="127.0.0.1:50051", redis_url=None,
            ray_address=None, dispatchers=2, timeout=180, tenants=DEFAULT_TENANTS,
        )  # fmt: skip
    ok = False
    try:
        with _connect(state) as client:
            click.echo(f"submitting {len(specs)} jobs from {jobs_file.name} ...", err=True)
            ids = [job.id for job in client.submit_many(specs)]
            finals = _wait_all(client, ids, timeout=timeout)
        ok = _summarise(finals)
    finally:
        if started_here and not keep:
            click.echo("stopping ...", err=True)
            stop_local(state_dir, timeout=60)
    if not ok:
        sys.exit(1)


def _connect(state: UpState) -> Any:
    """A client of the API ``state`` describes, with its CA and the operator token."""
    from orchestrator.config import TlsFiles
    from orchestrator.sdk import Client

    token = Path(state.token_file).read_text().strip() if state.token_file else None
    tls = TlsFiles(ca=Path(state.ca)) if state.ca else False
    return Client.connect(state.api, tls=tls, token=token)


def _wait_all(client: Any, ids: list[str], *, timeout: float) -> list[Any]:
    from orchestrator.states import JobState

    started = time.monotonic()
    last = ""
    while True:
        jobs = [client.get_job(i) for i in ids]
        counts = Counter(
            "unschedulable" if j.unschedulable else JobState(j.state).name.lower() for j in jobs
        )
        line = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if line != last:
            click.echo(f"  [{time.monotonic() - started:5.1f}s] {line}", err=True)
            last = line
        if all(JobState(j.state).is_terminal() or j.unschedulable for j in jobs):
            return jobs
        if time.monotonic() - started > timeout:
            click.echo(f"  gave up waiting after {timeout:g}s", err=True)
            return jobs
        time.sleep(0.25)


_TERMINAL_NAMES = ("SUCCEEDED", "FAILED", "CANCELLED", "UNSCHEDULABLE")


def _summarise(jobs: list[Any]) -> bool:
    from orchestrator.states import JobState

    header = ("JOB", "ALLOWED", "SITE", "STATE", "EXIT")
    rows = []
    for j in jobs:
        state = "UNSCHEDULABLE" if j.unschedulable else JobState(j.state).name
        code = str(j.exit_code) if j.has_exit_code else "-"
        allowed = ",".join(j.spec.placement.allowed_jurisdictions) or "any"
        rows.append((j.spec.name, allowed, j.site or "-", state, code))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    click.echo()
    for r in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    per_site = Counter(r[2] for r in rows)
    per_state = Counter(r[3] for r in rows)
    click.echo()
    click.echo("by site:  " + ", ".join(f"{s} {n}" for s, n in sorted(per_site.items())))
    click.echo("by state: " + ", ".join(f"{s} {n}" for s, n in sorted(per_state.items())))
    for j in jobs:
        if j.unschedulable:
            click.echo(f"{j.spec.name}: {j.reason}")
    norway = [r for r in rows if r[1] == "NO"]
    checks = [
        ("every job finished", all(r[3] in _TERMINAL_NAMES for r in rows)),
        ("Norway-only jobs ran on narvik", bool(norway) and all(r[2] == "narvik" for r in norway)),
        (
            "the exit-3 job is FAILED with exit code 3",
            any(r[3] == "FAILED" and r[4] == "3" for r in rows),
        ),
        (
            "jobs ran on narvik, abu-dhabi and abilene",
            {"narvik", "abu-dhabi", "abilene"} <= set(per_site),
        ),
        (
            "the UK lab's surplus jobs ran on Narvik's surplus",
            all(r[2] == "narvik" for r in rows if r[0].startswith("uk-surplus")),
        ),
    ]
    click.echo()
    for name, passed in checks:
        click.echo(f"  [{'ok' if passed else 'FAIL'}] {name}")
    return all(p for _, p in checks)


def register(group: click.Group) -> None:
    """Add ``up``, ``down`` and ``demo`` to the ``sgctl`` group."""
    for command in (up, down, demo):
        group.add_command(command)
