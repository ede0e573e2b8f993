"""Benchmark of idle sites: what connected sites that run nothing cost, per site.

    python -m bench.idle_sites [--quick] [--sites N] [--seconds S] [--runs N] [--heartbeat S]
                               [--json PATH] [--redis-url URL]

Four processes, as a deployment runs them:

    dispatcher  ``python -m orchestrator.roles dispatcher`` (one dispatcher, ``SG_DISPATCHERS=1``,
                plaintext: ``SG_INSECURE=1``), holding every site's control stream
    scheduler   ``python -m orchestrator.roles scheduler``: with nothing to place it still runs
                a cycle every twelfth of ``lost_after`` (5 s), which looks for silent sites
    fleet       ``python -m agents.fleet --sites N --insecure``: N simulated sites (full agent
                runtimes with the sim executor) behind one gRPC server
    redis       the redis-server the store uses (its own figures from ``INFO``: CPU
                ``used_cpu_sys + used_cpu_user``, memory ``used_memory_rss``); by default one
                of our own with the durable settings of ``LocalRedis`` (``appendfsync always``)

First the dispatcher runs with no site registered (``empty``): ``--runs`` windows of
``--seconds`` each. Then the N sites of the fleet (``agents.fleet.sim_sites(N)``, the fleet's
address as their endpoint) are registered at once, and once the dispatcher holds every
site's stream (each site marked connected in the store) and ``settle`` seconds have passed,
``--runs`` windows again (``connected``). Agents heartbeat every ``--heartbeat`` seconds
(``SG_HEARTBEAT_INTERVAL``, as the dispatcher's hello asks) and the control plane renews
their lease in answer; nothing else happens: no job is submitted.

Reported per process: CPU as a percentage of one core (CPU seconds over wall seconds of a
window, median over the windows), resident memory at the end of each phase, and the memory
per site, ``(RSS connected - RSS empty) / N``. The control plane is the dispatcher, the
scheduler and Redis (the fleet stands in for the sites' own machines; the API server, which
nothing calls, is left out). The goals (issue 6): N idle connected sites
cost the control plane at most 5% of one core per 1,000 sites, and at most 100 KB of memory per
site. Results go to ``bench/results/idle-sites-<UTC time>.json``. Every key the run wrote
(under a key prefix of its own) is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, TypeVar

import redis

from agents.fleet import sim_sites
from bench._cluster import rss_bytes
from bench._report import (
    Column,
    Goal,
    add_arguments,
    emit,
    goal_lines,
    header,
    json_text,
    machine,
    own_redis,
)
from bench._report import default_json_path as results_path
from bench._report import table as _table
from orchestrator.config import ControlPlaneConfig, RedisConfig
from orchestrator.processes import stop_process
from orchestrator.sitefile import SiteConfig
from orchestrator.store import JobStore
from orchestrator.validation import normalize_site

__all__ = [
    "FULL",
    "QUICK",
    "Goal",
    "ProcessRow",
    "Report",
    "Sizes",
    "default_json_path",
    "main",
    "measure",
    "quick",
    "run",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU_GOAL_PERCENT_PER_1000 = 5.0
"""Control-plane CPU the goal allows for 1,000 idle sites, in percent of one core."""
MEMORY_GOAL_KB_PER_SITE = 100.0
"""Control-plane memory the goal allows per idle site."""
DEFAULT_HEARTBEAT = ControlPlaneConfig().heartbeat_interval_seconds
"""What the control plane asks of agents by default (``SG_HEARTBEAT_INTERVAL``)."""
DISPATCHER, SCHEDULER, FLEET, REDIS = "dispatcher", "scheduler", "fleet", "redis"
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0
_POLL_SECONDS = 0.25
_REGISTER_CONCURRENCY = 50


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big a run is."""

    sites: int
    """Simulated sites, all connected at once."""
    seconds: float
    """Length of one measurement window."""
    settle_seconds: float
    """Pause after the processes are up (empty) or every site is connected, before measuring."""
    connect_timeout_seconds: float
    """Longest wait for every site to be connected."""


FULL = Sizes(sites=1000, seconds=30.0, settle_seconds=10.0, connect_timeout_seconds=180.0)
QUICK = Sizes(sites=10, seconds=1.0, settle_seconds=0.2, connect_timeout_seconds=60.0)


@dataclass(frozen=True, slots=True)
class ProcessRow:
    """One process's figures, empty and with every site connected."""

    name: str
    """``dispatcher``, ``fleet`` or ``redis``."""
    control_plane: bool
    """Counted in the control plane's cost (the dispatcher and Redis)."""
    cpu_empty_percent: float
    """Percent of one core with no site registered (median over the windows)."""
    cpu_percent: float
    """Percent of one core with every site connected and idle (median over the windows)."""
    cpu_runs: list[float]
    """``cpu_percent`` of each window."""
    rss_empty_mb: float
    """Resident memory with no site registered (MiB)."""
    rss_mb: float
    """Resident memory with every site connected (MiB)."""
    kb_per_site: float
    """``(rss - rss_empty) / sites``, in KiB."""


class _Python:
    """A Python child process of the run, its output in a log file."""

    def __init__(self, name: str, args: Sequence[str], env: Mapping[str, str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = self.output()[-3000:]
            raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{tail}")

    def stop(self) -> None:
        stop_process(self.popen, timeout=_STOP_TIMEOUT)
        self._log.close()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far (from /proc)."""
    data = Path(f"/proc/{pid}/stat").read_bytes()
    fields = data[data.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _redis_rss(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory_rss"])


def _python_env(redis_url: str, prefix: str, heartbeat: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SG_", "OTEL_"))}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            "OTEL_TRACES_EXPORTER": "none",
            "SG_REDIS_URL": redis_url,
            "SG_REDIS_PREFIX": prefix,
            "SG_DISPATCHERS": "1",
            "SG_HEARTBEAT_INTERVAL": f"{heartbeat:g}",
            "SG_INSECURE": "1",
        }
    )
    return env


def _wait_for(
    what: str, ready: Sequence[_Python], done: Callable[[], bool], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        for proc in ready:
            proc.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:g}s")
        time.sleep(_POLL_SECONDS)


class _Phase:
    """CPU of each window and RSS at the end, per process, for one phase of the run."""

    def __init__(self) -> None:
        self.cpu: dict[str, list[float]] = {DISPATCHER: [], SCHEDULER: [], FLEET: [], REDIS: []}
        self.rss: dict[str, int] = {}


def _measure_phase(
    procs: Mapping[str, _Python], client: redis.Redis, sizes: Sizes, runs: int
) -> _Phase:
    phase = _Phase()
    for _ in range(runs):
        before = {name: cpu_seconds(p.pid) for name, p in procs.items()}
        before[REDIS] = _redis_cpu(client)
        started = time.monotonic()
        time.sleep(sizes.seconds)
        wall = time.monotonic() - started
        after = {name: cpu_seconds(p.pid) for name, p in procs.items()}
        after[REDIS] = _redis_cpu(client)
        for name, used in after.items():
            phase.cpu[name].append(100.0 * (used - before[name]) / wall)
        for proc in procs.values():
            proc.check_alive()
    phase.rss = {name: rss_bytes(p.pid) for name, p in procs.items()}
    phase.rss[REDIS] = _redis_rss(client)
    return phase


async def _register(store: JobStore, sites: Sequence[SiteConfig], endpoint: str) -> None:
    gate = asyncio.Semaphore(_REGISTER_CONCURRENCY)

    async def one(site: SiteConfig) -> None:
        reg = site.to_proto()
        reg.endpoint = endpoint
        async with gate:
            await store.register_site(normalize_site(reg))

    await asyncio.gather(*(one(site) for site in sites))


async def _connected(store: JobStore, site_ids: Sequence[str]) -> int:
    records = await store.site_records(site_ids)
    return sum(1 for r in records if r.connected_by)


async def _delete_prefix(store: JobStore) -> None:
    batch: list[bytes | str] = []
    async for key in store.client.scan_iter(match=f"{store.prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await store.client.unlink(*batch)
            batch.clear()
    if batch:
        await store.client.unlink(*batch)


def measure(
    redis_url: str,
    *,
    sizes: Sizes = FULL,
    runs: int = 3,
    heartbeat: float = DEFAULT_HEARTBEAT,
    progress: bool = False,
) -> Report:
    """Start the dispatcher and the fleet over ``redis_url`` (under a key prefix of their own,
    deleted afterwards), measure them empty and with every site connected, and report."""
    where = machine(redis_url=redis_url)
    prefix = f"bench-idle-{os.getpid()}-{time.time_ns()}:"
    sites = sim_sites(sizes.sites)
    site_ids = [s.id for s in sites]
    client = redis.Redis.from_url(redis_url)

    def say(text: str) -> None:
        if progress:
            print(f"  {text}", file=sys.stderr, flush=True)

    def store_run(call: Callable[[JobStore], Awaitable[T]]) -> T:
        async def go() -> T:
            store = JobStore.from_config(RedisConfig(url=redis_url, prefix=prefix))
            try:
                return await call(store)
            finally:
                await store.close()

        return asyncio.run(go())

    procs: dict[str, _Python] = {}
    connect_seconds = 0.0
    try:
        with tempfile.TemporaryDirectory(prefix="sg-bench-idle-") as tmp:
            logs, ready = Path(tmp), Path(tmp) / "fleet.ready"
            env = _python_env(redis_url, prefix, heartbeat)
            procs[FLEET] = _Python(
                FLEET,
                ["-m", "agents.fleet", "--sites", str(sizes.sites), "--insecure",
                 "--state-dir", str(logs / "fleet"), "--ready-file", str(ready)],
                env,
                logs,
            )  # fmt: skip
            for role in (DISPATCHER, SCHEDULER):
                procs[role] = _Python(role, ["-m", "orchestrator.roles", role], env, logs)
            _wait_for(
                "fleet, dispatcher and scheduler",
                list(procs.values()),
                lambda: (
                    ready.exists()
                    and all(f"{r} running" in procs[r].output() for r in (DISPATCHER, SCHEDULER))
                ),
                _START_TIMEOUT,
            )
            address = ready.read_text().strip()
            time.sleep(sizes.settle_seconds)
            say(f"empty: {runs} window(s) of {sizes.seconds:g}s")
            empty = _measure_phase(procs, client, sizes, runs)

            say(f"registering {sizes.sites} sites at {address}")
            started = time.monotonic()
            store_run(lambda store: _register(store, sites, address))
            _wait_for(
                f"{sizes.sites} connected sites",
                list(procs.values()),
                lambda: store_run(lambda store: _connected(store, site_ids)) == sizes.sites,
                sizes.connect_timeout_seconds,
            )
            connect_seconds = time.monotonic() - started
            say(f"every site connected in {connect_seconds:.1f}s")
            time.sleep(sizes.settle_seconds)
            say(f"connected: {runs} window(s) of {sizes.seconds:g}s")
            full = _measure_phase(procs, client, sizes, runs)
            for proc in procs.values():
                proc.stop()
    finally:
        for proc in procs.values():
            proc.stop()
        try:
            store_run(_delete_prefix)
        finally:
            client.close()
    return _report(where, sizes, runs, heartbeat, connect_seconds, empty, full)


def _report(
    where: dict[str, str],
    sizes: Sizes,
    runs: int,
    heartbeat: float,
    connect_seconds: float,
    empty: _Phase,
    full: _Phase,
) -> Report:
    rows = [
        ProcessRow(
            name=name,
            control_plane=name != FLEET,
            cpu_empty_percent=statistics.median(empty.cpu[name]),
            cpu_percent=statistics.median(full.cpu[name]),
            cpu_runs=list(full.cpu[name]),
            rss_empty_mb=empty.rss[name] / 2**20,
            rss_mb=full.rss[name] / 2**20,
            kb_per_site=(full.rss[name] - empty.rss[name]) / sizes.sites / 1024,
        )
        for name in (DISPATCHER, SCHEDULER, FLEET, REDIS)
    ]
    plane = [r for r in rows if r.control_plane]
    cpu = sum(r.cpu_percent for r in plane)
    cpu_limit = CPU_GOAL_PERCENT_PER_1000 * sizes.sites / 1000
    memory = sum(r.kb_per_site for r in plane)
    goals = [
        Goal.at_most("control-plane CPU, idle sites connected", cpu, cpu_limit,
                     unit="% of a core"),
        Goal.at_most("control-plane memory per site", memory, MEMORY_GOAL_KB_PER_SITE,
                     unit="KiB"),
    ]  # fmt: skip
    return Report(where, runs, asdict(sizes), heartbeat, connect_seconds, rows, goals)


_COLUMNS = (
    Column("process", 10, left=True),
    Column("control plane", 13),
    Column("cpu % empty", 11),
    Column("cpu % connected", 15),
    Column("RSS MiB empty", 13),
    Column("RSS MiB connected", 17),
    Column("KiB/site", 8),
)


def _cells(r: ProcessRow) -> list[str]:
    return [
        r.name, "yes" if r.control_plane else "no", f"{r.cpu_empty_percent:.2f}",
        f"{r.cpu_percent:.2f}", f"{r.rss_empty_mb:.1f}", f"{r.rss_mb:.1f}", f"{r.kb_per_site:.1f}",
    ]  # fmt: skip


def table(rows: Sequence[ProcessRow]) -> str:
    """Rows as a fixed-width table."""
    return _table(_COLUMNS, map(_cells, rows))


@dataclass(frozen=True, slots=True)
class Report:
    """A whole run: where and when, the sizes, the processes' figures, the goals."""

    machine: dict[str, str]
    runs: int
    sizes: dict[str, float]
    heartbeat_seconds: float
    connect_seconds: float
    processes: list[ProcessRow]
    goals: list[Goal]

    def to_json(self) -> str:
        return json_text(asdict(self))

    def text(self) -> str:
        m, s = self.machine, self.sizes
        lines = [
            *header("idle sites benchmark", m),
            f"{int(s['sites']):,} simulated sites, heartbeats every {self.heartbeat_seconds:g}s, "
            f"all connected in {self.connect_seconds:.1f}s; CPU: median of {self.runs} "
            f"window(s) of {s['seconds']:g}s",
            "",
            table(self.processes),
            "",
            *goal_lines(self.goals),
        ]
        return "\n".join(lines)


# -- entry points -------------------------------------------------------------------------------


def run(
    redis_url: str,
    *,
    sizes: Sizes = FULL,
    runs: int = 3,
    heartbeat: float = DEFAULT_HEARTBEAT,
    progress: bool = False,
) -> Report:
    """:func:`measure` (kept beside the other benchmarks' ``run``)."""
    return measure(redis_url, sizes=sizes, runs=runs, heartbeat=heartbeat, progress=progress)


def quick(redis_url: str) -> Report:
    """A tiny run, for tests: ten sites, two short windows."""
    # Beating every 0.05 s for 1 s windows: CPU time is counted in 10 ms ticks, and ten sites
    # at 0.2 s for 0.5 s cost the simulated sites less than one, so a window could read 0.
    return run(redis_url, sizes=QUICK, runs=2, heartbeat=0.05)


def default_json_path(now: datetime.datetime | None = None) -> Path:
    """``bench/results/idle-sites-<UTC timestamp>.json``."""
    return results_path("idle-sites", now)


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the table and the goals, write JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.idle_sites",
        description="Measure what idle connected sites cost the control plane (CPU, memory).",
    )
    add_arguments(parser, name="idle-sites", runs=3, runs_help="windows per phase (median)")
    parser.add_argument(
        "--sites", type=int, default=FULL.sites, help="simulated sites (default: %(default)s)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=FULL.seconds,
        help="length of one measurement window (default: %(default)s)",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=DEFAULT_HEARTBEAT,
        help="seconds between agent heartbeats (default: %(default)s, the control plane's)",
    )
    parser.add_argument(
        "--redis-url", default=None, help="a Redis to use (default: start a redis-server)"
    )
    args = parser.parse_args(argv)
    if args.sites < 1 or args.seconds <= 0 or args.runs < 1 or args.heartbeat <= 0:
        parser.error("--sites, --seconds, --runs and --heartbeat must be positive")
    with own_redis(args.redis_url) as url:
        if args.quick:
            report = quick(url)
        else:
            sizes = replace(FULL, sites=args.sites, seconds=args.seconds)
            report = run(url, sizes=sizes, runs=args.runs, heartbeat=args.heartbeat,
                         progress=True)  # fmt: skip
    emit(report, name="idle-sites", path=args.json)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
