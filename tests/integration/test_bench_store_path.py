"""bench.store_path against a real redis-server: every stage of the path is measured, every job
goes through it (a job that did not raises), and a queued job's memory is counted (never how
fast)."""

from __future__ import annotations

from bench.store_path import measure_store_path
from orchestrator.store import LocalRedis


async def test_a_tiny_run_measures_every_stage(redis_server: LocalRedis) -> None:
    stages, memory = await measure_store_path(
        redis_server.url, jobs=200, batch=50, site_count=3, runs=1
    )
    assert [s.stage for s in stages] == [
        "submit", "schedule", "dispatch", "running", "succeeded",
    ]  # fmt: skip
    assert all(s.wall_us > 0 and s.client_cpu_us >= 0 and s.redis_cpu_us >= 0 for s in stages)
    # every stage runs scripts whose commands take Redis time; dispatch is one script per site
    assert all(s.commands_us > 0 and s.scripts_us > 0 for s in stages)
    assert 0 < memory < 100_000
