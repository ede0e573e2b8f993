"""Validation and normalisation of job specs, sites, tenants and offers (domain code, no gRPC).

``normalize_spec`` returns a copy with defaults filled in, or raises ``InvalidSpecError``
naming the first bad field by its dotted path.

Every name and free-text field is checked against hostile input: no control or invisible
formatting characters (NUL, newlines, bidi overrides and isolates), bounded length, and for
names no path separators or ``..``. A field named after a map key that is itself hostile is
shown escaped (``labels['a/b']``), so error messages and logs stay one clean line.
"""

from __future__ import annotations

import re
import unicodedata

from orchestrator._pb.orchestrator.v1 import federation_pb2, types_pb2
from orchestrator.errors import InvalidSpecError
from orchestrator.jurisdictions import check_country, check_jurisdiction
from orchestrator.security.secrets import check_env_secrets

__all__ = [
    "MAX_ARGS",
    "normalize_offer",
    "normalize_policy",
    "normalize_site",
    "normalize_spec",
    "normalize_tenant",
    "validate_job_id",
    "validate_partner_id",
    "validate_reason",
    "validate_site_id",
    "validate_tenant_id",
]

# Patterns are matched whole (fullmatch): "$" would also accept a trailing newline.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SITE_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_JOB_ID_RE = re.compile(r"j-[0-9a-z]{10}-[0-9a-z]{6}")
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_GPU_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_IMAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,511}")
_SAFE_KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,39}")
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ENDPOINT_RE = re.compile(
    rf"(?P<host>{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9A-Fa-f:.]{{2,45}}\]):(?P<port>[0-9]{{1,5}})"
)

MAX_ARGS = 4096
_MAX_ARG_BYTES = 128 * 1024
_MAX_ENV = 256
_MAX_LABELS = 64
_MAX_VALUE = 4096
_MAX_GPUS_PER_NODE = 64
_MAX_NODES = 4096
_MAX_REASON = 1024
_MAX_HOUR_WINDOWS = 24
_MAX_OFFER_CODES = 256
_RESERVED_ENV = frozenset({"JOB_ID", "JOB_ATTEMPT", "TRACEPARENT", "CUDA_VISIBLE_DEVICES"})

DEFAULT_CPUS = 1
DEFAULT_MEMORY_MB = 1024


def _check_text(field: str, value: str, *, max_len: int = _MAX_VALUE) -> None:
    """Free text: bounded, no control, invisible formatting (bidi) or line-separator characters
    (the zero-width joiner of emoji sequences excepted)."""
    if len(value) > max_len:
        raise InvalidSpecError(field, f"longer than {max_len} characters")
    for ch in value:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cs", "Zl", "Zp") or (cat == "Cf" and ch != "\u200d"):
            raise InvalidSpecError(field, f"contains control character U+{ord(ch):04X}")


def _check_display_name(field: str, value: str, *, max_len: int) -> None:
    """Free text used as a name (shown in tables, maybe in paths): also no '/', '\\' or '..'."""
    _check_text(field, value, max_len=max_len)
    if "/" in value or "\\" in value:
        raise InvalidSpecError(field, "contains a path separator ('/' or '\\')")
    if ".." in value:
        raise InvalidSpecError(field, "contains '..'")


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "...")


def _check_name(field: str, value: str, pattern: re.Pattern[str], what: str) -> None:
    if not pattern.fullmatch(value):
        raise InvalidSpecError(field, f"{_shown(value)} is not {what}")


def _key_field(prefix: str, key: str) -> str:
    """The field name for map entry ``key``: ``labels.team``, or escaped when ``key`` is not
    plain (``labels['a/b']``), so a hostile key cannot bend the message."""
    if _SAFE_KEY_RE.fullmatch(key):
        return f"{prefix}.{key}"
    return f"{prefix}[{key[:40]!a}]"


def validate_job_id(job_id: str) -> None:
    """Raise unless ``job_id`` has the shape of an id this server makes."""
    _check_name("job_id", job_id, _JOB_ID_RE, "a job id (like j-01jc3k9x7m-4f9d2q)")


def validate_site_id(site_id: str) -> None:
    """Raise unless ``site_id`` is lowercase letters, digits and '-'."""
    _check_name("site_id", site_id, _SITE_ID_RE, "a site id (lowercase letters, digits, '-')")


def validate_partner_id(partner_id: str, *, field: str = "partner_id") -> None:
    """Raise unless ``partner_id`` is 1-128 letters, digits, '.', '_' or '-'."""
    _check_name(field, partner_id, _NAME_RE, "a partner id (1-128 letters, digits, '.', '_', '-')")


def validate_reason(reason: str, *, field: str = "reason") -> None:
    """Raise unless ``reason`` (why a job was cancelled, a site cordoned) is one line of at most
    1024 characters without control or bidi characters."""
    _check_text(field, reason, max_len=_MAX_REASON)


def _check_endpoint(field: str, endpoint: str) -> None:
    if len(endpoint) > 262:
        raise InvalidSpecError(field, "longer than 262 characters")
    m = _ENDPOINT_RE.fullmatch(endpoint)
    if m is None or len(m["host"]) > 253 or not 1 <= int(m["port"]) <= 65535:
        raise InvalidSpecError(
            field, f"{_shown(endpoint)} is not host:port (a DNS name, IPv4 or [IPv6] address)"
        )


def normalize_spec(spec: types_pb2.JobSpec) -> types_pb2.JobSpec:
    """A validated copy of ``spec`` with defaults filled in."""
    out = types_pb2.JobSpec()
    out.CopyFrom(spec)
    if not out.name:
        raise InvalidSpecError("name", "is required")
    _check_name("name", out.name, _NAME_RE, "1-128 letters, digits, '.', '_' or '-'")
    if not out.tenant:
        raise InvalidSpecError("tenant", "is required")
    _check_name("tenant", out.tenant, _NAME_RE, "1-128 letters, digits, '.', '_' or '-'")
    if not out.queue:
        out.queue = "default"
    _check_name("queue", out.queue, _NAME_RE, "1-128 letters, digits, '.', '_' or '-'")
    if out.priority == types_pb2.PRIORITY_CLASS_UNSPECIFIED:
        out.priority = types_pb2.PRIORITY_CLASS_NORMAL
    elif out.priority not in types_pb2.PriorityClass.values():
        raise InvalidSpecError("priority", f"unknown priority class {out.priority}")

    if not out.command:
        raise InvalidSpecError("command", "needs at least one element (the program)")
    if len(out.command) > MAX_ARGS:
        raise InvalidSpecError("command", f"more than {MAX_ARGS} arguments")
    if not out.command[0].strip():
        raise InvalidSpecError("command[0]", "the program is empty")
    for i, arg in enumerate(out.command):
        if "\x00" in arg:
            raise InvalidSpecError(f"command[{i}]", "contains a NUL byte")
        if len(arg.encode()) > _MAX_ARG_BYTES:
            raise InvalidSpecError(f"command[{i}]", f"longer than {_MAX_ARG_BYTES} bytes")

    if len(out.env) > _MAX_ENV:
        raise InvalidSpecError("env", f"more than {_MAX_ENV} variables")
    for key, value in out.env.items():
        if not _ENV_KEY_RE.fullmatch(key):
            raise InvalidSpecError(_key_field("env", key), "is not a valid variable name")
        if key in _RESERVED_ENV:
            raise InvalidSpecError(f"env.{key}", "is set by the orchestrator")
        if "\x00" in value or len(value) > _MAX_VALUE:
            raise InvalidSpecError(f"env.{key}", f"NUL byte or longer than {_MAX_VALUE}")
    check_env_secrets(out.env)

    res = out.resources
    if res.gpus > _MAX_GPUS_PER_NODE:
        raise InvalidSpecError("resources.gpus", f"at most {_MAX_GPUS_PER_NODE} per node")
    if res.gpu_type:
        _check_name("resources.gpu_type", res.gpu_type, _GPU_TYPE_RE, "a GPU type name")
        if res.gpus == 0:
            raise InvalidSpecError("resources.gpu_type", "set, but resources.gpus is 0")
    if res.nodes == 0:
        res.nodes = 1
    if res.nodes > _MAX_NODES:
        raise InvalidSpecError("resources.nodes", f"at most {_MAX_NODES}")
    if res.cpus == 0:
        res.cpus = DEFAULT_CPUS
    if res.memory_mb == 0:
        res.memory_mb = DEFAULT_MEMORY_MB

    seen: set[str] = set()
    for i, code in enumerate(out.placement.allowed_jurisdictions):
        field = f"placement.allowed_jurisdictions[{i}]"
        check_jurisdiction(field, code[:20])
        if code in seen:
            raise InvalidSpecError(field, f"{code} is listed twice")
        seen.add(code)
    for name in ("preferred_sites", "excluded_sites"):
        for i, site in enumerate(getattr(out.placement, name)):
            _check_name(f"placement.{name}[{i}]", site, _SITE_ID_RE, "a site id")

    if out.image:
        _check_name("image", out.image, _IMAGE_RE, "an image reference (registry/name:tag)")
        if ".." in out.image or "//" in out.image:
            raise InvalidSpecError("image", "contains '..' or '//'")
    if out.max_attempts == 0:
        out.max_attempts = 1
    if out.max_attempts > 100:
        raise InvalidSpecError("max_attempts", "at most 100")
    if len(out.labels) > _MAX_LABELS:
        raise InvalidSpecError("labels", f"more than {_MAX_LABELS} labels")
    for key, value in out.labels.items():
        _check_name(
            _key_field("labels", key), key, _LABEL_KEY_RE, "a label key (letters, digits, '._-')"
        )
        _check_display_name(f"labels.{key}", value, max_len=256)
    if out.client_request_id:
        _check_name(
            "client_request_id", out.client_request_id, _NAME_RE, "1-128 letters, digits, '.-_'"
        )
    return out


def normalize_site(site: types_pb2.Site) -> types_pb2.Site:
    """A validated copy of a site registration."""
    out = types_pb2.Site()
    out.CopyFrom(site)
    _check_name("site.id", out.id, _SITE_ID_RE, "a site id (lowercase letters, digits, '-')")
    if not out.name:
        out.name = out.id
    _check_display_name("site.name", out.name, max_len=128)
    if out.owner:
        validate_partner_id(out.owner, field="site.owner")
    check_country("site.jurisdiction", out.jurisdiction[:20])
    types: set[str] = set()
    for i, pool in enumerate(out.gpus):
        _check_name(f"site.gpus[{i}].type", pool.type, _GPU_TYPE_RE, "a GPU type name")
        if pool.type in types:
            raise InvalidSpecError(f"site.gpus[{i}].type", f"{pool.type} is listed twice")
        types.add(pool.type)
    if out.power_cap_mw < 0:
        raise InvalidSpecError("site.power_cap_mw", "must not be negative")
    if not out.endpoint:
        raise InvalidSpecError("site.endpoint", "is required (host:port of the site's agent)")
    for i, code in enumerate(out.home_countries):
        check_country(f"site.home_countries[{i}]", code[:20])
    if not 0 <= out.renewable_share <= 1:
        raise InvalidSpecError("site.renewable_share", "must be between 0 and 1")
    if out.carbon_intensity < 0:
        raise InvalidSpecError("site.carbon_intensity", "must not be negative")
    out.policy.CopyFrom(normalize_policy(out.policy, field="site.policy"))
    _check_endpoint("site.endpoint", out.endpoint)
    for i, region in enumerate(out.regions):
        _check_name(f"site.regions[{i}]", region, _NAME_RE, "a region tag")
    return out


def validate_tenant_id(tenant_id: str) -> None:
    """Raise unless ``tenant_id`` is 1-128 letters, digits, '.', '_' or '-'."""
    _check_name("tenant_id", tenant_id, _NAME_RE, "1-128 letters, digits, '.', '_' or '-'")


def normalize_policy(
    policy: types_pb2.SitePolicy, *, field: str = "policy"
) -> types_pb2.SitePolicy:
    """A validated copy of a site policy."""
    out = types_pb2.SitePolicy()
    out.CopyFrom(policy)
    for i, code in enumerate(out.allowed_tenant_countries):
        check_country(f"{field}.allowed_tenant_countries[{i}]", code[:20])
    for i, tenant in enumerate(out.allowed_tenants):
        _check_name(f"{field}.allowed_tenants[{i}]", tenant, _NAME_RE, "a tenant id")
    if not out.has_surplus_limit and out.surplus_gpus:
        raise InvalidSpecError(f"{field}.surplus_gpus", "set, but has_surplus_limit is false")
    return out


def normalize_tenant(tenant: types_pb2.Tenant) -> types_pb2.Tenant:
    """A validated copy of a tenant, weight defaulted to 1."""
    out = types_pb2.Tenant()
    out.CopyFrom(tenant)
    _check_name("tenant.id", out.id, _NAME_RE, "1-128 letters, digits, '.', '_' or '-'")
    if out.country:
        check_country("tenant.country", out.country[:20])
    if out.weight == 0:
        out.weight = 1.0
    if not (0 < out.weight <= 1000) or out.weight != out.weight:
        raise InvalidSpecError("tenant.weight", f"must be in (0, 1000], got {out.weight:g}")
    if not out.has_quota_gpus and out.quota_gpus:
        raise InvalidSpecError("tenant.quota_gpus", "set, but has_quota_gpus is false")
    for code in out.quota_gpus_by_jurisdiction:
        check_country(_key_field("tenant.quota_gpus_by_jurisdiction", code), code[:20])
    return out


def normalize_offer(offer: federation_pb2.CapacityOffer) -> federation_pb2.CapacityOffer:
    """A validated copy of a capacity offer.

    It needs a site, at least one GPU pool (a type, at least one GPU; watts are ignored), the
    tenants it is for (``tenant_countries`` or ``jurisdictions``, at least one of them), and at
    most 24 hour windows. ``created_at`` and ``active_now`` are the server's to set.
    """
    out = federation_pb2.CapacityOffer()
    out.CopyFrom(offer)
    if out.id:
        _check_name("offer.id", out.id, _NAME_RE, "an offer id (1-128 letters, digits, '._-')")
    _check_name("offer.site_id", out.site_id, _SITE_ID_RE, "a site id")
    if not out.gpus:
        raise InvalidSpecError("offer.gpus", "offers at least one GPU pool")
    types: set[str] = set()
    for i, pool in enumerate(out.gpus):
        _check_name(f"offer.gpus[{i}].type", pool.type, _GPU_TYPE_RE, "a GPU type name")
        if pool.type in types:
            raise InvalidSpecError(f"offer.gpus[{i}].type", f"{pool.type} is listed twice")
        types.add(pool.type)
        if pool.count < 1:
            raise InvalidSpecError(f"offer.gpus[{i}].count", "must be at least 1")
    if not out.tenant_countries and not out.jurisdictions:
        raise InvalidSpecError(
            "offer.tenant_countries", "name the tenants' countries, or jurisdictions, or both"
        )
    for name, check in (
        ("tenant_countries", check_country),
        ("jurisdictions", check_jurisdiction),
    ):
        codes = getattr(out, name)
        if len(codes) > _MAX_OFFER_CODES:
            raise InvalidSpecError(f"offer.{name}", f"more than {_MAX_OFFER_CODES} entries")
        seen: set[str] = set()
        for i, code in enumerate(codes):
            check(f"offer.{name}[{i}]", code[:20])
            if code in seen:
                raise InvalidSpecError(f"offer.{name}[{i}]", f"{code} is listed twice")
            seen.add(code)
    if len(out.hours) > _MAX_HOUR_WINDOWS:
        raise InvalidSpecError("offer.hours", f"at most {_MAX_HOUR_WINDOWS} windows")
    for i, window in enumerate(out.hours):
        if not 0 <= window.start_hour <= 23:
            raise InvalidSpecError(f"offer.hours[{i}].start_hour", "must be 0-23")
        if not 1 <= window.end_hour <= 24:
            raise InvalidSpecError(f"offer.hours[{i}].end_hour", "must be 1-24")
    return out
