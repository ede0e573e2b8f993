"""A whole federation as separate processes, for fault scenarios: ``Cluster``.

- A network of hosts from ``make_network()``: one host (network namespace) per site, or the
  loopback fallback where namespaces cannot be made.
- Redis: a ``LocalRedis`` (AOF, ``appendfsync always``) on a free port, in the cluster's directory;
  it can be killed with SIGKILL and restarted on the same port and data.
- The control plane as plain role processes in the root namespace (``python -m
  orchestrator.roles``): ``api``, ``scheduler``, ``dispatcher-0``, ``dispatcher-1``; each can be
  killed (SIGKILL) and restarted, with or without a crash point (``SG_CRASH_AT``).
- One ``sg-agent`` per site, inside its host, listening on the host's address; in front of it a
  ``DelayProxy`` in the root namespace with the site's one-way WAN delay, and the site is
  registered with the proxy's address, so every byte between a dispatcher and an agent crosses
  the proxy (delay, partitions).

Every process the cluster starts carries a marker variable (``SG_FAULTS_RUN``) in its environment,
and so do the jobs (the agent passes its environment on), so that ``stop()`` can find and kill
whatever is left, wherever it was reparented, even after a failure half-way. Each process logs to
``<base>/logs/<name>.log`` (appended across restarts, one header line per start).

The cluster is synchronous (process control and the proxies' own threads); scenarios call its
slower methods (restarts wait for readiness) through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.config import RedisConfig
from orchestrator.dispatch.dispatcher import owner_of
from orchestrator.processes import stop_process
from orchestrator.sitefile import SiteConfig
from orchestrator.store import JobStore, LocalRedis, free_port
from orchestrator.validation import normalize_site

from .netns import Host, LoopbackNetwork, Network, make_network
from .proxy import DelayProxy, Which

__all__ = [
    "CONTROL_PLANE",
    "REPO",
    "SITES",
    "Cluster",
    "ClusterError",
    "SiteSpec",
    "Timings",
]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
"""The repository root (the processes' working directory)."""
JOBPROG = REPO / "tests" / "faults" / "jobprog.py"
MARKER = "SG_FAULTS_RUN"
"""Environment variable naming the cluster in every process it starts (and their jobs)."""
OWNER = "SG_FAULTS_OWNER"
"""Environment variable with the pid of the process that owns the cluster: processes of a run
whose owner died (killed before it could clean up) are killed by the next cluster's start."""
DISPATCHERS = 2
CONTROL_PLANE = ("api", "scheduler", *(f"dispatcher-{i}" for i in range(DISPATCHERS)))
"""Names of the control-plane roles, each one process."""
_READY_TIMEOUT = 20.0
_AGENT_PORT = 7400

T = TypeVar("T")


class ClusterError(RuntimeError):
    """A process of the cluster did not start or stop as it should; the message has its log."""


@dataclass(frozen=True)
class Timings:
    """The control plane's timings for fault runs (short, so faults play out in seconds)."""

    heartbeat: float = 0.3
    """Seconds between agent heartbeats (``SG_HEARTBEAT_INTERVAL``)."""
    kill_grace: float = 1.0
    """SIGTERM-to-SIGKILL grace (``SG_KILL_GRACE``, ``sg-agent --kill-grace``)."""
    lost_after: float = 4.0
    """A site silent this long is declared LOST (``SG_LOST_AFTER``)."""

    @property
    def lease(self) -> float:
        """The agents' lease: ``lost_after - kill_grace - heartbeat`` (as the control plane
        computes it, ``ControlPlaneConfig.lease_seconds``)."""
        return self.lost_after - self.kill_grace - self.heartbeat

    @property
    def overlap_bound(self) -> float:
        """How long two attempts of one job may overlap: the lease plus the kill grace."""
        return self.lease + self.kill_grace


@dataclass(frozen=True)
class SiteSpec:
    """One site of the fault cluster and the WAN between it and the control plane."""

    config: SiteConfig
    """The site as its agent and the registry see it."""
    delay_ms: float
    """One-way delay of its link, each direction."""
    jitter_ms: float = 5.0
    """Uniform jitter on the delay (never reorders)."""

    @property
    def id(self) -> str:
        """The site id."""
        return self.config.id


def _site(
    site_id: str, name: str, jurisdiction: str, gpus: Mapping[str, int], delay_ms: float
) -> SiteSpec:
    return SiteSpec(
        SiteConfig(
            id=site_id,
            name=name,
            jurisdiction=jurisdiction,
            owner=f"{site_id}-owner",
            power_cap_mw=10,
            cpus=32,  # jobs take 1 CPU: about 30 at once per site
            memory_mb=32 * 1024 * 4,
            gpus=gpus,
        ),
        delay_ms=delay_ms,
    )


SITES: tuple[SiteSpec, ...] = (
    _site("narvik", "Narvik", "NO", {"H100": 4, "GB200": 2}, 40),
    _site("abu-dhabi", "Abu Dhabi", "AE", {"H100": 4}, 90),
    _site("abilene", "Abilene", "US", {"GB200": 4}, 120),
)
"""Narvik (NO, 40 ms one way), Abu Dhabi (AE, 90 ms) and Abilene (US, 120 ms)."""


class _Proc:
    """A process of the cluster: its Popen, its log and how it was started."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path
        self.stopped = False  # SIGSTOPped by us

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL it (a crash: no clean stop) and reap it."""
        stop_process(self.popen, timeout=10, first=signal.SIGKILL)
        self.stopped = False


class Cluster:
    """The federation of the module docstring. Use as a context manager, or ``start()`` and
    ``stop()`` (which is safe after any failure and leaves nothing running)."""

    def __init__(
        self,
        base_dir: Path,
        *,
        timings: Timings | None = None,
        sites: Iterable[SiteSpec] = SITES,
        seed: int = 0,
        prefer_netns: bool = True,
        redis_prefix: str = "sgf:",
    ) -> None:
        self.base_dir = Path(base_dir)
        self.timings = timings or Timings()
        self.sites: dict[str, SiteSpec] = {s.id: s for s in sites}
        self.seed = seed
        self.run_id = secrets.token_hex(6)
        """The value of ``SG_FAULTS_RUN`` in every process of this cluster."""
        self._prefer_netns = prefer_netns
        self._redis_prefix = redis_prefix
        self.network: Network | LoopbackNetwork | None = None
        self.hosts: dict[str, Host] = {}
        self.proxies: dict[str, DelayProxy] = {}
        self.redis: LocalRedis | None = None
        self.roles: dict[str, _Proc] = {}
        self.agents: dict[str, _Proc] = {}
        self._agent_addr: dict[str, str] = {}
        self._api_listen = ""
        self._links_down: set[str] = set()
        self._lock = threading.RLock()
        self.logs_dir = self.base_dir / "logs"
        self.site_file = self.base_dir / "sites.json"

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the network, Redis, the agents behind their proxies, register the sites, and
        the control plane; return once every site is connected and ACTIVE."""
        try:
            kill_orphans()
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            self.site_file.write_text(
                json.dumps({"sites": [_site_dict(s.config) for s in self.sites.values()]})
            )
            self.network = make_network(prefer_netns=self._prefer_netns)
            self.network.start()
            self.redis = LocalRedis(self.base_dir / "redis")
            self.redis.start()
            self._api_listen = f"127.0.0.1:{free_port()}"
            for i, spec in enumerate(self.sites.values()):
                host = self.network.add_host(spec.id)
                self.hosts[spec.id] = host
                port = _AGENT_PORT if host.netns else free_port()
                self._agent_addr[spec.id] = f"{host.ip}:{port}"
                proxy = DelayProxy(
                    host.ip,
                    port,
                    delay_ms=spec.delay_ms,
                    jitter_ms=spec.jitter_ms,
                    seed=self.seed * 1000 + i,
                )
                self.proxies[spec.id] = proxy.start()
                self.start_agent(spec.id)
            self.run(self._register_sites())
            for name in CONTROL_PLANE:
                self.start_role(name)
            self.run(self.wait_healthy(timeout=30))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything (SIGKILL: nothing here needs a clean stop) and delete the network."""
        with self._lock:
            for proc in [*self.roles.values(), *self.agents.values()]:
                if proc.stopped:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            self._kill_marked()
            for proxy in self.proxies.values():
                with contextlib.suppress(Exception):
                    proxy.stop()
            self.proxies.clear()
            if self.network is not None:
                self.network.close()
                self.network = None
            if self.redis is not None:
                self.redis.stop()
            self._kill_marked()  # anything that slipped through (jobs started meanwhile)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- facts ----------------------------------------------------------------------------------

    @property
    def kind(self) -> Literal["netns", "loopback"]:
        """Whether the hosts are network namespaces or share loopback."""
        return self.network.kind if self.network is not None else "loopback"

    @property
    def api_address(self) -> str:
        """``host:port`` of the API server."""
        return self._api_listen

    @property
    def redis_config(self) -> RedisConfig:
        """How to reach the cluster's Redis (under its key prefix)."""
        if self.redis is None:
            raise RuntimeError("cluster not started")
        return RedisConfig(url=self.redis.url, prefix=self._redis_prefix, socket_timeout=2.0)

    @property
    def site_jurisdictions(self) -> dict[str, str]:
        """Site id to its country code, for the checker."""
        return {s.id: s.config.jurisdiction for s in self.sites.values()}

    def dispatcher_of(self, site_id: str) -> str:
        """Name of the dispatcher role that holds ``site_id``'s stream."""
        return f"dispatcher-{owner_of(site_id, DISPATCHERS)}"

    def job_command(self, log_dir: Path, seconds: float, *, exit_code: int = 0) -> list[str]:
        """The argv of a harness job (the job program, stdlib only)."""
        argv = [sys.executable, str(JOBPROG), "--log-dir", str(log_dir), "--seconds", f"{seconds}"]
        if exit_code:
            argv += ["--exit-code", str(exit_code)]
        return argv

    # -- control plane --------------------------------------------------------------------------

    def start_role(self, name: str, *, crash_at: str | None = None, wait: bool = True) -> None:
        """Start role ``name`` (``api``, ``scheduler``, ``dispatcher-N``); with ``crash_at``
        (``point[:n]``) it kills itself there. Waits for its ready line unless ``wait`` is off."""
        role, _, index = name.partition("-")
        argv = [sys.executable, "-m", "orchestrator.roles", role]
        if index:
            argv += ["--index", index]
        extra = {"SG_CRASH_AT": crash_at} if crash_at else {}
        with self._lock:
            old = self.roles.get(name)
            if old is not None and old.alive():
                raise ClusterError(f"{name} is already running (pid {old.pid})")
            log_path = self.logs_dir / f"{name}.log"
            offset = _header(log_path, f"start {name} crash_at={crash_at or '-'}")
            with open(log_path, "ab") as out:
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self._env(extra),
                    cwd=REPO,
                    start_new_session=True,
                )
            proc = _Proc(name, popen, log_path)
            self.roles[name] = proc
        if wait:
            ready = "serving on" if role == "api" else f"{role} running"
            self._wait_log(proc, offset, ready, allow_exit=crash_at is not None)

    def kill_role(self, name: str) -> None:
        """SIGKILL role ``name`` (no-op if it is not running)."""
        proc = self.roles.get(name)
        if proc is not None:
            proc.kill()

    def restart_role(self, name: str, *, crash_at: str | None = None) -> None:
        """SIGKILL role ``name`` if it runs, and start it again."""
        self.kill_role(name)
        self.start_role(name, crash_at=crash_at)

    def role_alive(self, name: str) -> bool:
        """Whether role ``name``'s process is running."""
        proc = self.roles.get(name)
        return proc is not None and proc.alive()

    def wait_role_exit(self, name: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for role ``name`` to exit; whether it did."""
        proc = self.roles.get(name)
        if proc is None:
            return True
        try:
            proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill_control_plane(self) -> None:
        """SIGKILL every control-plane role at once."""
        procs = [p for p in self.roles.values() if p.alive()]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.kill()

    def start_control_plane(self) -> None:
        """Start every control-plane role that is not running (in parallel), wait for all."""
        missing = [n for n in CONTROL_PLANE if not self.role_alive(n)]
        offsets = {}
        for name in missing:
            log_path = self.logs_dir / f"{name}.log"
            offsets[name] = log_path.stat().st_size if log_path.exists() else 0
            self.start_role(name, wait=False)
        for name in missing:
            role = name.partition("-")[0]
            ready = "serving on" if role == "api" else f"{role} running"
            self._wait_log(self.roles[name], offsets[name], ready, allow_exit=False)

    # -- agents ---------------------------------------------------------------------------------

    def start_agent(self, site_id: str) -> None:
        """Start ``site_id``'s agent in its host (same address, state directory and journal as
        before) and wait until it serves."""
        host = self.hosts[site_id]
        ready = self.base_dir / "agents" / f"{site_id}.ready"
        ready.unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", "agents",
            "--sites", str(self.site_file),
            "--site", site_id,
            "--listen", self._agent_addr[site_id],
            "--state-dir", str(self.base_dir / "agents" / site_id),
            "--ready-file", str(ready),
            "--kill-grace", f"{self.timings.kill_grace}",
            "--insecure",  # behind the harness's own proxies, on its private network
        ]  # fmt: skip
        with self._lock:
            old = self.agents.get(site_id)
            if old is not None and old.alive():
                raise ClusterError(f"agent {site_id} is already running (pid {old.pid})")
            log_path = self.logs_dir / f"agent-{site_id}.log"
            offset = _header(log_path, f"start agent {site_id}")
            with open(log_path, "ab") as out:
                popen = host.popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self._env({}),
                    cwd=REPO,
                    start_new_session=True,
                )
            proc = _Proc(f"agent-{site_id}", popen, log_path)
            self.agents[site_id] = proc
        deadline = time.monotonic() + _READY_TIMEOUT
        while not ready.exists():
            if not proc.alive() or time.monotonic() > deadline:
                raise ClusterError(
                    f"agent {site_id} did not become ready (exit {proc.popen.poll()}):\n"
                    + _tail(log_path, 30, offset)
                )
            time.sleep(0.02)

    def kill_agent(self, site_id: str, *, with_jobs: bool = False) -> list[int]:
        """SIGKILL ``site_id``'s agent; with ``with_jobs``, its jobs' process groups too (found
        by their environment, so adopted ones count). Returns the job groups killed."""
        proc = self.agents.get(site_id)
        if proc is None or not proc.alive():
            return []
        groups: list[int] = []
        if with_jobs:
            # Frozen first, so that it starts nothing between the look and the kill.
            os.kill(proc.pid, signal.SIGSTOP)
            groups = self.job_groups(site_id)
        proc.kill()
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        if with_jobs:
            for pgid in self.job_groups(site_id):  # one more look: nothing may be left
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                groups.append(pgid)
        return groups

    def restart_agent(self, site_id: str) -> None:
        """Start ``site_id``'s agent again (SIGKILLing it first if it still runs)."""
        self.kill_agent(site_id)
        self.start_agent(site_id)

    def agent_alive(self, site_id: str) -> bool:
        """Whether ``site_id``'s agent process is running (stopped counts as running)."""
        proc = self.agents.get(site_id)
        return proc is not None and proc.alive()

    def freeze_agent(self, site_id: str) -> None:
        """SIGSTOP ``site_id``'s agent (its jobs, in their own sessions, run on)."""
        proc = self.agents[site_id]
        os.kill(proc.pid, signal.SIGSTOP)
        proc.stopped = True

    def thaw_agent(self, site_id: str) -> None:
        """SIGCONT ``site_id``'s agent."""
        proc = self.agents[site_id]
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.stopped = False

    def job_groups(self, site_id: str) -> list[int]:
        """Process groups of the jobs (and their shims) running for ``site_id`` now."""
        groups = set()
        for pid, env in _marked_processes(self.run_id):
            if env.get(b"SG_SITE") == site_id.encode() and b"JOB_ID" in env:
                pgid = _pgid(pid)
                if pgid is not None and pgid > 1:
                    groups.add(pgid)
        return sorted(groups)

    # -- network --------------------------------------------------------------------------------

    def partition(
        self, site_id: str, *, direction: Which = "both", how: Literal["proxy", "link"] = "proxy"
    ) -> None:
        """Cut ``site_id`` off: through its proxy (``direction``: ``up`` is control plane to
        agent, ``down`` the way back) or by taking its host's link down (both ways, needs
        namespaces: ``NotImplementedError`` on loopback)."""
        if how == "link":
            self.hosts[site_id].link_down()
            self._links_down.add(site_id)
        else:
            self.proxies[site_id].partition(direction)

    def heal(self, site_id: str) -> None:
        """End every partition of ``site_id``. A proxy partition dropped bytes out of the middle
        of live TCP streams, which no real network does (it delivers them late, or the
        connection dies), so the proxy's connections are reset: the dispatcher reconnects."""
        if site_id in self._links_down:
            self.hosts[site_id].link_up()
            self._links_down.discard(site_id)
        proxy = self.proxies[site_id]
        if proxy.partitioned:
            proxy.heal()
            proxy.reset_all()

    # -- redis ----------------------------------------------------------------------------------

    def kill_redis(self) -> None:
        """SIGKILL redis-server."""
        if self.redis is not None:
            self.redis.kill()

    def restart_redis(self) -> None:
        """Start redis-server again on the same port and data directory."""
        if self.redis is not None and self.redis.process is None:
            self.redis.start()

    def redis_alive(self) -> bool:
        """Whether redis-server runs."""
        return (
            self.redis is not None
            and self.redis.process is not None
            and self.redis.process.poll() is None
        )

    # -- health ---------------------------------------------------------------------------------

    def heal_all(self) -> None:
        """Undo every fault: heal partitions, SIGCONT agents, start what is down (Redis first)."""
        for site_id in self.sites:
            self.heal(site_id)
            proc = self.agents.get(site_id)
            if proc is not None and proc.stopped:
                self.thaw_agent(site_id)
        if not self.redis_alive():
            if self.redis is not None:
                self.redis.process = None
            self.restart_redis()
        for site_id in self.sites:
            if not self.agent_alive(site_id):
                self.start_agent(site_id)
        self.start_control_plane()

    async def wait_healthy(self, *, timeout: float = 30.0, store: JobStore | None = None) -> None:
        """Until every site is ACTIVE, connected and heard from within a heartbeat or two."""
        own = store is None
        s = store or JobStore.from_config(self.redis_config)
        try:
            deadline = time.monotonic() + timeout
            bad: dict[str, str] = {}
            while True:
                try:
                    bad = {}
                    now = time.time()
                    records = {r.site.id: r for r in await asyncio.wait_for(s.site_records(), 5.0)}
                    for site_id in self.sites:
                        rec = records.get(site_id)
                        if rec is None:
                            bad[site_id] = "not registered"
                        elif rec.state != types_pb2.SITE_STATE_ACTIVE:
                            bad[site_id] = types_pb2.SiteState.Name(rec.state)  # type: ignore[arg-type]
                        elif not rec.connected_by:
                            bad[site_id] = "not connected"
                        elif rec.last_heartbeat is None or now - rec.last_heartbeat > 1.5:
                            bad[site_id] = "silent"
                except Exception as exc:
                    bad = {"redis": repr(exc)}
                if not bad:
                    return
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"cluster not healthy after {timeout:g}s: {bad}\n" + self.tails()
                    )
                await asyncio.sleep(0.1)
        finally:
            if own:
                await s.close()

    # -- logs -----------------------------------------------------------------------------------

    def log_paths(self) -> dict[str, Path]:
        """Every log file, by process name."""
        paths = {p.stem: p for p in sorted(self.logs_dir.glob("*.log"))}
        if self.redis is not None:
            paths["redis"] = self.redis.data_dir / "redis.log"
        return paths

    def tails(self, names: Iterable[str] | None = None, *, lines: int = 25) -> str:
        """The last ``lines`` lines of the named logs (all by default), as one text."""
        paths = self.log_paths()
        out = []
        for name in names if names is not None else paths:
            path = paths.get(name)
            if path is not None and path.exists():
                out.append(f"----- {name} ({path}) -----\n{_tail(path, lines)}")
        return "\n".join(out)

    # -- helpers --------------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to completion on a private event loop in a thread (callable whether or
        not the caller's thread runs a loop)."""
        result: list[T] = []
        failure: list[BaseException] = []

        def target() -> None:
            try:
                result.append(asyncio.run(coro))
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=target, name="cluster-run")
        thread.start()
        thread.join()
        if failure:
            raise failure[0]
        return result[0]

    async def _register_sites(self) -> None:
        store = JobStore.from_config(self.redis_config)
        try:
            for spec in self.sites.values():
                reg = spec.config.to_proto()
                reg.endpoint = self.proxies[spec.id].address
                await store.register_site(normalize_site(reg))
        finally:
            await store.close()

    def _env(self, extra: Mapping[str, str]) -> dict[str, str]:
        t = self.timings
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SG_", "OTEL_")) and k != "PYTEST_CURRENT_TEST"
        }
        env.update(
            {
                MARKER: self.run_id,
                OWNER: str(os.getpid()),
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(REPO),
                "OTEL_TRACES_EXPORTER": "none",
                "SG_REDIS_URL": self.redis_config.url,
                "SG_REDIS_PREFIX": self._redis_prefix,
                "SG_API_LISTEN": self._api_listen,
                "SG_DISPATCHERS": str(DISPATCHERS),
                "SG_HEARTBEAT_INTERVAL": f"{t.heartbeat}",
                "SG_KILL_GRACE": f"{t.kill_grace}",
                "SG_LOST_AFTER": f"{t.lost_after}",
                "SG_INSECURE": "1",  # the roles refuse to start without TLS or this
            }
        )
        env.update(extra)
        return env

    def _wait_log(self, proc: _Proc, offset: int, needle: str, *, allow_exit: bool) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            text = _read_from(proc.log_path, offset)
            if needle in text:
                return
            if not proc.alive():
                if allow_exit:
                    return  # an armed crash point may fire before the ready line
                raise ClusterError(
                    f"{proc.name} exited ({proc.popen.returncode}) before {needle!r}:\n"
                    + _tail(proc.log_path, 30, offset)
                )
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{proc.name} printed no {needle!r} in {_READY_TIMEOUT:g}s:\n"
                    + _tail(proc.log_path, 30, offset)
                )
            time.sleep(0.02)

    def _kill_marked(self) -> None:
        """SIGKILL every process carrying this cluster's marker (and its process group)."""
        for _ in range(3):
            found = [pid for pid, _ in _marked_processes(self.run_id)]
            if not found:
                return
            for pid in found:
                pgid = _pgid(pid)
                if pgid is not None and pgid > 1 and pgid != os.getpgid(0):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pgid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)


def _site_dict(site: SiteConfig) -> dict[str, Any]:
    return {
        "id": site.id,
        "name": site.name,
        "jurisdiction": site.jurisdiction,
        "owner": site.owner,
        "power_cap_mw": site.power_cap_mw,
        "cpus": site.cpus,
        "memory_mb": site.memory_mb,
        "gpus": dict(site.gpus),
    }


def _header(path: Path, what: str) -> int:
    """Append a header line to a log; return the offset where the new output starts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(f"===== {time.strftime('%H:%M:%S')} {what} =====\n".encode())
        return f.tell()


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def _tail(path: Path, lines: int, offset: int = 0) -> str:
    return "\n".join(_read_from(path, offset).splitlines()[-lines:])


def kill_orphans() -> list[int]:
    """SIGKILL the processes (and their groups) of fault clusters whose owner is gone; return
    their pids."""
    owners: dict[int, bool] = {}
    killed = []
    for pid, env in _marked_processes(None):
        try:
            owner = int(env.get(OWNER.encode(), b"0"))
        except ValueError:
            continue
        if owner <= 1:
            continue
        if owner not in owners:
            owners[owner] = Path(f"/proc/{owner}").exists() and not _zombie(owner)
        if owners[owner]:
            continue
        pgid = _pgid(pid)
        if pgid is not None and pgid > 1 and pgid != os.getpgid(0):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    if killed:
        log.warning("killed %d processes of fault clusters whose owner is gone", len(killed))
    return killed


def _marked_processes(run_id: str | None) -> list[tuple[int, dict[bytes, bytes]]]:
    """(pid, environment) of every live process whose environment carries ``MARKER=run_id``
    (any run when ``run_id`` is None)."""
    needle = f"{MARKER}={run_id or ''}".encode()
    me = os.getpid()
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            data = Path(entry.path, "environ").read_bytes()
        except OSError:
            continue
        if needle not in data:
            continue
        env: dict[bytes, bytes] = {}
        for item in data.split(b"\0"):
            key, sep, value = item.partition(b"=")
            if sep:
                env.setdefault(key, value)
        mark = env.get(MARKER.encode())
        if mark and (run_id is None or mark == run_id.encode()) and not _zombie(int(entry.name)):
            out.append((int(entry.name), env))
    return out


def _stat(pid: int) -> list[str] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].decode("ascii", "replace").split()


def _pgid(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[2])


def _zombie(pid: int) -> bool:
    fields = _stat(pid)
    return fields is None or fields[0] in ("Z", "X")
