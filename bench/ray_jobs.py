"""The peer: Ray Jobs on this machine, with the same no-op command, to measure ours against.

    python -m bench.ray_jobs [--quick] [--json PATH] [--runs N] [--jobs N] [--inflight N]
                             [--concurrency N] [--num-cpus N]

Ray Jobs (``ray.job_submission.JobSubmissionClient``) is what a Ray user reaches for to run a
command on a cluster. Its design, per job: the client POSTs to the dashboard's job API on the
head; the dashboard forwards it to the head node's dashboard agent, whose ``JobManager``
creates a detached ``JobSupervisor`` actor, a Ray worker process of its own (the raylet
starts a new one per job: its idle workers stay idle, as the table per kind of process
shows); the supervisor runs the entrypoint as a shell child process (the driver) in a
session of its own, plus a shell loop that watches the supervisor (``sleep 1`` at a time) to
kill the driver if the supervisor dies. Our sim executor starts no process at all; Ray must
start at least a worker and a driver per job. That is the design being compared.

The head is our own: ``ray start --head --block`` as a child process (``python -m
ray.scripts.scripts``, the ``ray`` command), every port it opens chosen free on loopback
(``free_port``), ``--num-cpus`` capped (2 by default: the machine is shared), a 256 MiB object
store (unused by these jobs), ``--disable-usage-stats`` and ``RAY_AUTH_MODE=disabled`` (Ray
turns on token authentication by itself when ``~/.ray/auth_token`` exists; the client here sends
no token, and our side of the comparison runs without TLS or tokens too). It never touches a Ray
instance this process may already run (``ray.init`` of a test session): the client speaks HTTP
to the new head's dashboard only. Its temp directory is ``temp_dir/ray`` (or, when that path is
longer than 40 characters, too long for Ray's Unix sockets below it, a short directory under the
system's temp directory, moved to ``temp_dir/ray`` afterwards); ``ray start``'s output goes to
``temp_dir/ray-start.log``, and ``temp_dir/ray-head.json`` names the head's directory, ports and
every process seen in its tree. Stopping it: SIGTERM to ``ray start --block`` (it stops the
processes it started), then every process seen in its tree, and any process that still uses its
directory (command line, working directory or an open file), is waited for and, if it lingers,
killed by pid; ``ray stop`` is never used (it stops every Ray on the machine). A process that
survives that is an error.

Method, on that one head, after it answers (``/api/version``, then ``list_jobs``) and one
warm-up job has SUCCEEDED (not recorded):

1. Rate and latency, ``--runs`` rounds of ``jobs`` jobs each: ``submit_job(entrypoint="true",
   submission_id=...)`` from ``concurrency`` threads (one client each), as fast as they go (a
   burst: a job's latency includes its wait behind the jobs before it), while this thread
   calls ``list_jobs`` every 100 ms (one HTTP call for every job's status; a call takes the
   dashboard tens of milliseconds, and polling faster takes CPU that Ray needs to start
   workers on a small machine) and records, per job, the first poll that shows it RUNNING. A
   ``true`` job is RUNNING for about 100 ms (the supervisor checks its driver every 0.1 s) and
   can start and end between two polls: a job first seen SUCCEEDED gets its ``end_time`` (set
   by Ray, in milliseconds, on this machine's clock) as its RUNNING time, an upper bound; the
   report says how many were seen RUNNING. A poll's time is when its answer arrived, so a
   latency is late by at most the poll interval plus one ``list_jobs`` call (its median
   duration is reported). ``submit_per_s``: jobs over the seconds from the first
   ``submit_job`` call to the return of the last; ``jobs_per_s``: jobs over the seconds from
   the first call to the last job's ``end_time``; latency: from the start of a job's
   ``submit_job`` call to its RUNNING time, p50 and p99 (nearest rank). Every job must end
   SUCCEEDED, or the run fails. Before each round the head's process tree is left to settle
   (the same processes for a second, 15 s at most); after it, its jobs are deleted
   (``delete_job``), so ``list_jobs`` does not grow. Each figure is the median over the
   rounds. Then, for reference, one job at a time (each submitted once the one before
   ended, one per round): submit -> RUNNING with nothing else running.
2. Memory, once, after the rounds: the summed resident memory (RSS, ``/proc/<pid>/statm``)
   of every process in the head's tree (``ray start`` and its descendants: GCS, raylet,
   dashboard and its module processes, dashboard and runtime-env agents, log monitor, idle
   workers, and per job the supervisor actor's worker, the driver's shell and command, the
   watcher loop), once the tree has settled (baseline); then ``inflight`` jobs of
   ``sleep 600`` are submitted and, once all are RUNNING (or as many as Ray runs: if some stay
   PENDING for 30 s, the figure is per job running, and the report says so), the same sum
   again (median of three samples half a second apart); ``memory_per_inflight_mb`` is the
   difference over the jobs running. The jobs are then stopped (``stop_job``), awaited and
   deleted. RSS counts a page shared by several processes (the Python interpreter, Ray's
   libraries) once per process, as a per-process view of memory does; the report also gives
   PSS (``/proc/<pid>/smaps_rollup``: shared pages split among their sharers), a lower
   figure, and the delta per kind of process. Were a supervisor to take a worker the raylet
   had idle, that worker would be in the baseline: Ray's figure smaller, not larger. A
   published figure puts a Ray Jobs submission at about 85 MB of head-node memory
   per running job; the report prints it beside ours.

The issue's goal for ours, printed by the suite: at least 50 times Ray Jobs' jobs/s, and at
most 1/50 of its memory per in-flight job; the report prints those two targets. Results go to
``bench/results/ray_jobs-<UTC time>.json``.

The suite calls :func:`measure_ray_jobs` (one rate round; ``python -m bench.ray_jobs`` takes
the median of ``--runs``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench._report import (
    Column,
    add_arguments,
    emit,
    header,
    json_text,
    machine,
    number,
    percentile,
    progress,
    sigterm_interrupts,
    table,
)
from orchestrator.store import free_port

__all__ = [
    "FULL",
    "PUBLISHED_MB_PER_JOB",
    "QUICK",
    "MemoryRow",
    "RayJobsError",
    "RayJobsResult",
    "Report",
    "RoundRow",
    "Sizes",
    "main",
    "measure",
    "measure_ray_jobs",
    "processes_using",
]

logger = logging.getLogger(__name__)

PUBLISHED_MB_PER_JOB = 85.0
"""The published figure: head-node memory per running Ray Jobs submission, in MB."""
RATE_FACTOR = 50.0
"""The issue's goal: ours at least this many times Ray Jobs' jobs/s ..."""
MEMORY_FACTOR = 50.0
"""... and at most 1/this of its memory per in-flight job."""

_NOOP = "true"
"""The no-op entrypoint of the rate rounds (``true``: exits 0 at once)."""
_HOLD = "sleep 600"
"""The entrypoint of the memory measurement: stays RUNNING until stopped."""
_POLL_SECONDS = 0.1
"""Interval between ``list_jobs`` polls while jobs run. One call takes tens of milliseconds of
the dashboard's time (it asks the GCS and the agent): polling faster would take the CPU that
Ray needs to start workers on a small machine."""
_STARTUP_SECONDS = 120.0
"""Longest wait for the head's dashboard and job API (capped by the run's timeout)."""
_WARMUP_SECONDS = 120.0
"""Longest wait for the warm-up job to SUCCEED."""
_STALL_SECONDS = 30.0
"""Jobs still PENDING this long after the last one started RUNNING are given up on (memory)."""
_SETTLE_SECONDS = 15.0
"""Longest wait for the head's process tree to stop changing."""
_STOP_SECONDS = 45.0
"""Longest wait for ``ray start --block`` to exit after SIGTERM (it drains for up to 30 s)."""
_LINGER_SECONDS = 15.0
"""Longest wait for the head's other processes to exit before they are killed."""
_MAX_RAY_DIR = 40
"""Longest temp directory for Ray: its Unix sockets live about 65 characters below it, and a
socket's path has at most 107."""
_OBJECT_STORE_BYTES = 256 * 2**20
"""The head's object store (the jobs put nothing in it; the default is 30% of RAM)."""
_MIB = 2**20


class RayJobsError(RuntimeError):
    """The Ray head did not come up, a job did not end as it should, or a process of the head
    outlived it; the message says which and what was seen."""


@dataclass(frozen=True)
class RayJobsResult:
    """Ray Jobs' figures on this machine (see the module's docstring for the method)."""

    jobs: int
    """Jobs submitted in the rate measurement (per round)."""
    submit_per_s: float
    """``submit_job`` calls per second, client side, ``concurrency`` threads at a time."""
    jobs_per_s: float
    """Jobs reaching SUCCEEDED per second, from the first submit to the last success."""
    latency_p50_ms: float
    """Submit -> RUNNING, per job, median."""
    latency_p99_ms: float
    """Submit -> RUNNING, per job, 99th percentile (nearest rank)."""
    inflight_jobs: int
    """Jobs held RUNNING at once for the memory measurement."""
    memory_per_inflight_mb: float
    """(RSS of all the head's processes with them running - before) / ``inflight_jobs``, MiB."""
    baseline_rss_mb: float
    """RSS of all the head's processes before, MiB."""
    ray_version: str


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much one run does."""

    jobs: int
    """Jobs per rate round."""
    inflight: int
    """Jobs held RUNNING for the memory measurement."""
    concurrency: int
    """Threads calling ``submit_job`` at once."""
    num_cpus: int
    """``ray start --num-cpus``."""


FULL = Sizes(jobs=15, inflight=20, concurrency=4, num_cpus=2)
QUICK = Sizes(jobs=5, inflight=3, concurrency=4, num_cpus=2)


@dataclass(frozen=True, slots=True)
class RoundRow:
    """One rate round."""

    round: int
    jobs: int
    submit_per_s: float
    jobs_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    seen_running: int
    """Jobs a poll saw RUNNING; the others were first seen SUCCEEDED (``end_time`` used)."""
    seconds: float
    """First submit to the last job's end."""


@dataclass(frozen=True, slots=True)
class MemoryRow:
    """One kind of process in the head's tree: before the in-flight jobs and with them."""

    kind: str
    """The process's name: its executable, or the title Ray gives it (``ray::JobSupervisor``)."""
    count_before: int
    count: int
    rss_before_mb: float
    rss_mb: float
    pss_before_mb: float
    pss_mb: float


@dataclass(frozen=True, slots=True)
class Memory:
    """The memory measurement."""

    requested: int
    """``inflight``: jobs submitted."""
    running: int
    """Jobs RUNNING when measured."""
    seconds_to_running: float
    """From the first submit until they were RUNNING."""
    baseline_rss_mb: float
    rss_mb: float
    baseline_pss_mb: float
    pss_mb: float
    per_job_rss_mb: float
    per_job_pss_mb: float
    processes_before: int
    processes: int
    kinds: list[MemoryRow]


@dataclass(frozen=True, slots=True)
class Report:
    """A run: the result, its rounds, the memory by kind of process, and the head's start."""

    machine: dict[str, str]
    sizes: dict[str, int]
    runs: int
    result: RayJobsResult
    rounds: list[RoundRow]
    alone_latency_ms: list[float]
    """Submit -> RUNNING of jobs submitted one at a time, nothing else running (one per round)."""
    memory: Memory
    startup_seconds: float
    """``ray start`` until the job API answered."""
    warmup_seconds: float
    """Submit to SUCCEEDED of the warm-up job (the first job of the head)."""
    poll_interval_ms: float
    list_jobs_ms: float
    """Median duration of one ``list_jobs`` call during the rounds."""
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """The machine's load average (1, 5, 15 minutes) when the run began: it is shared."""
    published_mb_per_job: float = PUBLISHED_MB_PER_JOB

    def text(self) -> str:
        """The report for people."""
        r, mem = self.result, self.memory
        lines = [
            *header("Ray Jobs peer", self.machine),
            f"{r.jobs} no-op jobs (`{_NOOP}`) per round, {self.sizes['concurrency']} submit "
            f"threads, head with --num-cpus={self.sizes['num_cpus']}; rate figures: median of "
            f"{self.runs} round(s); head up in {self.startup_seconds:.1f}s, first job "
            f"{self.warmup_seconds:.1f}s; list_jobs every {self.poll_interval_ms:g} ms "
            f"(one call: {self.list_jobs_ms:.1f} ms); load average at the start "
            f"{' '.join(f'{x:.2f}' for x in self.load_average)}",
            "",
            table(
                [
                    Column("round", 6, left=True),
                    Column("jobs", 5),
                    Column("submit/s", 9),
                    Column("jobs/s", 8),
                    Column("p50 ms", 9),
                    Column("p99 ms", 9),
                    Column("seen RUNNING", 13),
                    Column("seconds", 8),
                ],
                [
                    *(
                        [
                            str(x.round),
                            str(x.jobs),
                            number(x.submit_per_s),
                            number(x.jobs_per_s),
                            number(x.latency_p50_ms),
                            number(x.latency_p99_ms),
                            f"{x.seen_running}/{x.jobs}",
                            f"{x.seconds:.1f}",
                        ]
                        for x in self.rounds
                    ),
                    [
                        "median",
                        str(r.jobs),
                        number(r.submit_per_s),
                        number(r.jobs_per_s),
                        number(r.latency_p50_ms),
                        number(r.latency_p99_ms),
                        "",
                        "",
                    ],
                ],
            ),
            f"one job at a time, nothing else running: submit -> RUNNING "
            f"{statistics.median(self.alone_latency_ms):,.0f} ms (median of "
            f"{len(self.alone_latency_ms)})",
            "",
            f"memory: {mem.running} of {mem.requested} `{_HOLD}` jobs RUNNING after "
            f"{mem.seconds_to_running:.1f}s; the head's processes {mem.processes_before} -> "
            f"{mem.processes}, RSS {mem.baseline_rss_mb:,.0f} -> {mem.rss_mb:,.0f} MiB, PSS "
            f"{mem.baseline_pss_mb:,.0f} -> {mem.pss_mb:,.0f} MiB",
            "",
            table(
                [
                    Column("process", 28, left=True),
                    Column("before", 7),
                    Column("with jobs", 10),
                    Column("RSS MiB before", 15),
                    Column("RSS MiB with", 13),
                    Column("RSS MiB/job", 12),
                    Column("PSS MiB/job", 12),
                ],
                [
                    [
                        k.kind[:28],
                        str(k.count_before),
                        str(k.count),
                        f"{k.rss_before_mb:.1f}",
                        f"{k.rss_mb:.1f}",
                        _per_job(k.rss_mb - k.rss_before_mb, mem.running),
                        _per_job(k.pss_mb - k.pss_before_mb, mem.running),
                    ]
                    for k in mem.kinds
                ]
                + [
                    [
                        "all",
                        str(mem.processes_before),
                        str(mem.processes),
                        f"{mem.baseline_rss_mb:.1f}",
                        f"{mem.rss_mb:.1f}",
                        f"{mem.per_job_rss_mb:.1f}",
                        f"{mem.per_job_pss_mb:.1f}",
                    ]
                ],
            ),
            "",
            f"Ray Jobs: {number(r.jobs_per_s)} jobs/s, {r.memory_per_inflight_mb:.1f} MiB RSS "
            f"({mem.per_job_pss_mb:.1f} MiB PSS) per in-flight job (published: about "
            f"{self.published_mb_per_job:g} MB of head-node memory per running job)",
            f"for ours to meet the goal: >= {number(RATE_FACTOR * r.jobs_per_s)} jobs/s "
            f"({RATE_FACTOR:g}x) and <= {r.memory_per_inflight_mb * 1024 / MEMORY_FACTOR:,.0f} "
            f"KiB per in-flight job (1/{MEMORY_FACTOR:g})",
        ]
        if mem.running < mem.requested:
            lines.append(
                f"note: Ray ran only {mem.running} of the {mem.requested} in-flight jobs at once"
            )
        return "\n".join(lines)

    def to_json(self) -> str:
        """The report for scripts."""
        return json_text(asdict(self))


def _per_job(mib: float, jobs: int) -> str:
    return f"{mib / jobs:.1f}" if jobs else "-"


# -- processes ----------------------------------------------------------------------------------

_Pid = tuple[int, int]
"""A process: its pid and its start time (clock ticks since boot), so a reused pid is not it."""


@dataclass(frozen=True, slots=True)
class _Sample:
    """One process's memory."""

    pid: _Pid
    kind: str
    rss: int
    pss: int


def _stat(pid: int) -> tuple[int, int] | None:
    """``(ppid, start time)`` of ``pid``, or None when it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _alive(proc: _Pid) -> bool:
    stat = _stat(proc[0])
    return stat is not None and stat[1] == proc[1]


def _tree(roots: Iterable[_Pid]) -> set[_Pid]:
    """``roots`` (those alive) and all their descendants."""
    children: dict[int, list[_Pid]] = defaultdict(list)
    for pid in _pids():
        stat = _stat(pid)
        if stat is not None:
            children[stat[0]].append((pid, stat[1]))
    found = {r for r in roots if _alive(r)}
    todo = list(found)
    while todo:
        for child in children.get(todo.pop()[0], ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _uses(pid: int, path: str) -> bool:
    """``path`` or a path below it is in the command line of ``pid``, is its working directory
    or is open in it."""
    below = path.rstrip("/") + "/"
    base = f"/proc/{pid}"

    def names(name: str) -> bool:
        return name == path or name.startswith(below)

    with contextlib.suppress(OSError):
        args = Path(f"{base}/cmdline").read_bytes().decode(errors="replace").split("\0")
        if any(a.endswith(path) or below in a for a in args if a):
            return True
    with contextlib.suppress(OSError):
        if names(os.readlink(f"{base}/cwd")):
            return True
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"{base}/fd"):
            with contextlib.suppress(OSError):
                if names(os.readlink(f"{base}/fd/{fd}")):
                    return True
    return False


def processes_using(path: Path) -> list[int]:
    """Pids of the live processes that use ``path`` (a directory): in their command line, as
    their working directory or in an open file. A Ray head started with ``--temp-dir=path``:
    its GCS, raylet and dashboard name it, its workers and drivers write logs under it."""
    text = str(path)
    me = os.getpid()
    return sorted(pid for pid in _pids() if pid != me and _uses(pid, text))


def _kind(pid: int) -> str:
    """A process's name: Ray's title (``ray::JobSupervisor``, ``ray-dashboard-JobHead-0``), the
    script or module of a Python process, else its executable's name."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    args = [a for a in raw.decode(errors="replace").split("\0") if a]
    if len(args) == 1:  # a title set with setproctitle: one string, spaces inside
        args = args[0].split()
    if not args:
        return "(exiting)"  # a zombie: no command line any more
    first = os.path.basename(args[0])
    if first.startswith("python"):
        for i, arg in enumerate(args[1:-1], 1):
            if arg == "-m":
                return "ray start" if args[i + 1] == "ray.scripts.scripts" else args[i + 1]
            if arg == "-c":  # multiprocessing's helpers: "from multiprocessing.forkserver ..."
                words = args[i + 1].split()
                return words[1] if len(words) > 1 and words[0] == "from" else "python -c"
            if arg.endswith(".py"):
                return os.path.basename(arg)
    return first


def _sample(procs: Iterable[_Pid]) -> list[_Sample]:
    page = os.sysconf("SC_PAGE_SIZE")
    out = []
    for proc in procs:
        try:
            rss = int(Path(f"/proc/{proc[0]}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
        pss = 0
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{proc[0]}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                    break
        out.append(_Sample(proc, _kind(proc[0]), rss, pss))
    return out


# -- the head -----------------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _get(url: str, timeout: float) -> bytes:
    """The body of a GET of a loopback URL (the head's dashboard)."""
    with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 (http://127.0.0.1)
        body: bytes = answer.read()
        return body


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no output)"


class _Head:
    """A Ray head of our own: ``ray start --head --block`` in a session of its own, its
    dashboard on a free loopback port; :meth:`stop` leaves no process of it behind."""

    def __init__(self, temp_dir: Path, *, num_cpus: int, say: Callable[[str], None]) -> None:
        self.temp_dir = temp_dir
        self.say = say
        wanted = temp_dir / "ray"
        self.short: Path | None = None
        if len(str(wanted.resolve())) <= _MAX_RAY_DIR:
            wanted.mkdir(parents=True, exist_ok=True)
            self.ray_dir = wanted.resolve()
        else:
            self.short = Path(tempfile.mkdtemp(prefix="sg-rj-"))
            self.ray_dir = self.short
        names = ["gcs", "dashboard", "agent_http", "agent_grpc", "runtime_env_agent",
                 "metrics", "client_server", "node_manager", "object_manager"]  # fmt: skip
        self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
        self.url = f"http://127.0.0.1:{self.ports['dashboard']}"
        self.log_path = temp_dir / "ray-start.log"
        self.seen: set[_Pid] = set()
        p = self.ports
        self.argv = [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
            "--node-ip-address=127.0.0.1", f"--port={p['gcs']}",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={p['dashboard']}",
            f"--dashboard-agent-listen-port={p['agent_http']}",
            f"--dashboard-agent-grpc-port={p['agent_grpc']}",
            f"--runtime-env-agent-port={p['runtime_env_agent']}",
            f"--metrics-export-port={p['metrics']}",
            f"--ray-client-server-port={p['client_server']}",
            f"--node-manager-port={p['node_manager']}",
            f"--object-manager-port={p['object_manager']}",
            f"--num-cpus={num_cpus}", "--num-gpus=0",
            f"--object-store-memory={_OBJECT_STORE_BYTES}",
            f"--temp-dir={self.ray_dir}", "--disable-usage-stats",
            "--log-style=record", "--log-color=false",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
        env["RAY_AUTH_MODE"] = "disabled"
        self._log = self.log_path.open("wb")
        say(f"starting a Ray head: dashboard {self.url}, temp dir {self.ray_dir}")
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        root = _stat(self.popen.pid)
        self.root: _Pid = (self.popen.pid, root[1] if root else 0)
        self._write_manifest()

    def processes(self) -> set[_Pid]:
        """The head's process tree now (also remembered for :meth:`stop`)."""
        found = _tree([self.root])
        self.seen |= found
        return found

    def check_alive(self, what: str) -> None:
        if self.popen.poll() is not None:
            raise RayJobsError(
                f"ray start exited ({self.popen.returncode}) {what}; its output "
                f"({self.log_path}):\n{_tail(self.log_path)}"
            )

    def wait_ready(self, timeout: float) -> Any:
        """Wait for the dashboard and its job API; a ``JobSubmissionClient`` to it."""
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + timeout
        next_note = time.monotonic() + 5.0
        stage, last = "the dashboard's /api/version", "no answer yet"
        while True:
            self.check_alive(f"before {stage} answered")
            try:
                if stage.endswith("version"):
                    _get(f"{self.url}/api/version", timeout=2.0)
                    stage = "the job API (JobSubmissionClient.list_jobs)"
                client = JobSubmissionClient(self.url)
                client.list_jobs()
                self.say(f"Ray head up in {time.monotonic() - self.started:.1f}s")
                return client
            except Exception as exc:  # noqa: BLE001 (not up yet: any failure means retry)
                last = f"{type(exc).__name__}: {exc}"
            now = time.monotonic()
            if now > deadline:
                raise RayJobsError(
                    f"{stage} at {self.url} did not answer within {timeout:g}s (last: "
                    f"{last[:500]}); ray start's output ({self.log_path}):\n{_tail(self.log_path)}"
                )
            if now > next_note:
                self.say(f"waiting for {stage} ({now - self.started:.0f}s)")
                next_note = now + 5.0
            time.sleep(0.25)

    def stop(self) -> list[int]:
        """SIGTERM ``ray start --block``, wait for every process seen in its tree and every
        process using its directory; kill (by pid) what lingers. The pids that survived."""
        with contextlib.suppress(OSError):
            self.processes()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.say("ray start did not exit on SIGTERM: killing its processes")
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        deadline = time.monotonic() + _LINGER_SECONDS
        killed_at: float | None = None
        while True:
            lingering = self._lingering()
            if not lingering:
                break
            now = time.monotonic()
            if killed_at is None and now > deadline:
                self.say(f"killing {len(lingering)} lingering process(es) of the Ray head")
                for pid, _ in lingering:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                killed_at = now
            elif killed_at is not None and now > killed_at + 5.0:
                break
            time.sleep(0.1)
        survivors = sorted(pid for pid, _ in lingering)
        self._write_manifest(survivors)
        self._keep_logs()
        return survivors

    def _lingering(self) -> set[_Pid]:
        alive = {p for p in self.seen if _alive(p)}
        for pid in processes_using(self.ray_dir):
            stat = _stat(pid)
            if stat is not None:
                alive.add((pid, stat[1]))
        found = _tree(alive)
        self.seen |= found
        return found

    def _keep_logs(self) -> None:
        """Move a short temp directory's logs to ``temp_dir/ray``."""
        if self.short is None:
            return
        target = self.temp_dir / "ray"
        try:
            if not target.exists():
                shutil.move(str(self.short), str(target))
        except OSError as exc:
            logger.warning("could not move %s to %s: %s", self.short, target, exc)
        shutil.rmtree(self.short, ignore_errors=True)

    def _write_manifest(self, survivors: Sequence[int] = ()) -> None:
        doc = {
            "ray_dir": str(self.ray_dir),
            "logs": str(self.temp_dir / "ray"),
            "url": self.url,
            "ports": self.ports,
            "argv": self.argv,
            "root": list(self.root),
            "processes": sorted(list(p) for p in self.seen | {self.root}),
            "survivors": list(survivors),
        }
        (self.temp_dir / "ray-head.json").write_text(json.dumps(doc, indent=2))


# -- jobs ---------------------------------------------------------------------------------------


class _Tracker:
    """What ``list_jobs`` showed of a set of jobs: when each was first RUNNING, and its end."""

    def __init__(self, ids: Iterable[str]) -> None:
        self.ids = set(ids)
        self.running_at: dict[str, float] = {}
        """Wall time of the first poll that showed the job RUNNING, or its end_time."""
        self.seen_running: set[str] = set()
        self.status: dict[str, str] = {}
        self.ends: dict[str, Any] = {}
        """The JobDetails of each job that ended."""
        self.poll_seconds: list[float] = []

    def poll(self, client: Any) -> float:
        """One ``list_jobs``; its duration."""
        started = time.time()
        details = client.list_jobs()
        now = time.time()
        for d in details:
            sid = d.submission_id
            if sid not in self.ids:
                continue
            status = str(d.status.value)
            self.status[sid] = status
            if status == "RUNNING" and sid not in self.running_at:
                self.running_at[sid] = now
                self.seen_running.add(sid)
            elif d.status.is_terminal() and sid not in self.ends:
                self.ends[sid] = d
                if sid not in self.running_at:
                    self.running_at[sid] = d.end_time / 1000 if d.end_time else now
        self.poll_seconds.append(now - started)
        return now - started

    def counts(self) -> str:
        by: dict[str, int] = defaultdict(int)
        for sid in self.ids:
            by[self.status.get(sid, "not listed")] += 1
        return ", ".join(f"{n} {s}" for s, n in sorted(by.items()))


class _Submitter:
    """``submit_job`` from ``concurrency`` threads, one client each; the start and end (wall
    time) of every call."""

    def __init__(self, clients: Sequence[Any]) -> None:
        self._clients: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for c in clients:
            self._clients.put(c)
        self.pool = ThreadPoolExecutor(len(clients), thread_name_prefix="ray-jobs-submit")
        self.calls: dict[str, tuple[float, float]] = {}

    def _one(self, sid: str, entrypoint: str) -> None:
        client = self._clients.get()
        try:
            started = time.time()
            client.submit_job(entrypoint=entrypoint, submission_id=sid)
            self.calls[sid] = (started, time.time())
        finally:
            self._clients.put(client)

    def submit(self, ids: Sequence[str], entrypoint: str) -> list[Future[None]]:
        return [self.pool.submit(self._one, sid, entrypoint) for sid in ids]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _check(futures: Sequence[Future[None]]) -> None:
    for f in futures:
        if f.done() and f.exception() is not None:
            raise RayJobsError(f"submit_job failed: {f.exception()}") from f.exception()


def _follow(
    client: Any,
    tracker: _Tracker,
    futures: Sequence[Future[None]],
    *,
    until: Callable[[_Tracker], bool],
    deadline: float,
    what: str,
) -> None:
    """Poll ``list_jobs`` until ``until(tracker)``; RayJobsError past ``deadline``."""
    while True:
        _check(futures)
        took = tracker.poll(client)
        if until(tracker):
            return
        if time.monotonic() > deadline:
            raise RayJobsError(f"{what}: not done in time ({tracker.counts()})")
        time.sleep(max(0.0, _POLL_SECONDS - took))


def _failures(tracker: _Tracker, expected: str) -> str:
    bad = [d for d in tracker.ends.values() if str(d.status.value) != expected]
    if not bad:
        return ""
    first = bad[0]
    return (
        f"{len(bad)} job(s) did not end {expected}; {first.submission_id}: "
        f"{first.status.value} ({first.message})"
    )


def _delete(client: Any, ids: Iterable[str]) -> None:
    for sid in ids:
        with contextlib.suppress(Exception):
            client.delete_job(sid)


def _settle(head: _Head, deadline: float) -> set[_Pid]:
    """Wait (up to ``_SETTLE_SECONDS``) until the head's tree has kept the same processes for a
    second; its processes then."""
    until = min(deadline, time.monotonic() + _SETTLE_SECONDS)
    previous = head.processes()
    while time.monotonic() < until:
        time.sleep(1.0)
        now = head.processes()
        if now == previous:
            return now
        previous = now
    return previous


def _rate_round(
    client: Any, submitter: _Submitter, n: int, jobs: int, deadline: float
) -> tuple[RoundRow, _Tracker]:
    ids = [f"sg-bench-r{n}-{i:05d}-{os.getpid()}" for i in range(jobs)]
    tracker = _Tracker(ids)
    futures = submitter.submit(ids, _NOOP)
    _follow(
        client, tracker, futures,
        until=lambda t: len(t.ends) == jobs, deadline=deadline, what=f"round {n}",
    )  # fmt: skip
    for f in futures:
        f.result()
    problem = _failures(tracker, "SUCCEEDED")
    if problem:
        raise RayJobsError(f"round {n}: {problem}")
    first = min(submitter.calls[sid][0] for sid in ids)
    last_return = max(submitter.calls[sid][1] for sid in ids)
    last_end = max(
        (tracker.ends[sid].end_time or 0) / 1000 or tracker.running_at[sid] for sid in ids
    )
    latencies = [(tracker.running_at[sid] - submitter.calls[sid][0]) * 1000 for sid in ids]
    row = RoundRow(
        round=n,
        jobs=jobs,
        submit_per_s=jobs / (last_return - first),
        jobs_per_s=jobs / (last_end - first),
        latency_p50_ms=percentile(latencies, 0.50),
        latency_p99_ms=percentile(latencies, 0.99),
        seen_running=len(tracker.seen_running),
        seconds=last_end - first,
    )
    return row, tracker


def _alone(client: Any, submitter: _Submitter, count: int, deadline: float) -> list[float]:
    """Submit -> RUNNING of ``count`` jobs submitted one at a time, each once the one before
    ended (nothing else running), in milliseconds."""
    out = []
    for i in range(count):
        sid = f"sg-bench-alone-{i:03d}-{os.getpid()}"
        tracker = _Tracker([sid])
        _follow(
            client, tracker, submitter.submit([sid], _NOOP),
            until=lambda t: len(t.ends) == 1, deadline=deadline, what=f"job {sid} alone",
        )  # fmt: skip
        if problem := _failures(tracker, "SUCCEEDED"):
            raise RayJobsError(f"job {sid} alone: {problem}")
        out.append((tracker.running_at[sid] - submitter.calls[sid][0]) * 1000)
        _delete(client, [sid])
    return out


def _memory_rows(before: Sequence[_Sample], after: Sequence[_Sample]) -> list[MemoryRow]:
    kinds: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0, 0.0, 0.0, 0.0])
    for s in before:
        k = kinds[s.kind]
        k[0] += 1
        k[2] += s.rss / _MIB
        k[4] += s.pss / _MIB
    for s in after:
        k = kinds[s.kind]
        k[1] += 1
        k[3] += s.rss / _MIB
        k[5] += s.pss / _MIB
    rows = [
        MemoryRow(kind, int(v[0]), int(v[1]), v[2], v[3], v[4], v[5]) for kind, v in kinds.items()
    ]
    return sorted(rows, key=lambda r: (-(r.rss_mb - r.rss_before_mb), -r.rss_mb, r.kind))


def _median_sample(head: _Head, samples: int = 3) -> list[_Sample]:
    """Of ``samples`` samples of the tree half a second apart, the one of median RSS."""
    taken = []
    for i in range(samples):
        if i:
            time.sleep(0.5)
        taken.append(_sample(head.processes()))
    taken.sort(key=lambda s: sum(x.rss for x in s))
    return taken[len(taken) // 2]


def _measure_memory(
    head: _Head, client: Any, submitter: _Submitter, inflight: int, deadline: float,
    say: Callable[[str], None],
) -> Memory:  # fmt: skip
    _settle(head, deadline)
    before = _median_sample(head)
    ids = [f"sg-bench-hold-{i:05d}-{os.getpid()}" for i in range(inflight)]
    tracker = _Tracker(ids)
    say(f"memory: {len(before)} processes, {sum(s.rss for s in before) / _MIB:,.0f} MiB RSS; "
        f"submitting {inflight} `{_HOLD}` jobs")  # fmt: skip
    started = time.monotonic()
    futures = submitter.submit(ids, _HOLD)
    last_change = time.monotonic()
    running = 0
    try:
        while True:
            _check(futures)
            tracker.poll(client)
            if tracker.ends:
                d = next(iter(tracker.ends.values()))
                raise RayJobsError(
                    f"memory: `{_HOLD}` job {d.submission_id} ended: {d.status.value} ({d.message})"
                )
            now_running = sum(1 for s in tracker.status.values() if s == "RUNNING")
            now = time.monotonic()
            if now_running != running:
                running, last_change = now_running, now
            if running == inflight and all(f.done() for f in futures):
                break
            if running and now - last_change > _STALL_SECONDS and all(f.done() for f in futures):
                say(f"memory: {running} of {inflight} jobs RUNNING; the rest stay PENDING")
                break
            if now > deadline:
                raise RayJobsError(f"memory: jobs not RUNNING in time ({tracker.counts()})")
            time.sleep(0.1)
        to_running = time.monotonic() - started
        time.sleep(1.0)  # the supervisors' last start-up work (the watcher loops)
        tracker.poll(client)
        running = sum(1 for s in tracker.status.values() if s == "RUNNING")
        after = _median_sample(head)
    finally:
        for f in futures:
            f.cancel()
        for sid in ids:
            with contextlib.suppress(Exception):
                client.stop_job(sid)
    stop_deadline = min(deadline, time.monotonic() + 60.0)
    with contextlib.suppress(RayJobsError):
        _follow(
            client, tracker, [], until=lambda t: len(t.ends) == inflight,
            deadline=stop_deadline, what="stopping the in-flight jobs",
        )  # fmt: skip
    _delete(client, ids)
    rss_before, rss = (sum(s.rss for s in x) / _MIB for x in (before, after))
    pss_before, pss = (sum(s.pss for s in x) / _MIB for x in (before, after))
    return Memory(
        requested=inflight,
        running=running,
        seconds_to_running=to_running,
        baseline_rss_mb=rss_before,
        rss_mb=rss,
        baseline_pss_mb=pss_before,
        pss_mb=pss,
        per_job_rss_mb=(rss - rss_before) / running if running else 0.0,
        per_job_pss_mb=(pss - pss_before) / running if running else 0.0,
        processes_before=len(before),
        processes=len(after),
        kinds=_memory_rows(before, after),
    )


# -- entry points -------------------------------------------------------------------------------


def measure(
    *,
    jobs: int,
    inflight: int,
    temp_dir: Path,
    runs: int = 1,
    num_cpus: int = 2,
    concurrency: int = 4,
    timeout: float = 600.0,
    progress_lines: bool = False,
) -> Report:
    """Start a Ray head of our own in ``temp_dir``, run ``runs`` rate rounds of ``jobs`` no-op
    jobs and the memory measurement with ``inflight`` jobs, stop the head; the report.
    RayJobsError if the head does not come up, a job does not end as it should, the run takes
    longer than ``timeout`` seconds, or a process of the head outlives it."""
    if jobs < 1 or inflight < 1 or runs < 1 or num_cpus < 1 or concurrency < 1:
        raise ValueError("jobs, inflight, runs, num_cpus and concurrency must be >= 1")
    import ray

    began = time.monotonic()

    def say(text: str) -> None:
        line = f"[{time.monotonic() - began:5.1f}s] {text}"
        if progress_lines:
            progress(line)
        else:
            logger.info("%s", line)

    deadline = time.monotonic() + timeout
    load = os.getloadavg()
    temp_dir.mkdir(parents=True, exist_ok=True)
    head = _Head(temp_dir, num_cpus=num_cpus, say=say)
    failed = True
    submitter: _Submitter | None = None
    try:
        client = head.wait_ready(min(_STARTUP_SECONDS, timeout))
        startup = time.monotonic() - head.started
        from ray.job_submission import JobSubmissionClient

        submitter = _Submitter([JobSubmissionClient(head.url) for _ in range(concurrency)])

        warm = _Tracker(["sg-bench-warmup"])
        warm_began = time.monotonic()
        _follow(
            client, warm, submitter.submit(["sg-bench-warmup"], _NOOP),
            until=lambda t: len(t.ends) == 1,
            deadline=min(deadline, warm_began + _WARMUP_SECONDS), what="the warm-up job",
        )  # fmt: skip
        if problem := _failures(warm, "SUCCEEDED"):
            raise RayJobsError(f"the warm-up job: {problem}")
        warmup = time.monotonic() - warm_began
        _delete(client, ["sg-bench-warmup"])
        say(f"warm-up job done in {warmup:.1f}s")

        rounds: list[RoundRow] = []
        polls: list[float] = []
        for n in range(1, runs + 1):
            settled = _settle(head, deadline)
            say(f"round {n}: {len(settled)} processes in the head's tree, submitting {jobs} jobs")
            row, tracker = _rate_round(client, submitter, n, jobs, deadline)
            rounds.append(row)
            polls += tracker.poll_seconds
            _delete(client, tracker.ids)
            say(f"round {n}: {row.jobs_per_s:.2f} jobs/s, submit {row.submit_per_s:.2f}/s, "
                f"p50 {row.latency_p50_ms:,.0f} ms, p99 {row.latency_p99_ms:,.0f} ms")  # fmt: skip

        alone = _alone(client, submitter, runs, deadline)
        say(f"alone: submit -> RUNNING {statistics.median(alone):,.0f} ms")

        memory = _measure_memory(head, client, submitter, inflight, deadline, say)
        say(f"memory: {memory.per_job_rss_mb:.1f} MiB RSS per in-flight job")
        failed = False
    finally:
        if submitter is not None:
            submitter.close()
        say("stopping the Ray head")
        survivors = head.stop()
        say(f"Ray head stopped{f'; still running: {survivors}' if survivors else ''}")
    if survivors and not failed:
        raise RayJobsError(f"processes of the Ray head still ran after SIGKILL: {survivors}")

    result = RayJobsResult(
        jobs=jobs,
        submit_per_s=statistics.median(r.submit_per_s for r in rounds),
        jobs_per_s=statistics.median(r.jobs_per_s for r in rounds),
        latency_p50_ms=statistics.median(r.latency_p50_ms for r in rounds),
        latency_p99_ms=statistics.median(r.latency_p99_ms for r in rounds),
        inflight_jobs=memory.running,
        memory_per_inflight_mb=memory.per_job_rss_mb,
        baseline_rss_mb=memory.baseline_rss_mb,
        ray_version=str(ray.__version__),
    )
    return Report(
        machine=machine(ray=str(ray.__version__)),
        sizes={
            "jobs": jobs,
            "inflight": inflight,
            "concurrency": concurrency,
            "num_cpus": num_cpus,
        },
        runs=runs,
        result=result,
        rounds=rounds,
        alone_latency_ms=alone,
        memory=memory,
        startup_seconds=startup,
        warmup_seconds=warmup,
        poll_interval_ms=_POLL_SECONDS * 1000,
        list_jobs_ms=statistics.median(polls) * 1000 if polls else 0.0,
        load_average=load,
    )


def measure_ray_jobs(
    *,
    jobs: int,
    inflight: int,
    temp_dir: Path,
    num_cpus: int = 2,
    concurrency: int = 4,
    timeout: float = 600.0,
) -> RayJobsResult:
    """Ray Jobs' figures on this machine: one rate round of ``jobs`` no-op jobs and the memory
    of ``inflight`` jobs held RUNNING, on a Ray head of our own in ``temp_dir`` (stopped
    afterwards, every process of it gone). RayJobsError if it cannot be measured."""
    return measure(
        jobs=jobs,
        inflight=inflight,
        temp_dir=temp_dir,
        runs=1,
        num_cpus=num_cpus,
        concurrency=concurrency,
        timeout=timeout,
    ).result


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the tables, write JSON. Exit 1 if Ray Jobs could not be measured, 130 on
    Ctrl-C; the Ray head is stopped either way."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.ray_jobs",
        description="Measure Ray Jobs (JobSubmissionClient, a no-op command) on this machine: "
        "jobs/s, submit -> RUNNING latency, memory per in-flight job.",
    )
    add_arguments(parser, name="ray_jobs", runs=3)
    parser.add_argument("--jobs", type=int, default=None, help=f"jobs per round ({FULL.jobs})")
    parser.add_argument(
        "--inflight", type=int, default=None, help=f"jobs held RUNNING ({FULL.inflight})"
    )
    parser.add_argument(
        "--concurrency", type=int, default=None, help=f"submit threads ({FULL.concurrency})"
    )
    parser.add_argument(
        "--num-cpus", type=int, default=None, help=f"the head's --num-cpus ({FULL.num_cpus})"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    jobs = sizes.jobs if args.jobs is None else args.jobs
    inflight = sizes.inflight if args.inflight is None else args.inflight
    concurrency = sizes.concurrency if args.concurrency is None else args.concurrency
    num_cpus = sizes.num_cpus if args.num_cpus is None else args.num_cpus
    if min(args.runs, jobs, inflight, concurrency, num_cpus) < 1:
        parser.error("--runs, --jobs, --inflight, --concurrency and --num-cpus must be >= 1")
    try:
        with sigterm_interrupts(), tempfile.TemporaryDirectory(prefix="sg-bench-rj-") as tmp:
            report = measure(
                jobs=jobs,
                inflight=inflight,
                temp_dir=Path(tmp),
                runs=1 if args.quick else args.runs,
                num_cpus=num_cpus,
                concurrency=concurrency,
                progress_lines=True,
            )
    except RayJobsError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the Ray head was stopped", file=sys.stderr)
        return 130
    emit(report, name="ray_jobs", path=args.json)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
