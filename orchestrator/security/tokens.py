"""Bearer tokens: Ed25519-signed, expiring, scoped to a kind of caller.

Wire format (ASCII, at most :data:`MAX_TOKEN_LENGTH` characters)::

    sg1.<base64url(payload JSON)>.<base64url(signature)>

Base64url without padding; the Ed25519 signature covers the ASCII bytes ``sg1.<payload part>``.
The payload is a JSON object with exactly these keys:

    v        1
    kid      first 16 hex digits of SHA-256 of the raw public key that verifies it
    kind     operator | tenant | partner | enrolment
    sub      who holds it (``alice``, ``ops``)
    tenant   the tenant, for (and only for) tenant tokens
    partner  the partner, for (and only for) partner and enrolment tokens
    scopes   sorted list, a subset of the kind's DEFAULT_SCOPES
    aud      the audience (the federation's name)
    iat, nbf, exp   issued at, not before, expires at (integer epoch seconds)
    jti      random 128-bit id in hex

Parsing is strict (exact keys and types, canonical base64url, no duplicate keys), and no error
message, log record or exception chain ever carries the token: use :func:`redact` to mention a
token in a log line.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import logging
import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from orchestrator.errors import InvalidSpecError, UnauthenticatedError
from orchestrator.security.files import write_atomically

__all__ = [
    "ALL_SCOPES",
    "ANONYMOUS_OPERATOR",
    "CLOCK_SKEW_SECONDS",
    "DEFAULT_AUDIENCE",
    "DEFAULT_SCOPES",
    "FEDERATION_ADMIN",
    "FEDERATION_ENROL",
    "FEDERATION_MANAGE",
    "JOBS_CANCEL",
    "JOBS_READ",
    "JOBS_SUBMIT",
    "MAX_TOKEN_LENGTH",
    "MAX_TTL_SECONDS",
    "SIGNING_KEY_FILE",
    "SITES_ADMIN",
    "SITES_READ",
    "TENANTS_ADMIN",
    "TENANTS_READ",
    "USAGE_READ",
    "VERIFY_KEY_FILE",
    "CacheInfo",
    "Claims",
    "Kind",
    "Principal",
    "TokenSigner",
    "TokenVerifier",
    "decode_unverified",
    "generate_key_pair",
    "key_id",
    "redact",
    "write_key_pair",
]

log = logging.getLogger(__name__)


class Kind(enum.StrEnum):
    """Who a token is for; each kind has its own default (and largest) set of scopes."""

    OPERATOR = "operator"
    """Runs the federation: every scope."""
    TENANT = "tenant"
    """Submits and follows its own tenant's jobs."""
    PARTNER = "partner"
    """Owns sites: registers them, offers their capacity, reads their usage."""
    ENROLMENT = "enrolment"
    """Single-use: lets a new partner fetch its partner token."""


JOBS_SUBMIT: Final = "jobs:submit"
JOBS_READ: Final = "jobs:read"
JOBS_CANCEL: Final = "jobs:cancel"
SITES_READ: Final = "sites:read"
SITES_ADMIN: Final = "sites:admin"
TENANTS_READ: Final = "tenants:read"
TENANTS_ADMIN: Final = "tenants:admin"
FEDERATION_ENROL: Final = "federation:enrol"
FEDERATION_MANAGE: Final = "federation:manage"
FEDERATION_ADMIN: Final = "federation:admin"
USAGE_READ: Final = "usage:read"

#: Every scope a token can carry.
ALL_SCOPES: Final[frozenset[str]] = frozenset(
    {
        JOBS_SUBMIT,
        JOBS_READ,
        JOBS_CANCEL,
        SITES_READ,
        SITES_ADMIN,
        TENANTS_READ,
        TENANTS_ADMIN,
        FEDERATION_ENROL,
        FEDERATION_MANAGE,
        FEDERATION_ADMIN,
        USAGE_READ,
    }
)

#: The scopes a token of each kind gets by default; a token may carry fewer, never more.
DEFAULT_SCOPES: Final[Mapping[Kind, frozenset[str]]] = MappingProxyType(
    {
        Kind.OPERATOR: ALL_SCOPES,
        Kind.TENANT: frozenset({JOBS_SUBMIT, JOBS_READ, JOBS_CANCEL, SITES_READ, TENANTS_READ}),
        Kind.PARTNER: frozenset({SITES_READ, FEDERATION_MANAGE, USAGE_READ}),
        Kind.ENROLMENT: frozenset({FEDERATION_ENROL}),
    }
)

DEFAULT_AUDIENCE: Final = "sovereign-grid"
MAX_TOKEN_LENGTH: Final = 4096
MAX_TTL_SECONDS: Final = 400 * 86400
CLOCK_SKEW_SECONDS: Final = 30.0
SIGNING_KEY_FILE: Final = "token-signing.pem"
VERIFY_KEY_FILE: Final = "token-verify.pem"

_PREFIX = "sg1"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_KID_RE = re.compile(r"[0-9a-f]{16}")
_JTI_RE = re.compile(r"[0-9a-f]{32}")
_B64_RE = re.compile(r"[A-Za-z0-9_-]+")
_SIGNATURE_BYTES = 64
_MAX_TIME = 1 << 40  # year 36812: any later "epoch second" is garbage
_PAYLOAD_KEYS = frozenset(
    {"v", "kid", "kind", "sub", "tenant", "partner", "scopes", "aud", "iat", "nbf", "exp", "jti"}
)


def _party_of(kind: Kind) -> tuple[bool, bool]:
    """Whether a principal of ``kind`` names (a tenant, a partner)."""
    return kind is Kind.TENANT, kind in (Kind.PARTNER, Kind.ENROLMENT)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller, as its token describes it."""

    kind: Kind
    """What kind of caller."""
    subject: str
    """Who holds the token (``alice``, ``ops``)."""
    tenant: str = ""
    """The tenant of a tenant token; empty for every other kind."""
    partner: str = ""
    """The partner of a partner or enrolment token; empty for every other kind."""
    scopes: frozenset[str] = field(default_factory=frozenset)
    """What the token allows (see :data:`DEFAULT_SCOPES`)."""
    token_id: str = ""
    """The token's ``jti`` (empty for :data:`ANONYMOUS_OPERATOR`)."""
    expires_at: float = math.inf
    """When the token stops being accepted, in epoch seconds."""

    def __post_init__(self) -> None:
        kind = Kind(self.kind)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "scopes", frozenset(self.scopes))
        needs_tenant, needs_partner = _party_of(kind)
        if bool(self.tenant) != needs_tenant:
            raise ValueError(f"a {kind} principal {'needs' if needs_tenant else 'has no'} tenant")
        if bool(self.partner) != needs_partner:
            raise ValueError(f"a {kind} principal {'needs' if needs_partner else 'has no'} partner")

    @property
    def name(self) -> str:
        """For logs and errors: ``operator:root``, ``tenant:acme/alice``, ``partner:jv/ops``."""
        if self.kind is Kind.TENANT:
            return f"{self.kind}:{self.tenant}/{self.subject}"
        if self.kind in (Kind.PARTNER, Kind.ENROLMENT):
            return f"{self.kind}:{self.partner}/{self.subject}"
        return f"{self.kind}:{self.subject}"

    def has_scope(self, scope: str) -> bool:
        """Whether the token allows ``scope``."""
        return scope in self.scopes


#: The caller every request is taken to come from when authentication is disabled.
ANONYMOUS_OPERATOR: Final = Principal(
    kind=Kind.OPERATOR, subject="anonymous", scopes=DEFAULT_SCOPES[Kind.OPERATOR]
)


@dataclass(frozen=True)
class Claims:
    """The payload of a token, field by field (see the module docstring)."""

    kid: str
    kind: Kind
    sub: str
    tenant: str
    partner: str
    scopes: tuple[str, ...]
    aud: str
    iat: int
    nbf: int
    exp: int
    jti: str

    def to_dict(self) -> dict[str, Any]:
        """The payload as JSON-ready data, in wire order."""
        return {
            "v": 1,
            "kid": self.kid,
            "kind": str(self.kind),
            "sub": self.sub,
            "tenant": self.tenant,
            "partner": self.partner,
            "scopes": list(self.scopes),
            "aud": self.aud,
            "iat": self.iat,
            "nbf": self.nbf,
            "exp": self.exp,
            "jti": self.jti,
        }

    def principal(self) -> Principal:
        """The caller these claims describe."""
        return Principal(
            kind=self.kind,
            subject=self.sub,
            tenant=self.tenant,
            partner=self.partner,
            scopes=frozenset(self.scopes),
            token_id=self.jti,
            expires_at=float(self.exp),
        )


# -- encoding -----------------------------------------------------------------------------------


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _Malformed(Exception):
    """Why a token could not be parsed; never carries the token."""


def _b64decode(part: str, what: str) -> bytes:
    if not _B64_RE.fullmatch(part) or len(part) % 4 == 1:
        raise _Malformed(f"{what} is not base64url")
    try:
        data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise _Malformed(f"{what} is not base64url") from None
    if _b64encode(data) != part:  # unused low bits set: another spelling of the same bytes
        raise _Malformed(f"{what} is not canonical base64url")
    return data


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Malformed("payload repeats a key")
        out[key] = value
    return out


def _str_claim(payload: Mapping[str, Any], key: str) -> str:
    value = payload[key]
    if type(value) is not str:
        raise _Malformed(f"claim {key!r} is not a string")
    return value


def _int_claim(payload: Mapping[str, Any], key: str) -> int:
    value = payload[key]
    if type(value) is not int or not 0 <= value < _MAX_TIME:
        raise _Malformed(f"claim {key!r} is not a time in epoch seconds")
    return value


def _name_claim(payload: Mapping[str, Any], key: str, *, required: bool) -> str:
    value = _str_claim(payload, key)
    if not required and not value:
        return value
    if not _NAME_RE.fullmatch(value):
        raise _Malformed(f"claim {key!r} is not a valid name")
    return value


def _claims(payload: Mapping[str, Any]) -> Claims:
    """Strictly typed claims from a decoded payload."""
    if payload.keys() != _PAYLOAD_KEYS:
        raise _Malformed("payload does not have exactly the expected claims")
    if type(payload["v"]) is not int or payload["v"] != 1:
        raise _Malformed("unsupported version")
    kid = _str_claim(payload, "kid")
    if not _KID_RE.fullmatch(kid):
        raise _Malformed("claim 'kid' is not a key id")
    raw_kind = _str_claim(payload, "kind")
    try:
        kind = Kind(raw_kind)
    except ValueError:
        raise _Malformed("claim 'kind' is not a known kind") from None
    sub = _name_claim(payload, "sub", required=True)
    needs_tenant, needs_partner = _party_of(kind)
    tenant = _name_claim(payload, "tenant", required=needs_tenant)
    partner = _name_claim(payload, "partner", required=needs_partner)
    if bool(tenant) != needs_tenant:
        raise _Malformed(f"claim 'tenant' must {'' if needs_tenant else 'not '}be set for {kind}")
    if bool(partner) != needs_partner:
        raise _Malformed(f"claim 'partner' must {'' if needs_partner else 'not '}be set for {kind}")
    raw_scopes = payload["scopes"]
    if type(raw_scopes) is not list or not all(type(s) is str for s in raw_scopes):
        raise _Malformed("claim 'scopes' is not a list of strings")
    scopes = tuple(raw_scopes)
    if not scopes or list(scopes) != sorted(set(scopes)):
        raise _Malformed("claim 'scopes' is not a sorted list of distinct scopes")
    if not set(scopes) <= DEFAULT_SCOPES[kind]:
        raise _Malformed(f"claim 'scopes' goes beyond what a {kind} token may carry")
    aud = _name_claim(payload, "aud", required=True)
    iat, nbf, exp = (_int_claim(payload, k) for k in ("iat", "nbf", "exp"))
    if not iat <= nbf < exp or exp - iat > MAX_TTL_SECONDS:
        raise _Malformed("claims 'iat', 'nbf' and 'exp' are not a valid lifetime")
    jti = _str_claim(payload, "jti")
    if not _JTI_RE.fullmatch(jti):
        raise _Malformed("claim 'jti' is not a token id")
    return Claims(kid, kind, sub, tenant, partner, scopes, aud, iat, nbf, exp, jti)


@dataclass(frozen=True)
class _Parsed:
    claims: Claims
    signed: bytes
    signature: bytes


def _parse(token: str) -> _Parsed:
    """Split and strictly decode a token, without checking its signature."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise _Malformed(f"longer than {MAX_TOKEN_LENGTH} characters")
    if not token.isascii():
        raise _Malformed("not ASCII")
    parts = token.split(".")
    if len(parts) != 3:
        raise _Malformed("not three dot-separated parts")
    prefix, payload_part, signature_part = parts
    if prefix != _PREFIX:
        raise _Malformed(f"does not start with {_PREFIX}.")
    raw = _b64decode(payload_part, "payload")
    signature = _b64decode(signature_part, "signature")
    if len(signature) != _SIGNATURE_BYTES:
        raise _Malformed("signature has the wrong length")
    try:
        payload = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError):
        raise _Malformed("payload is not JSON") from None
    if not isinstance(payload, dict):
        raise _Malformed("payload is not a JSON object")
    return _Parsed(_claims(payload), f"{prefix}.{payload_part}".encode("ascii"), signature)


def decode_unverified(token: str) -> Claims:
    """The claims of ``token`` WITHOUT checking its signature, audience or times: for showing a
    token to people (``sgctl tokens inspect``), never for deciding anything.

    Raises ``UnauthenticatedError("malformed token (...)")`` when it cannot be parsed.
    """
    try:
        return _parse(token.strip()).claims
    except _Malformed as exc:
        raise UnauthenticatedError(f"malformed token ({exc})") from None


def redact(token: str) -> str:
    """A token's stand-in for log lines: ``sg1.…(jti 3f2a…)``; never the token itself."""
    try:
        jti = _parse(token).claims.jti
    except _Malformed:
        return "sg1.…(malformed)" if token else "(no token)"
    return f"sg1.…(jti {jti[:8]}…)"


# -- keys ---------------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    """The ``kid`` of a key: the first 16 hex digits of SHA-256 of its raw 32 bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_key_pair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair: (private key PEM (PKCS#8, unencrypted), public key PEM)."""
    key = Ed25519PrivateKey.generate()
    return _private_pem(key), _public_pem(key.public_key())


def _load_private(data: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise InvalidSpecError(where, "is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidSpecError(where, "is not an Ed25519 private key")
    return key


def _load_public(data: bytes, where: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise InvalidSpecError(where, "is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidSpecError(where, "is not an Ed25519 public key")
    return key


def write_key_pair(directory: str | Path, *, force: bool = False) -> tuple[Path, Path]:
    """Make sure ``directory`` holds a token key pair; returns (signing key, verify key) paths.

    ``token-signing.pem`` (mode 0600) and ``token-verify.pem`` are written atomically. An
    existing signing key is kept unless ``force``; the verify key is derived from it, and
    rewritten when missing or not matching. Safe to call on every start.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    signing, verify = d / SIGNING_KEY_FILE, d / VERIFY_KEY_FILE
    if signing.exists() and not force:
        key = _load_private(signing.read_bytes(), str(signing))
    else:
        key = Ed25519PrivateKey.generate()
        write_atomically(signing, _private_pem(key), mode=0o600)
        log.info("wrote a new token signing key %s (kid %s)", signing, key_id(key.public_key()))
    public = _public_pem(key.public_key())
    if not verify.exists() or verify.read_bytes() != public:
        write_atomically(verify, public, mode=0o644)
    return signing, verify


# -- signing ------------------------------------------------------------------------------------


def _check_issue_name(field_name: str, value: str) -> None:
    if not _NAME_RE.fullmatch(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidSpecError(
            field_name, f"{shown!r} is not 1-128 letters, digits, '.', '_', '@' or '-'"
        )


class TokenSigner:
    """Issues tokens with one Ed25519 private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.kid = key_id(private_key.public_key())
        """The key id every token it issues names."""

    @classmethod
    def from_file(cls, path: str | Path) -> TokenSigner:
        """A signer with the PEM private key at ``path`` (``sgctl tokens keygen`` writes one)."""
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise InvalidSpecError("signing_key", f"cannot read {p}: {exc.strerror}") from None
        if p.stat().st_mode & 0o077:
            log.warning("token signing key %s is readable by others; chmod 600 it", p)
        return cls(_load_private(data, str(p)))

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The key that verifies this signer's tokens."""
        return self._key.public_key()

    def issue(
        self,
        kind: Kind,
        subject: str,
        *,
        tenant: str = "",
        partner: str = "",
        scopes: Iterable[str] | None = None,
        ttl_seconds: int,
        audience: str = DEFAULT_AUDIENCE,
        now: float | None = None,
    ) -> tuple[str, Principal]:
        """A new token and the principal it stands for.

        ``scopes`` defaults to the kind's :data:`DEFAULT_SCOPES`; more than those raises
        ``InvalidSpecError("scopes", ...)`` naming the scope. ``ttl_seconds``: 1 s to 400 days.
        """
        try:
            kind = Kind(kind)
        except ValueError:
            raise InvalidSpecError("kind", f"{kind!r} is not a token kind") from None
        _check_issue_name("subject", subject)
        needs_tenant, needs_partner = _party_of(kind)
        if needs_tenant:
            _check_issue_name("tenant", tenant)
        elif tenant:
            raise InvalidSpecError("tenant", f"only tenant tokens name a tenant, not {kind}")
        if needs_partner:
            _check_issue_name("partner", partner)
        elif partner:
            raise InvalidSpecError("partner", f"only partner tokens name a partner, not {kind}")
        allowed = DEFAULT_SCOPES[kind]
        if isinstance(scopes, str):
            raise InvalidSpecError("scopes", "give a collection of scopes, not one string")
        chosen = allowed if scopes is None else frozenset(scopes)
        for scope in sorted(chosen):
            if scope not in ALL_SCOPES:
                raise InvalidSpecError("scopes", f"unknown scope {scope!r}")
            if scope not in allowed:
                raise InvalidSpecError("scopes", f"{scope!r} is beyond what a {kind} token allows")
        if not chosen:
            raise InvalidSpecError("scopes", "a token needs at least one scope")
        if type(ttl_seconds) is not int or not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
            raise InvalidSpecError(
                "ttl_seconds", f"must be a whole number from 1 to {MAX_TTL_SECONDS} (400 days)"
            )
        _check_issue_name("audience", audience)
        iat = int(time.time() if now is None else now)
        claims = Claims(
            kid=self.kid,
            kind=kind,
            sub=subject,
            tenant=tenant,
            partner=partner,
            scopes=tuple(sorted(chosen)),
            aud=audience,
            iat=iat,
            nbf=iat,
            exp=iat + ttl_seconds,
            jti=secrets.token_hex(16),
        )
        payload = json.dumps(claims.to_dict(), separators=(",", ":")).encode("utf-8")
        signed = f"{_PREFIX}.{_b64encode(payload)}"
        token = f"{signed}.{_b64encode(self._key.sign(signed.encode('ascii')))}"
        return token, claims.principal()


# -- verifying ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheInfo:
    """How a verifier's caches are doing."""

    hits: int
    """Answers from the caches."""
    misses: int
    """Tokens verified from scratch."""
    entries: int
    """Tokens remembered as valid."""
    negative_entries: int
    """Tokens remembered as refused."""


class _Refused(Exception):
    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


class TokenVerifier:
    """Checks tokens against a set of public keys (several during a key rotation).

    Verifying a signature costs about 100 microseconds, so results are cached: up to
    ``cache_size`` valid tokens (expiry re-checked on every hit) and ``negative_cache_size``
    refused ones, least recently used out first. Caches are keyed by the token's SHA-256, so
    memory stays bounded whatever callers send, and tokens are not kept in memory.
    """

    def __init__(
        self,
        keys: Iterable[Ed25519PublicKey],
        *,
        audience: str = DEFAULT_AUDIENCE,
        clock_skew: float = CLOCK_SKEW_SECONDS,
        cache_size: int = 10_000,
        negative_cache_size: int = 1_000,
    ) -> None:
        self._keys = {key_id(k): k for k in keys}
        if not self._keys:
            raise InvalidSpecError("token_verify_keys", "at least one key is needed")
        if cache_size < 0 or negative_cache_size < 0 or clock_skew < 0:
            raise InvalidSpecError("cache_size", "cache sizes and clock skew must be >= 0")
        self.audience = audience
        """The audience every accepted token must name."""
        self.clock_skew = clock_skew
        """Seconds of clock difference tolerated on ``nbf`` and ``exp``."""
        self._cache_size = cache_size
        self._negative_size = negative_cache_size
        self._valid: OrderedDict[bytes, tuple[Principal, int]] = OrderedDict()
        self._refused: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    @classmethod
    def from_files(
        cls, paths: Iterable[str | Path], *, audience: str = DEFAULT_AUDIENCE
    ) -> TokenVerifier:
        """A verifier trusting the PEM public keys at ``paths``."""
        keys = []
        for path in paths:
            p = Path(path)
            try:
                data = p.read_bytes()
            except OSError as exc:
                raise InvalidSpecError(
                    "token_verify_keys", f"cannot read {p}: {exc.strerror}"
                ) from None
            keys.append(_load_public(data, str(p)))
        return cls(keys, audience=audience)

    @property
    def key_ids(self) -> frozenset[str]:
        """The ids of the keys trusted."""
        return frozenset(self._keys)

    def cache_info(self) -> CacheInfo:
        """Hits, misses and sizes of the caches."""
        with self._lock:
            return CacheInfo(self._hits, self._misses, len(self._valid), len(self._refused))

    def verify(self, token: str, *, now: float | None = None) -> Principal:
        """The principal ``token`` stands for, or ``UnauthenticatedError`` saying what is wrong
        (never quoting the token)."""
        if not token:
            raise UnauthenticatedError("no bearer token")
        if len(token) > MAX_TOKEN_LENGTH:  # before hashing: no work for floods of huge tokens
            raise UnauthenticatedError(
                f"malformed token (longer than {MAX_TOKEN_LENGTH} characters)"
            )
        t = time.time() if now is None else now
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        with self._lock:
            cached = self._valid.get(digest)
            refused = None if cached is not None else self._refused.get(digest)
            if cached is not None:
                self._valid.move_to_end(digest)
                self._hits += 1
            elif refused is not None:
                self._refused.move_to_end(digest)
                self._hits += 1
            else:
                self._misses += 1
        if refused is not None:
            raise UnauthenticatedError(refused)
        try:
            if cached is not None:
                principal, nbf = cached
                self._check_times(nbf, int(principal.expires_at), t)
                return principal
            principal, nbf = self._verify(token)
            self._check_times(nbf, int(principal.expires_at), t)
        except _Refused as exc:
            with self._lock:
                self._valid.pop(digest, None)
                if exc.permanent and self._negative_size:
                    self._refused[digest] = exc.message
                    while len(self._refused) > self._negative_size:
                        self._refused.popitem(last=False)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("refused token %s: %s", redact(token), exc.message)
            raise UnauthenticatedError(exc.message) from None
        if self._cache_size:
            with self._lock:
                self._valid[digest] = (principal, nbf)
                while len(self._valid) > self._cache_size:
                    self._valid.popitem(last=False)
        return principal

    def _verify(self, token: str) -> tuple[Principal, int]:
        try:
            parsed = _parse(token)
        except _Malformed as exc:
            raise _Refused(f"malformed token ({exc})", permanent=True) from None
        claims = parsed.claims
        key = self._keys.get(claims.kid)
        if key is None:
            raise _Refused("token signed by an unknown key", permanent=True)
        try:
            key.verify(parsed.signature, parsed.signed)
        except InvalidSignature:
            raise _Refused("token signature does not verify", permanent=True) from None
        if claims.aud != self.audience:
            raise _Refused(
                f"token is for audience {claims.aud!r}, not {self.audience!r}", permanent=True
            )
        return claims.principal(), claims.nbf

    def _check_times(self, nbf: int, exp: int, now: float) -> None:
        if now + self.clock_skew < nbf:
            raise _Refused(f"token not valid before {_utc(nbf)}", permanent=False)
        if now - self.clock_skew >= exp:
            raise _Refused(f"token expired at {_utc(exp)}", permanent=True)
