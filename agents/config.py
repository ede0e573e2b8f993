"""Typed configuration of a site agent, built once by the entrypoint and passed down."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import TlsFiles
from orchestrator.errors import InvalidSpecError
from orchestrator.sitefile import SiteConfig, load_site_file, select_site

__all__ = ["AGENT_VERSION", "AgentConfig"]

AGENT_VERSION = "0.1.0"
"""Agent software version, reported in ``AgentHello.version``."""


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """Everything one site agent needs to run."""

    site: SiteConfig
    """The site this agent serves (from the site file)."""
    state_dir: Path
    """Directory for the journal and each attempt's output and working directory."""
    listen: str = "127.0.0.1:0"
    """``host:port`` to serve gRPC on; port 0 picks a free port."""
    kill_grace_seconds: float = 3.0
    """Seconds between SIGTERM and SIGKILL when an attempt is stopped and the cancel gives none."""
    heartbeat_interval_seconds: float = 1.0
    """Seconds between heartbeats when the dispatcher's hello asks for none."""
    lease_seconds: float = 56.0
    """Longest the agent keeps running attempts without a lease renewal from the control plane,
    when the dispatcher's hello names none. Past it the agent stops them itself (self-fencing),
    so that the control plane can run them elsewhere without overlap."""
    status_batch_max: int = 500
    """Most status updates sent in one ``StatusBatch``."""
    log_chunk_bytes: int = 64 * 1024
    """Largest ``LogChunk`` sent by ``ReadLogs``."""
    log_poll_seconds: float = 0.1
    """How often ``ReadLogs(follow=True)`` looks for new output."""
    shutdown_grace_seconds: float = 5.0
    """Seconds open RPCs get to finish when the agent stops serving."""
    max_connection_age_seconds: float = 24 * 3600.0
    """Connections (the control stream among them) are closed gracefully after this long, so
    that a renewed certificate reaches every connection; the dispatcher reconnects at once."""
    version: str = AGENT_VERSION
    """Version string reported to the control plane."""
    tls: TlsFiles | None = None
    """The agent's certificate (it must name ``site_server_name(site.id)``) and key, and the CA
    the control plane's client certificate must chain to (mutual TLS; only the control plane
    may call). None: plaintext, and anyone who can reach ``listen`` may call."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        if not _valid_listen(self.listen):
            raise InvalidSpecError("listen", f"{self.listen!r} is not host:port")
        for name, minimum in (
            ("kill_grace_seconds", 0.0),
            ("shutdown_grace_seconds", 0.0),
            ("heartbeat_interval_seconds", 0.001),
            ("lease_seconds", 0.01),
            ("log_poll_seconds", 0.001),
            ("max_connection_age_seconds", 1.0),
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < minimum:
                raise InvalidSpecError(
                    name, f"must be a finite number >= {minimum:g}, got {value!r}"
                )
        if self.status_batch_max < 1:
            raise InvalidSpecError("status_batch_max", "must be >= 1")
        if self.log_chunk_bytes < 1:
            raise InvalidSpecError("log_chunk_bytes", "must be >= 1")
        if self.tls is not None and self.tls.cert is None:
            raise InvalidSpecError("tls", "the agent needs its own certificate and key")

    @property
    def journal_path(self) -> Path:
        """The agent's SQLite journal."""
        return self.state_dir / "journal.sqlite3"

    @property
    def lease_path(self) -> Path:
        """The end of the agent's lease (epoch seconds): read by a restarted agent, and by each
        attempt's launch shim, which stops the job if the agent cannot when the lease ends.
        Kept up to date while the agent holds attempts (and before one starts); an idle agent
        leaves it as it was, which may say the lease is over (never that it runs longer than
        it does). An agent whose executor needs none (``Executor.needs_lease_file``: the simulated
        one) writes none."""
        return self.state_dir / "lease"

    @property
    def attempts_dir(self) -> Path:
        """Parent of each attempt's directory (output files and working directory)."""
        return self.state_dir / "attempts"

    @classmethod
    def from_site_file(
        cls,
        path: str | os.PathLike[str],
        site_id: str,
        *,
        state_dir: str | os.PathLike[str],
        listen: str = "127.0.0.1:0",
        kill_grace_seconds: float = 3.0,
        heartbeat_interval_seconds: float = 1.0,
        tls: TlsFiles | None = None,
    ) -> AgentConfig:
        """Load the site file and build the config of the agent for ``site_id``.

        Raises ``InvalidSpecError`` for a bad file and ``SiteNotFoundError`` when the file has no
        site ``site_id``.
        """
        site = select_site(load_site_file(path), site_id)
        return cls(
            site=site,
            state_dir=Path(state_dir),
            listen=listen,
            kill_grace_seconds=kill_grace_seconds,
            heartbeat_interval_seconds=heartbeat_interval_seconds,
            tls=tls,
        )


def _valid_listen(listen: str) -> bool:
    host, sep, port = listen.rpartition(":")
    return bool(sep and host and port.isdigit() and int(port) < 65536)
