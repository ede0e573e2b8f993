"""An in-process federation for integration tests: real Redis, real agents on loopback gRPC,
and the real scheduler and dispatcher loops (without Ray; the Ray actors are tested apart)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agents.config import AgentConfig
from agents.server import AgentServer
from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.config import RedisConfig, SchedulerConfig
from orchestrator.dispatch import Dispatcher, DispatcherOptions
from orchestrator.scheduler import Scheduler
from orchestrator.sitefile import SiteConfig
from orchestrator.states import JobState
from orchestrator.store import JobStore
from orchestrator.validation import normalize_site

DEMO_SITES = (
    SiteConfig(id="narvik", name="Narvik", jurisdiction="NO", owner="narvik-jv",
               power_cap_mw=230, cpus=512, memory_mb=4 << 20, regions=("eu",),
               gpus={"H100": 64, "GB200": 64}),
    SiteConfig(id="abu-dhabi", name="Abu Dhabi", jurisdiction="AE", owner="gulf",
               power_cap_mw=200, cpus=512, memory_mb=4 << 20, regions=("gcc",),
               gpus={"H100": 64}),
    SiteConfig(id="abilene", name="Abilene", jurisdiction="US", owner="texas",
               power_cap_mw=300, cpus=512, memory_mb=4 << 20, regions=("us",),
               gpus={"GB200": 64}),
)  # fmt: skip


@dataclass
class Federation:
    store: JobStore
    agents: dict[str, AgentServer]
    dispatcher: Dispatcher
    scheduler: Scheduler
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def wait_terminal(
        self, job_ids: Iterable[str], *, timeout: float = 30
    ) -> list[types_pb2.Job]:
        ids = list(job_ids)
        deadline = time.monotonic() + timeout
        while True:
            jobs = await self.store.get_jobs(ids)
            if all(JobState(j.state).is_terminal() for j in jobs):
                return jobs
            if time.monotonic() > deadline:
                states = {j.id: JobState(j.state).name for j in jobs}
                raise TimeoutError(f"jobs not finished after {timeout}s: {states}")
            await asyncio.sleep(0.05)

    async def wait_state(
        self, job_id: str, state: JobState, *, timeout: float = 30
    ) -> types_pb2.Job:
        deadline = time.monotonic() + timeout
        while True:
            job = await self.store.get_job(job_id)
            if job.state == state.value:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"{job_id} is {JobState(job.state).name}, not {state.name}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def federation(
    redis_config: RedisConfig,
    tmp_path: Path,
    *,
    sites: Iterable[SiteConfig] = DEMO_SITES,
    tenants: Iterable[types_pb2.Tenant] = (),
    kill_grace_seconds: float = 2.0,
    heartbeat_interval_seconds: float = 0.5,
    lost_after_seconds: float = 60.0,
) -> AsyncIterator[Federation]:
    """A running federation; agents get the lease ``ControlPlaneConfig`` would give them."""
    lease = lost_after_seconds - kill_grace_seconds - heartbeat_interval_seconds
    store = JobStore.from_config(redis_config)
    agents: dict[str, AgentServer] = {}
    stop = asyncio.Event()
    fed: Federation | None = None
    try:
        for tenant in tenants:
            await store.put_tenant(tenant)
        for site in sites:
            agent = AgentServer(
                AgentConfig(
                    site=site,
                    state_dir=tmp_path / "agents" / site.id,
                    kill_grace_seconds=kill_grace_seconds,
                )
            )
            reg = site.to_proto()
            reg.endpoint = await agent.start()
            agents[site.id] = agent
            await store.register_site(normalize_site(reg))
        dispatcher = Dispatcher(
            store,
            DispatcherOptions(
                heartbeat_interval_seconds=heartbeat_interval_seconds,
                kill_grace_seconds=kill_grace_seconds,
                lease_seconds=lease,
                refresh_seconds=0.5,
                sweep_seconds=0.5,
            ),
        )
        scheduler = Scheduler(
            store,
            config=SchedulerConfig(
                idle_interval_seconds=0.02,
                lost_after_seconds=lost_after_seconds,
                site_stale_after_seconds=min(15.0, lost_after_seconds / 2),
            ),
        )
        fed = Federation(store, agents, dispatcher, scheduler)
        fed.tasks = [
            asyncio.create_task(dispatcher.run_forever(stop)),
            asyncio.create_task(scheduler.run_forever(stop)),
        ]
        # wait until every site's stream is up
        deadline = time.monotonic() + 15
        while set(dispatcher.connected_sites()) != set(agents):
            if time.monotonic() > deadline:
                raise TimeoutError(f"sites connected: {dispatcher.connected_sites()}")
            await asyncio.sleep(0.05)
        yield fed
    finally:
        stop.set()
        if fed is not None:
            await asyncio.gather(*fed.tasks, return_exceptions=True)
        for agent in agents.values():
            await agent.stop(0.5, kill_jobs=True)
        await store.close()
