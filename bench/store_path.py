"""What one job costs Redis, stage by stage, on the path submit -> SUCCEEDED.

    python -m bench.store_path [--jobs N] [--batch B] [--sites S] [--runs R] [--json PATH]

One process drives the store (``JobStore``) through the calls the control plane makes for a
job, in batches as the roles make them, against a redis-server of its own with the durable
settings of ``LocalRedis`` (``appendfsync always``): ``submit_many``; the scheduler's
``pending_order`` and ``pending_jobs``, then ``commit`` (every job to one of ``--sites`` sites,
dealt out in turn); the dispatcher's ``take_outbox`` per site; the agent's answers through
``record_acks``, then ``apply_status`` RUNNING, then SUCCEEDED. No placement, no gRPC: what is
left is the store's own cost, which every end-to-end job pays.

Per stage it reports Redis's CPU per job (``INFO cpu``, ``used_cpu_sys + used_cpu_user``, over
the jobs), this process's CPU per job (encoding and decoding the calls), and the wall time per
job; and the Redis memory per queued job (``used_memory`` after the submits minus before). Each
figure is the median over ``--runs`` rounds, every round on a fresh key prefix. This is a
profiling aid for the store's scripts and record layout: the end-to-end figures are
``bench.e2e``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.config import RedisConfig
from orchestrator.states import JobState
from orchestrator.store.redis_server import LocalRedis
from orchestrator.store.store import Ack, Decision, JobStore, StatusReport
from orchestrator.validation import normalize_site, normalize_spec, normalize_tenant

__all__ = ["StageCost", "main", "measure_store_path"]

_TENANT = "bench-tenant"


@dataclass(frozen=True, slots=True)
class StageCost:
    """One stage's cost per job (medians over the rounds)."""

    stage: str
    redis_cpu_us: float
    client_cpu_us: float
    wall_us: float


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


async def _used_memory(store: JobStore) -> int:
    info: Any = await store.client.info("memory")
    return int(info["used_memory"])


async def _round(store: JobStore, jobs: int, batch: int, sites: Sequence[str]) -> dict[str, Any]:
    costs: dict[str, tuple[float, float, float]] = {}

    async def stage(name: str, work: Callable[[], Awaitable[object]]) -> None:
        r0, c0, w0 = await _redis_cpu(store), time.process_time(), time.perf_counter()
        await work()
        w1, c1, r1 = time.perf_counter(), time.process_time(), await _redis_cpu(store)
        costs[name] = ((r1 - r0) / jobs * 1e6, (c1 - c0) / jobs * 1e6, (w1 - w0) / jobs * 1e6)

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

    def per_site(make: Callable[[str, int], Any]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            for site, items in taken.items():
                for i in range(0, len(items), batch):
                    chunk = [make(j, a) for j, a in items[i : i + batch]]
                    if isinstance(chunk[0], Ack):
                        await store.record_acks(site, chunk)
                    else:
                        await store.apply_status(site, chunk)

        return run

    await stage("ack", per_site(lambda j, a: Ack(j, a, True)))
    await stage("running", per_site(lambda j, a: StatusReport(j, a, JobState.RUNNING)))
    await stage(
        "succeeded", per_site(lambda j, a: StatusReport(j, a, JobState.SUCCEEDED, exit_code=0))
    )
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
            *(statistics.median(r["costs"][name][k] for r in rounds) for k in range(3)),
        )
        for name in names
    ]
    return stages, statistics.median(r["memory_per_job"] for r in rounds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.store_path",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per round (20,000)")
    parser.add_argument("--batch", type=int, default=1_000, help="jobs per store call (1,000)")
    parser.add_argument("--sites", type=int, default=8, help="sites the jobs go to (8)")
    parser.add_argument("--runs", type=int, default=3, help="rounds; figures are medians (3)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sg-bench-") as tmp:
        redis = LocalRedis(Path(tmp))
        redis.start()
        try:
            stages, memory = asyncio.run(
                measure_store_path(
                    redis.url,
                    jobs=args.jobs,
                    batch=args.batch,
                    site_count=args.sites,
                    runs=args.runs,
                )
            )
        finally:
            redis.stop()
    print(f"{'stage':<12}{'redis cpu us/job':>18}{'client cpu us/job':>19}{'wall us/job':>13}")
    for s in stages:
        print(f"{s.stage:<12}{s.redis_cpu_us:>18.1f}{s.client_cpu_us:>19.1f}{s.wall_us:>13.1f}")
    total = StageCost(
        "total",
        sum(s.redis_cpu_us for s in stages),
        sum(s.client_cpu_us for s in stages),
        sum(s.wall_us for s in stages),
    )
    print(
        f"{'total':<12}{total.redis_cpu_us:>18.1f}{total.client_cpu_us:>19.1f}{total.wall_us:>13.1f}"
    )
    print(f"Redis memory per queued job: {memory:,.0f} B")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"stages": [_fields(s) for s in stages], "memory_per_queued_job": memory},
                indent=2,
            )
        )
    return 0


def _fields(s: StageCost) -> dict[str, Any]:
    return {k: getattr(s, k) for k in ("stage", "redis_cpu_us", "client_cpu_us", "wall_us")}


if __name__ == "__main__":
    sys.exit(main())
