"""Typed configuration, read once at the entrypoints (``from_env``) and passed down.

Nothing below the entrypoints reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from orchestrator.errors import InvalidSpecError

if TYPE_CHECKING:
    from orchestrator.scheduler.model import Weights

__all__ = ["ControlPlaneConfig", "RedisConfig", "SchedulerConfig"]


@dataclass(frozen=True)
class RedisConfig:
    """How to reach the queue store."""

    url: str = "redis://127.0.0.1:6379/0"
    """``redis://[user:password@]host:port/db``, or ``rediss://`` for TLS."""
    prefix: str = "sg:"
    """Prefix of every key this orchestrator writes, so several can share one Redis."""
    socket_timeout: float = 5.0
    """Seconds before a Redis command is given up as unavailable."""
    ssl_ca_certs: str | None = None
    """CA bundle to verify a ``rediss://`` server with; the system store when unset."""
    max_connections: int = 64
    """Connections per process for commands; more concurrent requests wait for one."""
    max_watch_connections: int = 256
    """Connections per process for blocking reads (clients following a job's events)."""

    @classmethod
    def from_url(cls, url: str, **overrides: object) -> RedisConfig:
        """Validate ``url`` and build a config from it."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise InvalidSpecError(
                "redis_url", f"scheme must be redis://, rediss:// or unix://, got {url!r}"
            )
        if parts.scheme != "unix" and not parts.hostname:
            raise InvalidSpecError("redis_url", f"no host in {url!r}")
        return dataclasses.replace(cls(url=url), **overrides)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RedisConfig:
        """``SG_REDIS_URL``, ``SG_REDIS_PREFIX``, ``SG_REDIS_CA_CERTS``."""
        base = cls()
        return cls.from_url(
            env.get("SG_REDIS_URL", base.url),
            prefix=env.get("SG_REDIS_PREFIX", base.prefix),
            ssl_ca_certs=env.get("SG_REDIS_CA_CERTS") or None,
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
    heartbeat_interval_seconds: float = 1.0
    """Seconds between agent heartbeats asked for on each stream."""
    kill_grace_seconds: float = 3.0
    """Seconds between SIGTERM and SIGKILL when a job is cancelled."""
    state_dir: Path = Path(".sg")
    """Where the embedded default keeps Redis data, Ray's temp dir, logs and agents' state."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ControlPlaneConfig:
        """Read ``SG_*`` variables; unset ones keep their defaults."""
        base = cls()
        scheduler = SchedulerConfig()
        if env.get("SG_LOST_AFTER"):
            lost_after = _seconds(env, "SG_LOST_AFTER")
            scheduler = dataclasses.replace(
                scheduler,
                lost_after_seconds=lost_after,
                # no new work for a site silent for a while, well before it is declared lost
                site_stale_after_seconds=min(scheduler.site_stale_after_seconds, lost_after / 2),
            )
        return cls(
            redis=RedisConfig.from_env(env),
            scheduler=scheduler,
            heartbeat_interval_seconds=(
                _seconds(env, "SG_HEARTBEAT_INTERVAL")
                if env.get("SG_HEARTBEAT_INTERVAL")
                else base.heartbeat_interval_seconds
            ),
            kill_grace_seconds=(
                _seconds(env, "SG_KILL_GRACE")
                if env.get("SG_KILL_GRACE")
                else base.kill_grace_seconds
            ),
            dispatchers=int(env.get("SG_DISPATCHERS", base.dispatchers)),
            api_listen=env.get("SG_API_LISTEN", base.api_listen),
            ray_address=env.get("SG_RAY_ADDRESS") or None,
            state_dir=Path(env.get("SG_STATE_DIR", str(base.state_dir))),
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
