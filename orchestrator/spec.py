"""Typed job specs for users: build them in Python or load them from YAML/JSON job files.

    spec = JobSpec(
        name="train", tenant="acme", command=["python", "train.py"],
        resources=Resources(gpus=8, gpu_type="H100"),
        placement=Placement(allowed_jurisdictions=("NO", "SE")),
    )

A job file holds one job, or several under ``jobs:``; an entry may set ``count: N`` to submit
N copies named ``<name>-0`` .. ``<name>-<N-1>``::

    jobs:
      - name: sweep
        tenant: acme
        command: [python, sweep.py]
        count: 4
        resources: {gpus: 1, gpu_type: H100}
        placement: {allowed_jurisdictions: [NO]}

The file is read with YAML 1.2 booleans, so ``NO`` (Norway) stays a string. Unknown keys are
rejected by name, and every error is an ``InvalidSpecError`` whose ``field`` is the path of the
bad value (``jobs[1].resources.gpus``). The server validates again (``normalize_spec``); this
module checks early so a typo is reported before anything is submitted.
"""

from __future__ import annotations

import enum
import os
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.errors import InvalidSpecError
from orchestrator.validation import normalize_spec
from orchestrator.yamlfile import read_yaml

__all__ = ["JobSpec", "Placement", "PriorityClass", "Resources", "load_job_file", "parse_jobs"]

_MAX_COUNT = 1000


class PriorityClass(enum.StrEnum):
    """Priority class of a job; higher classes are placed first."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    SURPLUS = "surplus"

    def to_proto(self) -> types_pb2.PriorityClass.ValueType:
        """The wire enum value."""
        return types_pb2.PriorityClass.Value(f"PRIORITY_CLASS_{self.name}")

    @classmethod
    def from_proto(cls, value: int) -> PriorityClass:
        """From the wire enum; UNSPECIFIED is NORMAL, as on the server."""
        if value == types_pb2.PRIORITY_CLASS_UNSPECIFIED:
            return cls.NORMAL
        return cls[types_pb2.PriorityClass.Name(value).removeprefix("PRIORITY_CLASS_")]  # type: ignore[arg-type]

    @classmethod
    def parse(cls, value: str) -> PriorityClass:
        """Case-insensitive name ("high", "HIGH"); raises ``InvalidSpecError``."""
        try:
            return cls(value.strip().lower())
        except ValueError:
            names = ", ".join(p.value for p in cls)
            raise InvalidSpecError("priority", f"{value!r} is not one of {names}") from None


def _string_command(field_name: str, command: str) -> InvalidSpecError:
    words = command.split()
    shown = ", ".join(words[:3]) + (", ..." if len(words) > 3 else "")
    return InvalidSpecError(
        field_name,
        f"must be a list of arguments, not a string: use a list like [{shown}] "
        "(commands are exec'd directly, never through a shell)",
    )


def _non_negative(field_name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpecError(field_name, f"must be an integer, got {type(value).__name__}")
    if value < 0:
        raise InvalidSpecError(field_name, f"must be >= 0, got {value}")


def _strings(field_name: str, values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str | bytes):
        raise InvalidSpecError(field_name, "must be a list of strings, not a single string")
    out = tuple(values)
    for i, item in enumerate(out):
        if not isinstance(item, str):
            raise InvalidSpecError(f"{field_name}[{i}]", f"must be a string, got {item!r}")
    return out


def _frozen_map(field_name: str, values: Mapping[str, str]) -> Mapping[str, str]:
    if not isinstance(values, Mapping):
        raise InvalidSpecError(field_name, "must be a mapping of strings to strings")
    for key, value in values.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidSpecError(f"{field_name}.{key}", "keys and values must be strings")
    return types.MappingProxyType(dict(values))


@dataclass(frozen=True, kw_only=True)
class Resources:
    """Compute resources per node, and the node count of a gang job."""

    gpus: int = 0
    """GPUs per node; 0 for a CPU-only job."""
    gpu_type: str = ""
    """GPU model required (``"H100"``); empty means any type the site has."""
    cpus: int = 1
    """CPU cores per node."""
    memory_mb: int = 1024
    """Memory per node in MiB."""
    nodes: int = 1
    """Nodes of a gang job; all land at one site or none."""

    def __post_init__(self) -> None:
        for name in ("gpus", "cpus", "memory_mb", "nodes"):
            _non_negative(f"resources.{name}", getattr(self, name))

    def to_proto(self) -> types_pb2.Resources:
        """The wire message."""
        return types_pb2.Resources(
            gpus=self.gpus,
            gpu_type=self.gpu_type,
            cpus=self.cpus,
            memory_mb=self.memory_mb,
            nodes=self.nodes,
        )

    @classmethod
    def from_proto(cls, pb: types_pb2.Resources) -> Resources:
        """From the wire message; zeros become the server's defaults."""
        return cls(
            gpus=pb.gpus,
            gpu_type=pb.gpu_type,
            cpus=pb.cpus or 1,
            memory_mb=pb.memory_mb or 1024,
            nodes=pb.nodes or 1,
        )


@dataclass(frozen=True, kw_only=True)
class Placement:
    """Where a job may and may not run."""

    allowed_jurisdictions: tuple[str, ...] = ()
    """ISO 3166-1 alpha-2 codes the job's data may be processed in; empty means anywhere."""
    preferred_sites: tuple[str, ...] = ()
    """Site ids to prefer when several are feasible."""
    excluded_sites: tuple[str, ...] = ()
    """Site ids the job must never be placed on."""

    def __post_init__(self) -> None:
        for name in ("allowed_jurisdictions", "preferred_sites", "excluded_sites"):
            object.__setattr__(self, name, _strings(f"placement.{name}", getattr(self, name)))

    def to_proto(self) -> types_pb2.Placement:
        """The wire message."""
        return types_pb2.Placement(
            allowed_jurisdictions=self.allowed_jurisdictions,
            preferred_sites=self.preferred_sites,
            excluded_sites=self.excluded_sites,
        )

    @classmethod
    def from_proto(cls, pb: types_pb2.Placement) -> Placement:
        """From the wire message."""
        return cls(
            allowed_jurisdictions=tuple(pb.allowed_jurisdictions),
            preferred_sites=tuple(pb.preferred_sites),
            excluded_sites=tuple(pb.excluded_sites),
        )


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """What a tenant asks to run. Immutable; ``env`` and ``labels`` are read-only mappings."""

    name: str
    """1-128 letters, digits, '.', '_' or '-'."""
    tenant: str
    """Tenant that owns the job."""
    command: tuple[str, ...]
    """Program and arguments (argv), exec'd directly, never through a shell."""
    queue: str = "default"
    """Queue the job waits in."""
    priority: PriorityClass = PriorityClass.NORMAL
    """Priority class."""
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Extra environment variables of the job's process."""
    resources: Resources = field(default_factory=Resources)
    """Resources per node and node count."""
    placement: Placement = field(default_factory=Placement)
    """Residency and site preferences."""
    image: str = ""
    """Container image, for executors that run containers."""
    max_runtime_seconds: int = 0
    """Longest the job may run; 0 means no limit."""
    max_attempts: int = 1
    """Attempts allowed for failures of the job's own making."""
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Free-form labels for filtering."""
    client_request_id: str = ""
    """Idempotency key: a retried submit with the same key returns the same job."""

    def __post_init__(self) -> None:
        if isinstance(self.command, str):
            raise _string_command("command", self.command)
        object.__setattr__(self, "command", _strings("command", self.command))
        if not isinstance(self.priority, PriorityClass):
            object.__setattr__(self, "priority", PriorityClass.parse(str(self.priority)))
        object.__setattr__(self, "env", _frozen_map("env", self.env))
        object.__setattr__(self, "labels", _frozen_map("labels", self.labels))
        for name in ("max_runtime_seconds", "max_attempts"):
            _non_negative(name, getattr(self, name))

    def to_proto(self) -> types_pb2.JobSpec:
        """The wire message (``orchestrator.v1.JobSpec``)."""
        return types_pb2.JobSpec(
            name=self.name,
            tenant=self.tenant,
            queue=self.queue,
            priority=self.priority.to_proto(),
            command=self.command,
            env=dict(self.env),
            resources=self.resources.to_proto(),
            placement=self.placement.to_proto(),
            image=self.image,
            max_runtime_seconds=self.max_runtime_seconds,
            max_attempts=self.max_attempts,
            labels=dict(self.labels),
            client_request_id=self.client_request_id,
        )

    @classmethod
    def from_proto(cls, pb: types_pb2.JobSpec) -> JobSpec:
        """From the wire message; zeros become the server's defaults."""
        return cls(
            name=pb.name,
            tenant=pb.tenant,
            command=tuple(pb.command),
            queue=pb.queue or "default",
            priority=PriorityClass.from_proto(pb.priority),
            env=dict(pb.env),
            resources=Resources.from_proto(pb.resources),
            placement=Placement.from_proto(pb.placement),
            image=pb.image,
            max_runtime_seconds=pb.max_runtime_seconds,
            max_attempts=pb.max_attempts or 1,
            labels=dict(pb.labels),
            client_request_id=pb.client_request_id,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str = "") -> JobSpec:
        """From the YAML/JSON form. Unknown keys and bad values raise ``InvalidSpecError``
        naming the field by its path (prefixed with ``path``, e.g. ``jobs[2]``)."""
        return _parse_job(data, path)

    def validate(self) -> JobSpec:
        """Check the spec as the server will (``normalize_spec``); returns self."""
        normalize_spec(self.to_proto())
        return self


# --- the YAML/JSON form ---------------------------------------------------------------------

_JOB_KEYS = frozenset(
    {
        "name", "tenant", "queue", "priority", "command", "env", "resources", "placement",
        "image", "max_runtime_seconds", "max_attempts", "labels", "client_request_id",
    }
)  # fmt: skip
_RESOURCE_KEYS = frozenset({"gpus", "gpu_type", "cpus", "memory_mb", "nodes"})
_PLACEMENT_KEYS = frozenset({"allowed_jurisdictions", "preferred_sites", "excluded_sites"})


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _check_keys(data: object, allowed: frozenset[str], path: str, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidSpecError(path or what, f"must be a mapping of {what} fields")
    for key in data:
        if key not in allowed:
            raise InvalidSpecError(
                _join(path, str(key)), "unknown key; expected one of " + ", ".join(sorted(allowed))
            )
    return data


def _text(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise InvalidSpecError(path, f"must be a string, got {type(value).__name__} {value!r}")
    return value


def _scalar_text(value: object, path: str) -> str:
    """Strings as they are; numbers and booleans (``sleep 5``, ``DEBUG: true``) as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise InvalidSpecError(path, f"must be a string or number, got {type(value).__name__}")


def _integer(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpecError(path, f"must be an integer, got {type(value).__name__} {value!r}")
    if value < 0:
        raise InvalidSpecError(path, f"must be >= 0, got {value}")
    return value


def _text_list(value: object, path: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InvalidSpecError(path, f"must be a list of strings, got {type(value).__name__}")
    return tuple(_text(item, f"{path}[{i}]") for i, item in enumerate(value))


def _text_map(value: object, path: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise InvalidSpecError(path, f"must be a mapping, got {type(value).__name__}")
    return {_text(key, path): _scalar_text(item, f"{path}.{key}") for key, item in value.items()}


def _parse_job(data: object, path: str) -> JobSpec:
    entry = _check_keys(data, _JOB_KEYS, path, "job")
    for key in ("name", "tenant", "command"):
        if entry.get(key) is None:
            raise InvalidSpecError(_join(path, key), "is required")
    command = entry["command"]
    if isinstance(command, str):
        raise _string_command(_join(path, "command"), command)
    if not isinstance(command, list):
        raise InvalidSpecError(_join(path, "command"), "must be a list of arguments")
    kwargs: dict[str, Any] = {
        "name": _text(entry["name"], _join(path, "name")),
        "tenant": _text(entry["tenant"], _join(path, "tenant")),
        "command": tuple(
            _scalar_text(arg, f"{_join(path, 'command')}[{i}]") for i, arg in enumerate(command)
        ),
    }
    for key in ("queue", "image", "client_request_id"):
        if entry.get(key) is not None:
            kwargs[key] = _text(entry[key], _join(path, key))
    for key in ("max_runtime_seconds", "max_attempts"):
        if entry.get(key) is not None:
            kwargs[key] = _integer(entry[key], _join(path, key))
    if entry.get("priority") is not None:
        try:
            kwargs["priority"] = PriorityClass.parse(_text(entry["priority"], "priority"))
        except InvalidSpecError as exc:
            raise InvalidSpecError(_join(path, "priority"), exc.problem) from None
    for key in ("env", "labels"):
        if entry.get(key) is not None:
            kwargs[key] = _text_map(entry[key], _join(path, key))
    if entry.get("resources") is not None:
        rpath = _join(path, "resources")
        res = _check_keys(entry["resources"], _RESOURCE_KEYS, rpath, "resources")
        rkw: dict[str, Any] = {}
        for key, value in res.items():
            if key == "gpu_type":
                rkw[key] = _text(value, f"{rpath}.{key}")
            else:
                rkw[key] = _integer(value, f"{rpath}.{key}")
        kwargs["resources"] = Resources(**rkw)
    if entry.get("placement") is not None:
        ppath = _join(path, "placement")
        pl = _check_keys(entry["placement"], _PLACEMENT_KEYS, ppath, "placement")
        kwargs["placement"] = Placement(
            **{key: _text_list(value, f"{ppath}.{key}") for key, value in pl.items()}
        )
    return JobSpec(**kwargs)


def _copies(entry: Mapping[str, Any], path: str) -> tuple[Mapping[str, Any], int]:
    if not isinstance(entry, Mapping) or "count" not in entry:
        return entry, 1
    count = entry["count"]
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= _MAX_COUNT:
        raise InvalidSpecError(
            _join(path, "count"), f"must be an integer from 1 to {_MAX_COUNT}, got {count!r}"
        )
    return {k: v for k, v in entry.items() if k != "count"}, count


def _validated(spec: JobSpec, path: str) -> JobSpec:
    try:
        return spec.validate()
    except InvalidSpecError as exc:
        raise InvalidSpecError(_join(path, exc.field), exc.problem) from None


def parse_jobs(data: object) -> list[JobSpec]:
    """Job specs from loaded job-file data: one job, or ``{"jobs": [...]}``."""
    if isinstance(data, Mapping) and "jobs" in data:
        extra = sorted(str(k) for k in data if k != "jobs")
        if extra:
            raise InvalidSpecError(extra[0], "unknown key next to 'jobs'")
        entries = data["jobs"]
        if not isinstance(entries, list) or not entries:
            raise InvalidSpecError("jobs", "must be a non-empty list of jobs")
        items = [(entry, f"jobs[{i}]") for i, entry in enumerate(entries)]
    else:
        items = [(data, "")]
    specs: list[JobSpec] = []
    for entry, path in items:
        body, count = _copies(entry, path)
        spec = _validated(_parse_job(body, path), path)
        if count == 1:
            specs.append(spec)
            continue
        for i in range(count):
            rid = f"{spec.client_request_id}-{i}" if spec.client_request_id else ""
            copy = replace(spec, name=f"{spec.name}-{i}", client_request_id=rid)
            specs.append(_validated(copy, path))
    return specs


def load_job_file(path: str | os.PathLike[str]) -> list[JobSpec]:
    """Read a YAML (or JSON) job file. Raises ``InvalidSpecError`` naming the field and file."""
    source = os.fspath(path)
    data = read_yaml(source, field="file")
    try:
        return parse_jobs(data)
    except InvalidSpecError as exc:
        raise InvalidSpecError(exc.field, f"{exc.problem} (in {source})") from None
