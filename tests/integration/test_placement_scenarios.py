"""Placement policy end to end, through the real scheduler, store, dispatcher and agents."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from harness import Federation, federation

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.config import RedisConfig
from orchestrator.scheduler.explain import explain_job
from orchestrator.scheduler.model import Reason
from orchestrator.sitefile import SiteConfig
from orchestrator.states import JobState
from orchestrator.validation import normalize_spec


def site(
    site_id: str,
    jurisdiction: str,
    *,
    h100: int,
    power_mw: float = 100.0,
    home: tuple[str, ...] = (),
    watts: int = 1400,
) -> SiteConfig:
    return SiteConfig(
        id=site_id, name=site_id, jurisdiction=jurisdiction, owner="partner",
        power_cap_mw=power_mw, cpus=4096, memory_mb=1 << 24, gpus={"H100": h100},
        gpu_watts={"H100": watts}, home_countries=home,
    )  # fmt: skip


def tenant(tenant_id: str, country: str) -> types_pb2.Tenant:
    return types_pb2.Tenant(id=tenant_id, country=country, weight=1.0)


def spec(
    name: str,
    *,
    tenant: str = "acme",
    gpus: int = 8,
    nodes: int = 1,
    allowed: tuple[str, ...] = (),
    command: tuple[str, ...] = ("sleep", "600"),
    priority: int = types_pb2.PRIORITY_CLASS_NORMAL,
) -> types_pb2.JobSpec:
    s = types_pb2.JobSpec(name=name, tenant=tenant, command=list(command), priority=priority)
    s.resources.gpus = gpus
    s.resources.gpu_type = "H100"
    s.resources.nodes = nodes
    s.placement.allowed_jurisdictions.extend(allowed)
    return normalize_spec(s)


async def stays_pending(fed: Federation, job_id: str, seconds: float = 1.5) -> types_pb2.Job:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = await fed.store.get_job(job_id)
        assert job.state == JobState.PENDING.value, job
        await asyncio.sleep(0.1)
    return job


async def test_norway_only_job_waits_for_narvik_and_explain_says_why(
    redis_config: RedisConfig, tmp_path: Path
) -> None:
    sites = [site("narvik", "NO", h100=8), site("abilene", "US", h100=64)]
    async with federation(redis_config, tmp_path, sites=sites) as fed:
        first, _ = await fed.store.submit(spec("first", allowed=("NO",)))
        await fed.wait_state(first.id, JobState.RUNNING)
        second, _ = await fed.store.submit(spec("second", allowed=("NO",)))
        waiting = await stays_pending(fed, second.id)
        assert waiting.site == ""
        report = await explain_job(fed.store, second.id)
        verdicts = {v.site_id: v for v in report.explanation.verdicts}
        assert verdicts["narvik"].reason is Reason.CAPACITY
        assert verdicts["abilene"].reason is Reason.RESIDENCY
        assert report.queue_position == 1 and "pending" in report.summary
        assert report.explanation.unschedulable is None
        # the scheduler recorded why, on the job itself
        assert "narvik" in (await fed.store.get_job(second.id)).reason
        # once narvik frees up, the job runs there, and only there
        await fed.store.cancel(first.id)
        placed = await fed.wait_state(second.id, JobState.RUNNING)
        assert placed.site == "narvik"


async def test_home_tenant_preempts_surplus_work_at_its_home_site(
    redis_config: RedisConfig, tmp_path: Path
) -> None:
    sites = [site("narvik", "NO", h100=8, home=("NO",))]
    tenants = [tenant("cam-ml", "GB"), tenant("uio", "NO")]
    async with federation(redis_config, tmp_path, sites=sites, tenants=tenants) as fed:
        surplus, _ = await fed.store.submit(
            spec("surplus", tenant="cam-ml", priority=types_pb2.PRIORITY_CLASS_SURPLUS)
        )
        await fed.wait_state(surplus.id, JobState.RUNNING)
        home, _ = await fed.store.submit(spec("home", tenant="uio", allowed=("NO",)))
        placed = await fed.wait_state(home.id, JobState.RUNNING, timeout=30)
        assert placed.site == "narvik"
        evicted = await fed.store.get_job(surplus.id)
        # back in the queue with a new attempt: preempted, not failed
        assert evicted.state == JobState.PENDING.value and evicted.attempt == 2
        assert evicted.preemptions == 1
        messages = [e.message for e in await fed.store.events(surplus.id)]
        assert any(m.startswith(f"preempted for {home.id}") for m in messages)
        assert not any(e.state == JobState.FAILED.value for e in await fed.store.events(surplus.id))


async def test_power_capped_site_refuses_the_job_that_would_exceed_its_cap(
    redis_config: RedisConfig, tmp_path: Path
) -> None:
    # 16 GPUs, but 20 kW: one 8-GPU job (11.2 kW) fits, a second would draw 22.4 kW
    sites = [site("capped", "NO", h100=16, power_mw=0.02)]
    async with federation(redis_config, tmp_path, sites=sites) as fed:
        first, _ = await fed.store.submit(spec("first"))
        await fed.wait_state(first.id, JobState.RUNNING)
        second, _ = await fed.store.submit(spec("second"))
        await stays_pending(fed, second.id)
        [rec] = await fed.store.site_records()
        assert rec.used_watts == 8 * 1400 and rec.used_gpus == {"H100": 8}
        report = await explain_job(fed.store, second.id)
        [verdict] = report.explanation.verdicts
        assert verdict.reason is Reason.POWER
        # too big for the cap even on an empty site: unschedulable, with the reason
        huge, _ = await fed.store.submit(spec("huge", gpus=16))
        deadline = time.monotonic() + 10
        while not (job := await fed.store.get_job(huge.id)).unschedulable:
            assert time.monotonic() < deadline, job
            await asyncio.sleep(0.1)
        assert "power" in job.reason


async def test_gang_job_lands_whole_at_one_site(redis_config: RedisConfig, tmp_path: Path) -> None:
    out = tmp_path / "gang"
    sites = [site("small", "NO", h100=16), site("big", "US", h100=40)]
    cmd = ("sh", "-c", f'echo "$SG_NODES $CUDA_VISIBLE_DEVICES" > {out}')
    async with federation(redis_config, tmp_path, sites=sites) as fed:
        gang, _ = await fed.store.submit(spec("gang", gpus=8, nodes=4, command=cmd))
        [done] = await fed.wait_terminal([gang.id])
        assert done.state == JobState.SUCCEEDED.value and done.site == "big"
        nodes, devices = out.read_text().split()
        assert nodes == "4" and len(devices.split(",")) == 32
        too_big, _ = await fed.store.submit(spec("too-big", gpus=8, nodes=6))
        deadline = time.monotonic() + 10
        while not (job := await fed.store.get_job(too_big.id)).unschedulable:
            assert time.monotonic() < deadline, job
            await asyncio.sleep(0.1)
        assert job.site == ""
