"""The tenant file: tenants with home country, fair-share weight and GPU quotas.

tenants:
  - id: uio-research
    country: NO
    weight: 2
  - id: acme-ai
    country: US
    quota_gpus: 20000
    quota_gpus_by_jurisdiction: {US: 20000, NO: 0}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.errors import InvalidSpecError
from orchestrator.validation import normalize_tenant
from orchestrator.yamlfile import read_yaml

__all__ = ["load_tenant_file", "parse_tenants"]

_KEYS = frozenset({"id", "country", "weight", "quota_gpus", "quota_gpus_by_jurisdiction"})


def load_tenant_file(path: str | os.PathLike[str]) -> list[types_pb2.Tenant]:
    """Read and validate a tenant file. Errors name the field and the file."""
    source = os.fspath(path)
    try:
        return parse_tenants(read_yaml(source, field="tenants"))
    except InvalidSpecError as exc:
        raise InvalidSpecError(exc.field, f"{exc.problem} (in {source})") from None


def parse_tenants(data: object) -> list[types_pb2.Tenant]:
    """Validate already-loaded tenant file data (``{"tenants": [...]}``)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("tenants"), list):
        raise InvalidSpecError("tenants", "the file must hold 'tenants:' with a list")
    out: list[types_pb2.Tenant] = []
    seen: set[str] = set()
    for i, entry in enumerate(data["tenants"]):
        where = f"tenants[{i}]"
        if not isinstance(entry, Mapping):
            raise InvalidSpecError(where, "must be a mapping")
        unknown = sorted(str(k) for k in entry if k not in _KEYS)
        if unknown:
            expected = ", ".join(sorted(_KEYS))
            raise InvalidSpecError(
                f"{where}.{unknown[0]}", f"unknown key; expected one of {expected}"
            )
        tenant = types_pb2.Tenant(
            id=_str(entry, "id", where), country=_str(entry, "country", where)
        )
        if entry.get("weight") is not None:
            tenant.weight = _num(entry["weight"], f"{where}.weight")
        if entry.get("quota_gpus") is not None:
            tenant.has_quota_gpus = True
            tenant.quota_gpus = _int(entry["quota_gpus"], f"{where}.quota_gpus")
        by_j = entry.get("quota_gpus_by_jurisdiction")
        if by_j is not None:
            if not isinstance(by_j, Mapping):
                raise InvalidSpecError(f"{where}.quota_gpus_by_jurisdiction", "must be a mapping")
            for code, gpus in by_j.items():
                field = f"{where}.quota_gpus_by_jurisdiction.{code}"
                tenant.quota_gpus_by_jurisdiction[str(code)] = _int(gpus, field)
        try:
            tenant = normalize_tenant(tenant)
        except InvalidSpecError as exc:
            raise InvalidSpecError(
                f"{where}.{exc.field.removeprefix('tenant.')}", exc.problem
            ) from None
        if tenant.id in seen:
            raise InvalidSpecError(f"{where}.id", f"{tenant.id!r} is listed twice")
        seen.add(tenant.id)
        out.append(tenant)
    return out


def _str(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key, "")
    if not isinstance(value, str):
        raise InvalidSpecError(f"{where}.{key}", f"must be a string, got {value!r}")
    return value


def _num(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidSpecError(field, f"must be a number, got {value!r}")
    return float(value)


def _int(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidSpecError(field, f"must be a whole number >= 0, got {value!r}")
    return value
