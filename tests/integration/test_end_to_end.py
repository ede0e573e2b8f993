"""Submit -> place -> dispatch -> run -> finish, through real Redis, gRPC and agents."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from harness import federation

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.config import RedisConfig
from orchestrator.local.state import pid_alive
from orchestrator.states import JobState
from orchestrator.validation import normalize_spec


def spec(
    name: str,
    command: list[str],
    *,
    allowed: tuple[str, ...] = (),
    gpus: int = 0,
    gpu_type: str = "",
) -> types_pb2.JobSpec:
    s = types_pb2.JobSpec(name=name, tenant="acme", command=command)
    s.placement.allowed_jurisdictions.extend(allowed)
    s.resources.gpus = gpus
    s.resources.gpu_type = gpu_type
    return normalize_spec(s)


async def test_jobs_run_where_their_residency_allows(
    redis_config: RedisConfig, tmp_path: Path
) -> None:
    async with federation(redis_config, tmp_path) as fed:
        wanted = {}
        for country, site in (("NO", "narvik"), ("AE", "abu-dhabi"), ("US", "abilene")):
            for i in range(3):
                job, _ = await fed.store.submit(
                    spec(f"{site}-{i}", ["sh", "-c", "echo hi"], allowed=(country,), gpus=2)
                )
                wanted[job.id] = site
        failing, _ = await fed.store.submit(spec("fails", ["sh", "-c", "exit 3"]))
        jobs = await fed.wait_terminal([*wanted, failing.id])
        by_id = {j.id: j for j in jobs}
        for job_id, site in wanted.items():
            assert by_id[job_id].site == site
            assert by_id[job_id].state == JobState.SUCCEEDED.value
            assert by_id[job_id].exit_code == 0
        failed = by_id[failing.id]
        assert failed.state == JobState.FAILED.value
        assert failed.has_exit_code and failed.exit_code == 3
        # capacity is all given back
        for rec in await fed.store.site_records():
            assert rec.used_gpus == {} and rec.active_jobs == 0


async def test_unschedulable_job_is_reported_not_silently_pending(
    redis_config: RedisConfig, tmp_path: Path
) -> None:
    async with federation(redis_config, tmp_path) as fed:
        job, _ = await fed.store.submit(spec("tokyo", ["true"], allowed=("JP",)))
        deadline = time.monotonic() + 10
        while not (got := await fed.store.get_job(job.id)).unschedulable:
            assert time.monotonic() < deadline, got
            await fed.store.client.publish(fed.store.keys.wake_channel, "1")
            await asyncio.sleep(0.05)
        assert got.state == JobState.PENDING.value
        assert "no registered site in allowed jurisdictions [JP]" in got.reason


async def test_cancel_of_running_job_ends_its_process_group_within_5s(
    redis_config: RedisConfig, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pids"
    cmd = ["sh", "-c", f"sleep 600 & echo $$ $! > {pid_file}; wait"]
    async with federation(redis_config, tmp_path) as fed:
        job, _ = await fed.store.submit(spec("sleeper", cmd))
        await fed.wait_state(job.id, JobState.RUNNING)
        deadline = time.monotonic() + 10
        while not pid_file.exists() or len(pid_file.read_text().split()) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        pids = [int(p) for p in pid_file.read_text().split()]
        started = time.monotonic()
        await fed.store.cancel(job.id, "test")
        final = await fed.wait_state(job.id, JobState.CANCELLED, timeout=10)
        elapsed = time.monotonic() - started
        assert final.state == JobState.CANCELLED.value
        assert elapsed < 5, elapsed
        for pid in pids:
            assert not pid_alive(pid), f"process {pid} of the cancelled job still runs"
