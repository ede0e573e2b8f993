"""What the ``sgctl`` commands share: settings, the ``-o table|json|yaml`` option, and tables.

Tables are for people (short states, ages); ``-o json`` and ``-o yaml`` print the wire records
(proto3 JSON mapping, field names as in the ``.proto`` files, every field present) for scripts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.config import TlsFiles
from orchestrator.sdk import Client

__all__ = [
    "DEFAULT_API",
    "FORMATS",
    "Settings",
    "api_from_state",
    "connection_from_state",
    "echo_records",
    "event_rows",
    "job_rows",
    "output_option",
    "pass_settings",
    "site_rows",
    "table",
    "to_data",
]

DEFAULT_API = "127.0.0.1:50051"
FORMATS = ("table", "json", "yaml")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The global options, resolved once by the ``sgctl`` group."""

    api: str
    """Address of the API server."""
    timeout: float
    """Seconds each call may take."""
    tls: TlsFiles | bool = True
    """False: plaintext; True: TLS checked against the system's CAs; files: against that CA."""
    token: str | None = None
    """Bearer token sent with every call."""

    def connect(self) -> Client:
        """A connected client (use it with ``with``)."""
        return Client.connect(self.api, timeout=self.timeout, tls=self.tls, token=self.token)


pass_settings = click.make_pass_decorator(Settings)
"""Decorator giving a command the group's :class:`Settings` as its first argument."""


def output_option(func: F) -> F:
    """``-o/--output table|json|yaml``."""
    option = click.option(
        "-o",
        "--output",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="Human table, or JSON / YAML records for scripts.",
    )
    return option(func)


def _state(state_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((state_dir / "up.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def api_from_state(state_dir: Path) -> str | None:
    """The API address ``sgctl up`` wrote to ``<state_dir>/up.json``, if it is there."""
    api = _state(state_dir).get("api")
    return api if isinstance(api, str) and api else None


def connection_from_state(state_dir: Path) -> tuple[str, str, str] | None:
    """``(api, ca, token_file)`` of what ``sgctl up`` started (ca "" when it runs insecure)."""
    data = _state(state_dir)
    api, ca, token_file = data.get("api"), data.get("ca", ""), data.get("token_file", "")
    if not isinstance(api, str) or not api:
        return None
    return api, ca if isinstance(ca, str) else "", token_file if isinstance(token_file, str) else ""


# --- records -------------------------------------------------------------------------------


def to_data(record: Message | Sequence[Message] | dict[str, Any]) -> Any:
    """Plain data (dicts, lists, strings, numbers) for JSON or YAML."""
    if isinstance(record, Message):
        return json_format.MessageToDict(
            record,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
            unquote_int64_if_possible=True,
        )
    if isinstance(record, dict):
        return {key: to_data(value) for key, value in record.items()}
    return [to_data(item) for item in record]


def dump(data: Any, fmt: str) -> str:
    """``data`` as JSON or YAML text."""
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip("\n")


def echo_records(
    records: Message | Sequence[Message] | dict[str, Any],
    fmt: str,
    render_table: Callable[[], str],
) -> None:
    """Print ``records`` in ``fmt``: the table from ``render_table``, or JSON/YAML."""
    click.echo(render_table() if fmt == "table" else dump(to_data(records), fmt))


# --- tables --------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart."""
    all_rows = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in all_rows
    )


def age(ts: Timestamp, *, now: float | None = None) -> str:
    """``ts`` as an age: 42s, 5m, 3h, 2d ("-" when unset)."""
    if not ts.seconds and not ts.nanos:
        return "-"
    seconds = max(0, int((time.time() if now is None else now) - ts.seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def clock(ts: Timestamp) -> str:
    """``ts`` as local ``YYYY-MM-DD HH:MM:SS``."""
    if not ts.seconds and not ts.nanos:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts.seconds))


def state_name(value: int, *, prefix: str = "JOB_STATE_") -> str:
    """A wire enum value as a short name (``RUNNING``)."""
    try:
        enum = types_pb2.JobState if prefix == "JOB_STATE_" else types_pb2.SiteState
        return enum.Name(value).removeprefix(prefix)  # type: ignore[arg-type]
    except ValueError:
        return str(value)


def job_state(job: types_pb2.Job) -> str:
    """The state to show for a job (PENDING jobs no site can run show as UNSCHEDULABLE)."""
    name = state_name(job.state)
    return "UNSCHEDULABLE" if job.unschedulable and name == "PENDING" else name


JOB_HEADERS = ("ID", "NAME", "TENANT", "QUEUE", "STATE", "ATTEMPT", "SITE", "EXIT", "AGE")


def job_rows(jobs: Iterable[types_pb2.Job]) -> list[list[str]]:
    """One table row per job, for :data:`JOB_HEADERS`."""
    return [
        [
            j.id,
            j.spec.name,
            j.spec.tenant,
            j.spec.queue,
            job_state(j),
            str(j.attempt),
            j.site or "-",
            str(j.exit_code) if j.has_exit_code else "-",
            age(j.created_at),
        ]
        for j in jobs
    ]


EVENT_HEADERS = ("TIME", "STATE", "ATTEMPT", "SITE", "MESSAGE")


def event_rows(events: Iterable[types_pb2.JobEvent]) -> list[list[str]]:
    """One table row per event, for :data:`EVENT_HEADERS`."""
    return [
        [clock(e.time), state_name(e.state), str(e.attempt), e.site or "-", e.message]
        for e in events
    ]


SITE_HEADERS = (
    "ID", "NAME", "JURISDICTION", "STATE", "CONNECTED", "GPUS USED", "POWER MW", "JOBS", "AGENT",
)  # fmt: skip


def site_rows(sites: Iterable[types_pb2.SiteStatus]) -> list[list[str]]:
    """One table row per site, for :data:`SITE_HEADERS`."""
    rows = []
    for s in sites:
        used = {g.type: g.count for g in s.gpus_used}
        gpus = ", ".join(f"{p.type} {used.get(p.type, 0)}/{p.count}" for p in s.site.gpus) or "-"
        rows.append(
            [
                s.site.id,
                s.site.name,
                s.site.jurisdiction,
                "DRAINED"
                if s.state == types_pb2.SITE_STATE_DRAINING and s.active_jobs == 0
                else state_name(s.state, prefix="SITE_STATE_"),
                "yes" if s.connected else "no",
                gpus,
                f"{s.power_used_mw:.2f}/{s.site.power_cap_mw:g}",
                str(s.active_jobs),
                s.site.endpoint,
            ]
        )
    return rows
