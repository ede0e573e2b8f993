"""Typed configuration, read once at the entrypoints (``from_env``) and passed down.

Nothing below the entrypoints reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from orchestrator.errors import InvalidSpecError

if TYPE_CHECKING:
    from orchestrator.scheduler.model import Weights

__all__ = ["ControlPlaneConfig", "RedisConfig", "SchedulerConfig", "SecurityConfig", "TlsFiles"]


@dataclass(frozen=True, repr=False)
class RedisConfig:
    """How to reach the queue store.

    Credentials go either in the URL or in ``username``/``password`` (not both); the password
    is never shown: ``repr`` masks it and log lines use ``display_url``.
    """

    url: str = "redis://127.0.0.1:6379/0"
    """``redis://[user:password@]host:port/db``, ``rediss://`` for TLS, or ``unix://path``."""
    prefix: str = "sg:"
    """Prefix of every key this orchestrator writes, so several can share one Redis."""
    socket_timeout: float = 5.0
    """Seconds before a Redis command is given up as unavailable."""
    username: str | None = None
    """ACL user to authenticate as; None: the user in the URL, else Redis's ``default``."""
    password: str | None = None
    """Password of the user; None: the one in the URL, if any."""
    ssl_ca_certs: str | None = None
    """CA bundle to verify a ``rediss://`` server with; the system store when unset."""
    ssl_certfile: str | None = None
    """Client certificate (PEM) for a ``rediss://`` server that requires one."""
    ssl_keyfile: str | None = None
    """Private key (PEM) of ``ssl_certfile``; set exactly when it is."""
    max_connections: int = 64
    """Connections per process for commands; more concurrent requests wait for one."""
    max_watch_connections: int = 256
    """Connections per process for blocking reads (clients following a job's events)."""

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        url_user, url_password = _url_credentials(self.url)
        if self.password is not None and url_password is not None:
            raise InvalidSpecError(
                "password", "given both in the URL and in the config; give it once"
            )
        if self.username is not None and url_user is not None:
            raise InvalidSpecError(
                "username", "given both in the URL and in the config; give it once"
            )
        if (self.username or url_user) and (self.password or url_password) is None:
            raise InvalidSpecError("password", "a username needs a password")
        if parts.scheme != "rediss":
            for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name) is not None:
                    raise InvalidSpecError(
                        name, f"TLS files need a rediss:// URL, got {parts.scheme}://"
                    )
        if self.ssl_certfile is not None and self.ssl_keyfile is None:
            raise InvalidSpecError("ssl_keyfile", "a client certificate needs its key")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise InvalidSpecError("ssl_certfile", "a client key needs its certificate")
        query = parse_qs(parts.query)
        cert_reqs = query.get("ssl_cert_reqs", ["required"])[-1].lower()
        check_hostname = query.get("ssl_check_hostname", ["true"])[-1].upper()
        if cert_reqs != "required" or check_hostname in ("0", "F", "FALSE", "N", "NO"):
            raise InvalidSpecError(
                "redis_url",
                "the server's certificate is always verified: remove ssl_cert_reqs "
                "and ssl_check_hostname from the URL",
            )

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "url":
                value = self.display_url
            elif f.name == "password" and value is not None:
                value = _MASK
            shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    @property
    def display_url(self) -> str:
        """``url`` with any password masked, for log lines and messages."""
        return _masked_url(self.url)

    @classmethod
    def from_url(cls, url: str, **overrides: object) -> RedisConfig:
        """Validate ``url`` and build a config from it."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise InvalidSpecError(
                "redis_url",
                f"scheme must be redis://, rediss:// or unix://, got {_masked_url(url)!r}",
            )
        if parts.scheme != "unix" and not parts.hostname:
            raise InvalidSpecError("redis_url", f"no host in {_masked_url(url)!r}")
        return cls(url=url, **overrides)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RedisConfig:
        """``SG_REDIS_URL``, ``SG_REDIS_PREFIX``; ``SG_REDIS_USERNAME`` and ``SG_REDIS_PASSWORD``
        or ``SG_REDIS_PASSWORD_FILE`` (a file holding the password); ``SG_REDIS_CA_CERTS``,
        ``SG_REDIS_CERT`` and ``SG_REDIS_KEY`` (PEM files, for ``rediss://``)."""
        base = cls()
        password = env.get("SG_REDIS_PASSWORD") or None
        password_file = env.get("SG_REDIS_PASSWORD_FILE") or None
        if password is not None and password_file is not None:
            raise InvalidSpecError(
                "SG_REDIS_PASSWORD", "set SG_REDIS_PASSWORD or SG_REDIS_PASSWORD_FILE, not both"
            )
        if password_file is not None:
            password = _read_password(password_file)
        return cls.from_url(
            env.get("SG_REDIS_URL", base.url),
            prefix=env.get("SG_REDIS_PREFIX", base.prefix),
            username=env.get("SG_REDIS_USERNAME") or None,
            password=password,
            ssl_ca_certs=env.get("SG_REDIS_CA_CERTS") or None,
            ssl_certfile=env.get("SG_REDIS_CERT") or None,
            ssl_keyfile=env.get("SG_REDIS_KEY") or None,
        )


_MASK = "***"


def _url_credentials(url: str) -> tuple[str | None, str | None]:
    """User and password a Redis URL carries, in its authority or as ``?password=``."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return user or query.get("username", [None])[-1], password or query.get("password", [None])[-1]


def _masked_url(url: str) -> str:
    """``url`` with the password of its authority and any ``password=`` query value masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:{_MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, _MASK if k == "password" else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _read_password(path: str) -> str:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InvalidSpecError(
            "SG_REDIS_PASSWORD_FILE", f"cannot read it: {exc.strerror}"
        ) from None
    password = text.removesuffix("\n").removesuffix("\r")
    if not password:
        raise InvalidSpecError("SG_REDIS_PASSWORD_FILE", "the file is empty")
    return password


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one TLS identity and the CA it trusts.

    Files are read when a connection is made, not once: replacing them on disk takes effect for
    new connections without a restart (see ``orchestrator.security.tls``).
    """

    ca: Path
    """CA certificate(s) the peer's certificate must chain to."""
    cert: Path | None = None
    """This side's certificate (chain); None for a client without a certificate."""
    key: Path | None = None
    """This side's private key; set exactly when ``cert`` is."""

    def __post_init__(self) -> None:
        for name in ("ca", "cert", "key"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        if (self.cert is None) != (self.key is None):
            raise InvalidSpecError("tls", "a certificate needs its key and a key its certificate")

    @classmethod
    def in_dir(cls, directory: str | Path, name: str | None) -> TlsFiles:
        """The files ``sgctl certs init`` writes: ``ca.pem``, ``<name>.pem``, ``<name>-key.pem``
        (no identity when ``name`` is None)."""
        d = Path(directory)
        if name is None:
            return cls(ca=d / "ca.pem")
        return cls(ca=d / "ca.pem", cert=d / f"{name}.pem", key=d / f"{name}-key.pem")


@dataclass(frozen=True)
class SecurityConfig:
    """Transport security, authentication and limits of the control plane and its API.

    ``insecure`` is the one way to run without TLS, and says so loudly in the logs. Without
    ``token_verify_keys`` the API authenticates nobody and treats every caller as an operator
    (also logged loudly); the embedded default always configures keys.
    """

    insecure: bool = False
    """Plaintext gRPC everywhere (API and agent streams)."""
    api_tls: TlsFiles | None = None
    """The API server's certificate and key (``ca`` is not used to verify API clients, which
    authenticate with tokens). Required unless ``insecure``."""
    agent_tls: TlsFiles | None = None
    """The control plane's client identity toward site agents, and the CA their certificates
    chain to. Required unless ``insecure``."""
    issuing_ca: TlsFiles | None = None
    """CA certificate and key that sign the certificates of partners' sites (``RegisterSite``
    with a CSR); None: sites get no certificate from the API."""
    token_verify_keys: tuple[Path, ...] = ()
    """Ed25519 public keys (PEM) whose signatures on bearer tokens are accepted."""
    token_signing_key: Path | None = None
    """Ed25519 private key (PEM) the API signs enrolment and partner tokens with."""
    token_audience: str = "sovereign-grid"  # noqa: S105 - an audience name, not a secret
    """Audience every accepted token must name."""
    rate_per_second: float = 200.0
    """Calls per second allowed per principal (token bucket)."""
    rate_burst: int = 400
    """Burst above the rate allowed per principal."""
    max_concurrent_rpcs: int = 2000
    """Calls in progress at once on one API server; more answer RESOURCE_EXHAUSTED."""
    max_message_bytes: int = 4 * 1024 * 1024
    """Largest request message the API accepts."""
    max_metadata_bytes: int = 16 * 1024
    """Largest request metadata (headers) the API accepts."""
    max_connection_age_seconds: float = 3600.0
    """Connections are closed (gracefully) after this long, so that replaced certificates reach
    every client."""

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "token_verify_keys", tuple(Path(k) for k in self.token_verify_keys)
        )
        if self.token_signing_key is not None:
            object.__setattr__(self, "token_signing_key", Path(self.token_signing_key))
        if not self.insecure:
            for name in ("api_tls", "agent_tls"):
                files = getattr(self, name)
                if files is None or files.cert is None:
                    raise InvalidSpecError(
                        name, "TLS needs a certificate and key (or run insecure, in plaintext)"
                    )
        if not self.rate_per_second > 0 or self.rate_burst < 1:
            raise InvalidSpecError("rate_per_second", "rate and burst must be positive")
        for name in ("max_concurrent_rpcs", "max_message_bytes", "max_metadata_bytes"):
            if getattr(self, name) < 1:
                raise InvalidSpecError(name, "must be >= 1")

    @property
    def auth_enabled(self) -> bool:
        """Whether the API requires a bearer token on every call."""
        return bool(self.token_verify_keys)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SecurityConfig:
        """``SG_INSECURE=1``; ``SG_TLS_DIR`` (the layout of ``sgctl certs init``: the API
        certificate ``api``, the control plane's ``control-plane``); ``SG_ISSUING_CA_DIR``;
        ``SG_TOKEN_VERIFY_KEYS`` (comma-separated paths); ``SG_TOKEN_SIGNING_KEY``;
        ``SG_TOKEN_AUDIENCE``; ``SG_RATE_PER_SECOND``; ``SG_RATE_BURST``."""
        base = cls(insecure=True)
        insecure = env.get("SG_INSECURE", "").lower() in ("1", "true", "yes")
        tls_dir = env.get("SG_TLS_DIR")
        ca_dir = env.get("SG_ISSUING_CA_DIR")
        keys = tuple(Path(k) for k in env.get("SG_TOKEN_VERIFY_KEYS", "").split(",") if k.strip())
        signing = env.get("SG_TOKEN_SIGNING_KEY")
        try:
            rate = float(env.get("SG_RATE_PER_SECOND", base.rate_per_second))
            burst = int(env.get("SG_RATE_BURST", base.rate_burst))
        except ValueError:
            raise InvalidSpecError("SG_RATE_PER_SECOND", "rate and burst must be numbers") from None
        return cls(
            insecure=insecure,
            api_tls=TlsFiles.in_dir(tls_dir, "api") if tls_dir else None,
            agent_tls=TlsFiles.in_dir(tls_dir, "control-plane") if tls_dir else None,
            issuing_ca=TlsFiles.in_dir(ca_dir, "ca") if ca_dir else None,
            token_verify_keys=keys,
            token_signing_key=Path(signing) if signing else None,
            token_audience=env.get("SG_TOKEN_AUDIENCE", base.token_audience),
            rate_per_second=rate,
            rate_burst=burst,
        )


def _default_weights() -> Weights:
    from orchestrator.scheduler.model import Weights  # the scheduler package imports this one

    return Weights()


@dataclass(frozen=True)
class SchedulerConfig:
    """Knobs of the placement loop."""

    window: int = 2000
    """Most pending jobs read per placement cycle (cycle cost is bounded by this, not the queue)."""
    idle_interval_seconds: float = 0.05
    """Pause between cycles when the last one placed nothing."""
    gather_seconds: float = 0.01
    """After a wake-up (new jobs, freed capacity), how long to let more arrive before the
    cycle: a burst of submits is placed in one cycle instead of several. Every job waits up
    to this long for placement."""
    site_stale_after_seconds: float = 15.0
    """A connected site silent for longer than this gets no new work until heard from."""
    lost_after_seconds: float = 60.0
    """A site not heard from for longer than this is declared LOST: its attempts are requeued
    (attempt + 1) to sites their residency allows. WAN-friendly by default; a site's agent stops
    its own attempts before this (see ``ControlPlaneConfig.lease_seconds``)."""
    preemption_window_seconds: float = 600.0
    """A job preempted less than this long ago is not preempted again."""
    weights: Weights = field(default_factory=_default_weights)
    """Site scoring among feasible sites (home, preferred, renewable, carbon, packing)."""


@dataclass(frozen=True)
class ControlPlaneConfig:
    """Everything the control plane (scheduler, dispatchers, API server) needs."""

    redis: RedisConfig = field(default_factory=RedisConfig)
    """The queue store."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    """The placement loop."""
    dispatchers: int = 2
    """Dispatcher actors; sites are spread over them (not one process per site)."""
    api_listen: str = "127.0.0.1:50051"
    """Address the API server listens on."""
    ray_address: str | None = None
    """An existing Ray cluster to join; None starts a local Ray instance."""
    ray_namespace: str = "sovereign-grid"
    """Ray namespace of the control plane's named actors."""
    heartbeat_interval_seconds: float = 5.0
    """Seconds between agent heartbeats asked for on each stream. Each renews the site's lease,
    so it only needs to be well inside ``lost_after`` (60 s): at 5 s a thousand idle connected
    sites cost the control plane about 4% of a core, at 1 s about a quarter of one."""
    kill_grace_seconds: float = 3.0
    """Seconds between SIGTERM and SIGKILL when a job is cancelled."""
    state_dir: Path = Path(".sg")
    """Where the embedded default keeps Redis data, Ray's temp dir, logs and agents' state."""
    security: SecurityConfig = field(default_factory=lambda: SecurityConfig(insecure=True))
    """TLS, tokens and limits. The library default is plaintext without authentication (for
    tests and embedding); entrypoints build it from the environment or flags."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ControlPlaneConfig:
        """Read ``SG_*`` variables; unset ones keep their defaults."""
        base = cls()
        scheduler = SchedulerConfig()
        heartbeat = base.heartbeat_interval_seconds
        if env.get("SG_LOST_AFTER"):
            lost_after = _seconds(env, "SG_LOST_AFTER")
            scheduler = dataclasses.replace(
                scheduler,
                lost_after_seconds=lost_after,
                # no new work for a site silent for a while, well before it is declared lost
                site_stale_after_seconds=min(scheduler.site_stale_after_seconds, lost_after / 2),
            )
            # a dozen heartbeats per lost_after, as the defaults have (5 s in 60 s)
            heartbeat = min(heartbeat, lost_after / 12)
        if env.get("SG_HEARTBEAT_INTERVAL"):
            heartbeat = _seconds(env, "SG_HEARTBEAT_INTERVAL")
        return cls(
            redis=RedisConfig.from_env(env),
            scheduler=scheduler,
            heartbeat_interval_seconds=heartbeat,
            kill_grace_seconds=(
                _seconds(env, "SG_KILL_GRACE")
                if env.get("SG_KILL_GRACE")
                else base.kill_grace_seconds
            ),
            dispatchers=int(env.get("SG_DISPATCHERS", base.dispatchers)),
            api_listen=env.get("SG_API_LISTEN", base.api_listen),
            ray_address=env.get("SG_RAY_ADDRESS") or None,
            state_dir=Path(env.get("SG_STATE_DIR", str(base.state_dir))),
            security=SecurityConfig.from_env(env),
        )

    def __post_init__(self) -> None:
        lost = self.scheduler.lost_after_seconds
        floor = self.kill_grace_seconds + 2 * self.heartbeat_interval_seconds
        if lost <= floor:
            raise InvalidSpecError(
                "lost_after_seconds",
                f"must exceed the kill grace plus two heartbeats ({floor:g}s), got {lost:g}",
            )

    @property
    def lease_seconds(self) -> float:
        """How long an agent keeps running attempts without hearing that the control plane
        recorded its heartbeat: short enough that its processes are gone (kill grace included)
        before the site is declared lost and the attempts are run elsewhere."""
        return (
            self.scheduler.lost_after_seconds
            - self.kill_grace_seconds
            - self.heartbeat_interval_seconds
        )


def _seconds(env: Mapping[str, str], name: str) -> float:
    raw = env[name]
    try:
        value = float(raw)
    except ValueError:
        raise InvalidSpecError(name, f"must be a number of seconds, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise InvalidSpecError(name, f"must be a positive number of seconds, got {raw!r}")
    return value
