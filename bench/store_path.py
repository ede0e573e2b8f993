"""What one job costs Redis, stage by stage, on the path submit -> SUCCEEDED.

    python -m bench.store_path [--quick] [--jobs N] [--batch B] [--sites S] [--runs R]
                               [--json PATH] [--redis-url URL]

One process drives the store (``JobStore``) through the calls the control plane makes for a job,
in batches as the roles make them, against a redis-server of its own with the durable settings
of ``LocalRedis`` (``appendfsync always``; or ``--redis-url``): ``submit_many``; the scheduler's
``pending_order`` and ``pending_jobs``, then ``commit`` (every job to one of ``--sites`` sites,
dealt out in turn); the dispatcher's ``take_outbox`` per site; the agent's reports through
``apply_status``, RUNNING then SUCCEEDED. (Accepted acks cost the store nothing: the dispatcher
records only refusals.) No placement, no gRPC: what is left is the store's own cost, which
every end-to-end job pays.

Per stage it reports Redis's CPU per job (``INFO cpu``, ``used_cpu_sys + used_cpu_user``, over
the jobs), and how much of Redis's time went to the commands themselves and how much to the Lua
interpreter around them in the scripts (``INFO commandstats``: ``EVALSHA``'s time less that of
every other command); this process's CPU per job (encoding and decoding the calls), and the
wall time per job; and the Redis memory per queued job (``used_memory`` after the submits minus
before). Each figure is the median over ``--runs`` rounds, every round on a fresh key prefix.
This is a profiling aid for the store's scripts and record layout: the end-to-end figures are
``bench.e2e``'s. Results go to ``bench/results/store-path-<UTC time>.json``; ``--quick`` is a
tiny run of 2,000 jobs. (RUNNING and SUCCEEDED go in calls of their own, as for jobs that run
a while; a short job's two reports come in one call, one update: see ``JobStore.apply_status``.)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench._report import Column, add_arguments, emit, header, json_text, machine, own_redis, table
from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.config import RedisConfig
from orchestrator.states import JobState
from orchestrator.store.store import Decision, JobStore, StatusReport
from orchestrator.validation import normalize_site, normalize_spec, normalize_tenant

__all__ = ["Report", "StageCost", "main", "measure_store_path"]

_TENANT = "bench-tenant"


@dataclass(frozen=True, slots=True)
class StageCost:
    """One stage's cost per job (medians over the rounds)."""

    stage: str
    redis_cpu_us: float
    client_cpu_us: float
    wall_us: float
    commands_us: float
    """Redis's time in the commands themselves, those scripts call included (``INFO
    commandstats``)."""
    scripts_us: float
    """Redis's time in the scripts (``EVALSHA``) less that of the commands in them: the Lua
    interpreter's own work (with a few microseconds of commands run directly counted out)."""


def _spec() -> types_pb2.JobSpec:
    return normalize_spec(
        types_pb2.JobSpec(
            name="bench",
            tenant=_TENANT,
            command=["python", "-m", "train"],
            resources=types_pb2.Resources(gpus=1, gpu_type="H100", cpus=4, memory_mb=16_384),
        )
    )


async def _redis_cpu(store: JobStore) -> float:
    info: Any = await store.client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _command_times(store: JobStore) -> tuple[float, float]:
    """Seconds Redis spent so far in EVAL/EVALSHA, and in every other command but INFO."""
    info: Any = await store.client.info("commandstats")
    scripts = commands = 0.0
    for name, stats in info.items():
        if name in ("cmdstat_evalsha", "cmdstat_eval"):
            scripts += float(stats["usec"]) / 1e6
        elif name != "cmdstat_info":
            commands += float(stats["usec"]) / 1e6
    return scripts, commands


async def _used_memory(store: JobStore) -> int:
    info: Any = await store.client.info("memory")
    return int(info["used_memory"])


async def _round(store: JobStore, jobs: int, batch: int, sites: Sequence[str]) -> dict[str, Any]:
    costs: dict[str, tuple[float, float, float, float, float]] = {}

    async def stage(name: str, work: Callable[[], Awaitable[object]]) -> None:
        s0, k0 = await _command_times(store)
        r0, c0, w0 = await _redis_cpu(store), time.process_time(), time.perf_counter()
        await work()
        w1, c1, r1 = time.perf_counter(), time.process_time(), await _redis_cpu(store)
        s1, k1 = await _command_times(store)
        commands, scale = k1 - k0, 1e6 / jobs
        costs[name] = (
            (r1 - r0) * scale,
            (c1 - c0) * scale,
            (w1 - w0) * scale,
            commands * scale,
            (s1 - s0 - commands) * scale,
        )

    spec = _spec()
    mem0 = await _used_memory(store)

    async def submit() -> None:
        for i in range(0, jobs, batch):
            await store.submit_many([spec] * min(batch, jobs - i))

    await stage("submit", submit)
    mem1 = await _used_memory(store)
    placed: list[tuple[str, int, str]] = []

    async def schedule() -> None:
        while True:
            order = await store.pending_order(batch)  # as the scheduler reads its window
            if not order:
                return
            jobs = await store.pending_jobs([job_id for job_id, _ in order])
            decisions = [
                Decision(job_id, jobs[job_id].attempt, sites[n % len(sites)], "H100", 700)
                for n, (job_id, _) in enumerate(order)
            ]
            codes = await store.commit(decisions)
            if any(c != "ok" for c in codes):
                raise RuntimeError(f"commit refused: {sorted(set(codes))}")
            placed.extend((d.job_id, d.attempt, d.site) for d in decisions)

    await stage("schedule", schedule)
    taken: dict[str, list[tuple[str, int]]] = {s: [] for s in sites}

    async def dispatch() -> None:
        for site in sites:
            while got := await store.take_outbox(site, limit=batch, resend=False):
                taken[site] += [(a.job_id, a.attempt) for a in got]

    await stage("dispatch", dispatch)

    def per_site(state: JobState) -> Callable[[], Awaitable[None]]:
        exit_code = 0 if state == JobState.SUCCEEDED else None

        async def run() -> None:
            for site, items in taken.items():
                for i in range(0, len(items), batch):
                    reports = [
                        StatusReport(j, a, state, exit_code) for j, a in items[i : i + batch]
                    ]
                    await store.apply_status(site, reports)

        return run

    await stage("running", per_site(JobState.RUNNING))
    await stage("succeeded", per_site(JobState.SUCCEEDED))
    done = sum(len(v) for v in taken.values())
    if done != jobs:
        raise RuntimeError(f"{done} of {jobs} jobs went through")
    return {"costs": costs, "memory_per_job": (mem1 - mem0) / jobs}


async def measure_store_path(
    redis_url: str, *, jobs: int, batch: int, site_count: int, runs: int
) -> tuple[list[StageCost], float]:
    """Stage costs per job and Redis bytes per queued job, medians over ``runs`` rounds."""
    rounds = []
    for r in range(runs):
        store = JobStore.from_config(RedisConfig(url=redis_url, prefix=f"bsp{r}:"))
        try:
            sites = [f"s{n}" for n in range(site_count)]
            for site in sites:
                await store.register_site(
                    normalize_site(
                        types_pb2.Site(
                            id=site,
                            name=site,
                            jurisdiction="NO",
                            endpoint="127.0.0.1:1",
                            power_cap_mw=10_000,
                            cpus=10**9,
                            memory_mb=10**12,
                            gpus=[types_pb2.GpuPool(type="H100", count=10**6, watts=700)],
                        )
                    )
                )
            await store.put_tenant(normalize_tenant(types_pb2.Tenant(id=_TENANT, country="NO")))
            rounds.append(await _round(store, jobs, batch, sites))
        finally:
            await store.close()
    names = list(rounds[0]["costs"])
    stages = [
        StageCost(
            name,
            *(statistics.median(r["costs"][name][k] for r in rounds) for k in range(5)),
        )
        for name in names
    ]
    return stages, statistics.median(r["memory_per_job"] for r in rounds)


@dataclass(frozen=True, slots=True)
class Report:
    """A run: where and when, the sizes, the stages and the memory per queued job."""

    machine: dict[str, str]
    sizes: dict[str, int]
    stages: list[StageCost]
    memory_per_queued_job: float

    def text(self) -> str:
        total = StageCost(
            "total",
            sum(s.redis_cpu_us for s in self.stages),
            sum(s.client_cpu_us for s in self.stages),
            sum(s.wall_us for s in self.stages),
            sum(s.commands_us for s in self.stages),
            sum(s.scripts_us for s in self.stages),
        )
        columns = [
            Column("stage", 11, left=True),
            Column("redis cpu us/job", 17),
            Column("in commands", 12),
            Column("in Lua", 7),
            Column("client cpu us/job", 18),
            Column("wall us/job", 12),
        ]
        rows = [
            [
                s.stage,
                f"{s.redis_cpu_us:.1f}",
                f"{s.commands_us:.1f}",
                f"{s.scripts_us:.1f}",
                f"{s.client_cpu_us:.1f}",
                f"{s.wall_us:.1f}",
            ]
            for s in [*self.stages, total]
        ]
        return "\n".join(
            [
                *header("store path benchmark", self.machine),
                ", ".join(f"{k} {v:,}" for k, v in self.sizes.items()) + "; medians of the runs",
                "",
                table(columns, rows),
                "",
                f"Redis memory per queued job: {self.memory_per_queued_job:,.0f} B",
            ]
        )

    def to_json(self) -> str:
        return json_text(asdict(self))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.store_path",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    add_arguments(parser, name="store-path", runs=3)
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per round (20,000)")
    parser.add_argument("--batch", type=int, default=1_000, help="jobs per store call (1,000)")
    parser.add_argument("--sites", type=int, default=8, help="sites the jobs go to (8)")
    parser.add_argument(
        "--redis-url", default=None, help="a Redis to use (default: start a redis-server)"
    )
    args = parser.parse_args(argv)
    jobs = 2_000 if args.quick else args.jobs
    runs = 1 if args.quick else args.runs
    with own_redis(args.redis_url) as url:
        stages, memory = asyncio.run(
            measure_store_path(url, jobs=jobs, batch=args.batch, site_count=args.sites, runs=runs)
        )
        where = machine(redis_url=url)
    sizes = {"jobs": jobs, "batch": args.batch, "sites": args.sites, "runs": runs}
    emit(Report(where, sizes, stages, memory), name="store-path", path=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
