"""The site file: the sites of a federation, as YAML, shared by the control plane and the agents.

A site file looks like this (see ``examples/sites.yaml``)::

    sites:
      - id: narvik
        name: Narvik
        jurisdiction: NO
        regions: [eu, nordics]
        owner: narvik-jv
        power_cap_mw: 230
        cpus: 1600000
        memory_mb: 12800000000
        gpus: {H100: 60000, GB200: 40000}
        gpu_watts: {H100: 700, GB200: 1200}   # optional
        home_countries: [NO]                   # optional
        renewable_share: 1.0                   # optional, 0..1

The file is read with YAML 1.2 booleans: only ``true``/``false`` are booleans, so ``NO`` (Norway)
stays a string instead of turning into ``false``. A bad file raises ``InvalidSpecError`` whose
``field`` is the path of the bad value (``sites[1].jurisdiction``) and whose ``problem`` names the
file. Unknown keys are rejected by name, so a typo never silently drops a setting.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.errors import InvalidSpecError, SiteNotFoundError
from orchestrator.jurisdictions import ISO_COUNTRY_CODES, check_country
from orchestrator.yamlfile import read_yaml

__all__ = [
    "ISO_COUNTRY_CODES",
    "FrozenMapping",
    "SiteConfig",
    "load_site_file",
    "parse_sites",
    "select_site",
]

_SITE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_GPU_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
_REGION_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


K = TypeVar("K")
V = TypeVar("V")


class FrozenMapping(Mapping[K, V]):
    """An immutable, hashable mapping that keeps insertion order (used for GPU pools)."""

    __slots__ = ("_data", "_hash")

    def __init__(self, items: Mapping[K, V] | Sequence[tuple[K, V]] = ()) -> None:
        self._data: dict[K, V] = dict(items)
        self._hash: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._data) == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMapping({self._data!r})"


@dataclass(frozen=True, kw_only=True)
class SiteConfig:
    """One site of the federation, as declared in the site file.

    Constructing one validates it; a bad value raises ``InvalidSpecError`` naming the field.
    """

    id: str
    """Stable site id: 1-63 lowercase letters, digits and '-', starting with a letter or digit."""
    name: str
    """Display name."""
    jurisdiction: str
    """ISO 3166-1 alpha-2 code (upper case) of the country whose law governs the site."""
    owner: str
    """The partner that owns and runs the site."""
    power_cap_mw: float
    """Power cap of the site in megawatts (> 0)."""
    cpus: int
    """CPU cores schedulable at the site (> 0)."""
    memory_mb: int
    """Memory schedulable at the site, in MiB (> 0)."""
    regions: tuple[str, ...] = ()
    """Region tags, for example ``("eu", "nordics")``."""
    gpus: Mapping[str, int] = field(default_factory=FrozenMapping)
    """GPU count by GPU type (``{"H100": 60000}``), in declaration order; stored frozen."""
    gpu_watts: Mapping[str, int] = field(default_factory=FrozenMapping)
    """Watts drawn per GPU, by GPU type; each type must be one of ``gpus``. Optional."""
    home_countries: tuple[str, ...] = ()
    """Countries (ISO codes) whose tenants get home-ecosystem priority here. Optional."""
    renewable_share: float = 0.0
    """Share of the site's power from renewable sources, 0..1."""
    carbon_intensity: float = 0.0
    """Grams of CO2 per kWh of the site's power supply (>= 0)."""
    planned_power_mw: float = 0.0
    """Power capacity planned beyond ``power_cap_mw`` (informational, never scheduled)."""
    allowed_tenant_countries: tuple[str, ...] = ()
    """Owner's policy: tenants from these countries may run here (empty: any country)."""
    allowed_tenants: tuple[str, ...] = ()
    """Owner's policy: these tenants may run here whatever their country."""
    surplus_gpus: int | None = None
    """Owner's policy: most GPUs non-home tenants may hold at once (None: no limit)."""

    def __post_init__(self) -> None:
        # Normalise containers so the dataclass stays immutable and hashable.
        object.__setattr__(self, "regions", tuple(self.regions))
        object.__setattr__(self, "home_countries", tuple(self.home_countries))
        object.__setattr__(self, "allowed_tenant_countries", tuple(self.allowed_tenant_countries))
        object.__setattr__(self, "allowed_tenants", tuple(self.allowed_tenants))
        object.__setattr__(self, "gpus", FrozenMapping(self.gpus))
        object.__setattr__(self, "gpu_watts", FrozenMapping(self.gpu_watts))
        object.__setattr__(self, "power_cap_mw", float(self.power_cap_mw))
        object.__setattr__(self, "renewable_share", float(self.renewable_share))
        object.__setattr__(self, "carbon_intensity", float(self.carbon_intensity))
        object.__setattr__(self, "planned_power_mw", float(self.planned_power_mw))
        self._validate()

    def _validate(self) -> None:
        if not _SITE_ID_RE.match(self.id):
            raise InvalidSpecError(
                "id", f"{self.id!r} is not 1-63 lowercase letters, digits and '-'"
            )
        for name in ("name", "owner"):
            if not getattr(self, name).strip():
                raise InvalidSpecError(name, "must not be empty")
        _check_country("jurisdiction", self.jurisdiction)
        for i, code in enumerate(self.home_countries):
            _check_country(f"home_countries[{i}]", code)
        for i, code in enumerate(self.allowed_tenant_countries):
            _check_country(f"allowed_tenant_countries[{i}]", code)
        if self.surplus_gpus is not None and self.surplus_gpus < 0:
            raise InvalidSpecError("surplus_gpus", f"must be >= 0, got {self.surplus_gpus}")
        for name in ("carbon_intensity", "planned_power_mw"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise InvalidSpecError(name, f"must be >= 0, got {value:g}")
        for i, region in enumerate(self.regions):
            if not _REGION_RE.match(region):
                raise InvalidSpecError(
                    f"regions[{i}]", f"{region!r} is not 1-32 lowercase letters, digits and '-'"
                )
        if len(set(self.regions)) != len(self.regions):
            raise InvalidSpecError("regions", "lists a region twice")
        if not math.isfinite(self.power_cap_mw) or self.power_cap_mw <= 0:
            raise InvalidSpecError("power_cap_mw", f"must be > 0, got {self.power_cap_mw:g}")
        if self.cpus <= 0:
            raise InvalidSpecError("cpus", f"must be > 0, got {self.cpus}")
        if self.memory_mb <= 0:
            raise InvalidSpecError("memory_mb", f"must be > 0, got {self.memory_mb}")
        for gpu_type, count in self.gpus.items():
            if not _GPU_TYPE_RE.match(gpu_type):
                raise InvalidSpecError("gpus", f"{gpu_type!r} is not a GPU type name")
            if count < 0:
                raise InvalidSpecError(f"gpus.{gpu_type}", f"must be >= 0, got {count}")
        for gpu_type, watts in self.gpu_watts.items():
            if gpu_type not in self.gpus:
                raise InvalidSpecError(
                    f"gpu_watts.{gpu_type}", f"{gpu_type!r} is not one of this site's gpus"
                )
            if watts <= 0:
                raise InvalidSpecError(f"gpu_watts.{gpu_type}", f"must be > 0, got {watts}")
        if not 0.0 <= self.renewable_share <= 1.0:
            raise InvalidSpecError(
                "renewable_share", f"must be between 0 and 1, got {self.renewable_share:g}"
            )

    @property
    def total_gpus(self) -> int:
        """GPUs of all types at the site."""
        return sum(self.gpus.values())

    def to_proto(self) -> types_pb2.Site:
        """The registration message for this site. ``endpoint`` is left empty for the caller."""
        policy = types_pb2.SitePolicy(
            allowed_tenant_countries=list(self.allowed_tenant_countries),
            allowed_tenants=list(self.allowed_tenants),
            has_surplus_limit=self.surplus_gpus is not None,
            surplus_gpus=self.surplus_gpus or 0,
        )
        return types_pb2.Site(
            id=self.id,
            name=self.name,
            jurisdiction=self.jurisdiction,
            regions=list(self.regions),
            gpus=[
                types_pb2.GpuPool(type=t, count=n, watts=self.gpu_watts.get(t, 0))
                for t, n in self.gpus.items()
            ],
            power_cap_mw=self.power_cap_mw,
            owner=self.owner,
            cpus=self.cpus,
            memory_mb=self.memory_mb,
            home_countries=list(self.home_countries),
            renewable_share=self.renewable_share,
            carbon_intensity=self.carbon_intensity,
            policy=policy,
            planned_power_mw=self.planned_power_mw,
        )

    @classmethod
    def from_proto(cls, site: types_pb2.Site) -> SiteConfig:
        """A site from its registration message."""
        gpus: dict[str, int] = {}
        watts: dict[str, int] = {}
        for pool in site.gpus:
            if pool.type in gpus:
                raise InvalidSpecError("gpus", f"GPU type {pool.type!r} listed twice")
            gpus[pool.type] = pool.count
            if pool.watts:
                watts[pool.type] = pool.watts
        return cls(
            id=site.id,
            name=site.name,
            jurisdiction=site.jurisdiction,
            regions=tuple(site.regions),
            gpus=gpus,
            gpu_watts=watts,
            power_cap_mw=site.power_cap_mw,
            owner=site.owner,
            cpus=site.cpus,
            memory_mb=site.memory_mb,
            home_countries=tuple(site.home_countries),
            renewable_share=site.renewable_share,
            carbon_intensity=site.carbon_intensity,
            planned_power_mw=site.planned_power_mw,
            allowed_tenant_countries=tuple(site.policy.allowed_tenant_countries),
            allowed_tenants=tuple(site.policy.allowed_tenants),
            surplus_gpus=site.policy.surplus_gpus if site.policy.has_surplus_limit else None,
        )


def _check_country(field_name: str, code: str) -> None:
    check_country(field_name, code)


# --- parsing -----------------------------------------------------------------------------------

_REQUIRED_KEYS = ("id", "name", "jurisdiction", "owner", "power_cap_mw", "cpus", "memory_mb")
_OPTIONAL_KEYS = (
    "regions",
    "gpus",
    "gpu_watts",
    "home_countries",
    "renewable_share",
    "carbon_intensity",
    "planned_power_mw",
    "policy",
)
_POLICY_KEYS = frozenset({"allowed_tenant_countries", "allowed_tenants", "surplus_gpus"})
_ALL_KEYS = frozenset(_REQUIRED_KEYS + _OPTIONAL_KEYS)


def load_site_file(path: str | os.PathLike[str]) -> list[SiteConfig]:
    """Read and validate a site file. Raises ``InvalidSpecError`` naming the field and file."""
    source = os.fspath(path)
    data = read_yaml(source, field="sites")
    return parse_sites(data, source=source)


def parse_sites(data: object, *, source: str = "<data>") -> list[SiteConfig]:
    """Validate already-loaded site file data (``{"sites": [...]}``) into site configs."""
    if not isinstance(data, Mapping):
        raise InvalidSpecError(
            "sites", f"the file must be a mapping with a 'sites' list (in {source})"
        )
    extra = sorted(str(k) for k in data if k != "sites")
    if extra:
        raise InvalidSpecError(extra[0], f"unknown key (expected only 'sites') (in {source})")
    entries = data.get("sites")
    if not isinstance(entries, list):
        raise InvalidSpecError("sites", f"must be a list of sites (in {source})")
    sites: list[SiteConfig] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        prefix = f"sites[{index}]"
        site = _parse_site(entry, prefix=prefix, source=source)
        if site.id in seen:
            raise InvalidSpecError(
                f"{prefix}.id",
                f"duplicate site id {site.id!r} (also sites[{seen[site.id]}]) (in {source})",
            )
        seen[site.id] = index
        sites.append(site)
    return sites


def select_site(sites: Sequence[SiteConfig], site_id: str) -> SiteConfig:
    """The site with id ``site_id``; ``SiteNotFoundError`` if there is none."""
    for site in sites:
        if site.id == site_id:
            return site
    raise SiteNotFoundError(site_id)


def _parse_site(entry: object, *, prefix: str, source: str) -> SiteConfig:
    def bad(field_name: str, problem: str) -> InvalidSpecError:
        return InvalidSpecError(f"{prefix}.{field_name}", f"{problem} (in {source})")

    if not isinstance(entry, Mapping):
        raise InvalidSpecError(prefix, f"must be a mapping of site fields (in {source})")
    unknown = sorted(str(k) for k in entry if k not in _ALL_KEYS)
    if unknown:
        raise bad(unknown[0], "unknown key; expected one of " + ", ".join(sorted(_ALL_KEYS)))
    for key in _REQUIRED_KEYS:
        if entry.get(key) is None:
            raise bad(key, "is required")

    kwargs: dict[str, Any] = {
        "id": _text(entry["id"], bad, "id"),
        "name": _text(entry["name"], bad, "name"),
        "jurisdiction": _text(entry["jurisdiction"], bad, "jurisdiction"),
        "owner": _text(entry["owner"], bad, "owner"),
        "power_cap_mw": _number(entry["power_cap_mw"], bad, "power_cap_mw"),
        "cpus": _integer(entry["cpus"], bad, "cpus"),
        "memory_mb": _integer(entry["memory_mb"], bad, "memory_mb"),
    }
    if entry.get("regions") is not None:
        kwargs["regions"] = _text_list(entry["regions"], bad, "regions")
    if entry.get("home_countries") is not None:
        kwargs["home_countries"] = _text_list(entry["home_countries"], bad, "home_countries")
    if entry.get("gpus") is not None:
        kwargs["gpus"] = _int_map(entry["gpus"], bad, "gpus")
    if entry.get("gpu_watts") is not None:
        kwargs["gpu_watts"] = _int_map(entry["gpu_watts"], bad, "gpu_watts")
    for key in ("renewable_share", "carbon_intensity", "planned_power_mw"):
        if entry.get(key) is not None:
            kwargs[key] = _number(entry[key], bad, key)
    policy = entry.get("policy")
    if policy is not None:
        if not isinstance(policy, Mapping):
            raise bad("policy", "must be a mapping")
        unknown_policy = sorted(str(k) for k in policy if k not in _POLICY_KEYS)
        if unknown_policy:
            raise bad(
                f"policy.{unknown_policy[0]}",
                "unknown key; expected one of " + ", ".join(sorted(_POLICY_KEYS)),
            )
        for key in ("allowed_tenant_countries", "allowed_tenants"):
            if policy.get(key) is not None:
                kwargs[key] = _text_list(policy[key], bad, f"policy.{key}")
        if policy.get("surplus_gpus") is not None:
            kwargs["surplus_gpus"] = _integer(policy["surplus_gpus"], bad, "policy.surplus_gpus")
    try:
        return SiteConfig(**kwargs)
    except InvalidSpecError as exc:
        raise bad(exc.field, exc.problem) from None


_Bad = Callable[[str, str], InvalidSpecError]


def _text(value: object, bad: _Bad, name: str) -> str:
    if not isinstance(value, str):
        raise bad(name, f"must be a string, got {type(value).__name__} {value!r}")
    return value


def _number(value: object, bad: _Bad, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(name, f"must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def _integer(value: object, bad: _Bad, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(name, f"must be an integer, got {type(value).__name__} {value!r}")
    return value


def _text_list(value: object, bad: _Bad, name: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise bad(name, f"must be a list of strings, got {type(value).__name__}")
    return tuple(_text(item, bad, f"{name}[{i}]") for i, item in enumerate(value))


def _int_map(value: object, bad: _Bad, name: str) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise bad(name, f"must be a mapping of GPU type to count, got {type(value).__name__}")
    out: dict[str, int] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise bad(name, f"GPU type {key!r} must be a string")
        out[key] = _integer(item, bad, f"{name}.{key}")
    return out
