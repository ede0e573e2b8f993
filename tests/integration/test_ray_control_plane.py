"""The control plane as Ray actors: jobs survive SIGKILL of the scheduler and a dispatcher."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from harness import DEMO_SITES

from agents.config import AgentConfig
from agents.server import AgentServer
from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.config import ControlPlaneConfig, RedisConfig
from orchestrator.controlplane import ControlPlane
from orchestrator.states import JobState
from orchestrator.store import JobStore
from orchestrator.validation import normalize_site, normalize_spec


async def _info(cp: ControlPlane) -> dict[str, dict[str, Any]]:
    return await asyncio.to_thread(cp.info, timeout=60)


async def _wait_restarted(cp: ControlPlane, name: str, old_pid: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            info = (await _info(cp))[name]
            if info["pid"] != old_pid and info["alive"]:
                return
        except Exception:
            pass
        assert time.monotonic() < deadline, f"{name} did not come back"
        await asyncio.sleep(0.2)


async def test_sigkill_scheduler_and_dispatcher_mid_run_loses_and_doubles_nothing(
    ray_session: Any, redis_config: RedisConfig, tmp_path: Path
) -> None:
    runs = tmp_path / "runs.log"
    store = JobStore.from_config(redis_config)
    agents = []
    config = ControlPlaneConfig(
        redis=redis_config,
        dispatchers=2,
        ray_namespace=f"sg-test-{os.getpid()}-kill",
        state_dir=tmp_path,
    )
    cp = ControlPlane(config)
    try:
        for site in DEMO_SITES:
            agent = AgentServer(AgentConfig(site=site, state_dir=tmp_path / site.id))
            reg = site.to_proto()
            reg.endpoint = await agent.start()
            agents.append(agent)
            await store.register_site(normalize_site(reg))
        await asyncio.to_thread(cp.start)

        ids = []
        for i in range(200):
            s = types_pb2.JobSpec(
                name=f"job-{i}", tenant="acme",
                command=["sh", "-c", f'echo "$JOB_ID $JOB_ATTEMPT $SG_SITE" >> {runs}; sleep 0.5'],
            )  # fmt: skip
            s.resources.cpus = 64  # 8 at a time per site: the run takes a few seconds
            s.placement.allowed_jurisdictions.append(["NO", "AE", "US"][i % 3])
            job, _ = await store.submit(normalize_spec(s))
            ids.append(job.id)

        async def finished() -> int:
            jobs = await store.get_jobs(ids)
            return sum(1 for j in jobs if JobState(j.state).is_terminal())

        # let the run get going, then kill -9 the scheduler, then a dispatcher, mid-run
        deadline = time.monotonic() + 60
        while await finished() < 20:
            assert time.monotonic() < deadline, "no progress before the kills"
            await asyncio.sleep(0.1)
        info = await _info(cp)
        sched_pid = info["sg-scheduler"]["pid"]
        os.kill(sched_pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        busy = max(
            (n for n in info if n.startswith("sg-dispatcher")), key=lambda n: len(info[n]["sites"])
        )
        disp_pid = info[busy]["pid"]
        os.kill(disp_pid, signal.SIGKILL)
        assert await finished() < 200, "the kills came too late to be mid-run"
        await _wait_restarted(cp, "sg-scheduler", sched_pid)
        await _wait_restarted(cp, busy, disp_pid)

        deadline = time.monotonic() + 150
        while await finished() < 200:
            assert time.monotonic() < deadline, f"only {await finished()} of 200 finished"
            await asyncio.sleep(0.2)

        jobs = await store.get_jobs(ids)
        assert Counter(JobState(j.state).name for j in jobs) == {"SUCCEEDED": 200}
        # every job ran exactly once: one line per job in the runs log, attempt 1
        lines = [line.split() for line in runs.read_text().splitlines()]
        per_job = Counter(job_id for job_id, _, _ in lines)
        assert set(per_job) == set(ids)
        assert max(per_job.values()) == 1
        # and ended exactly once: one terminal event per job
        for job_id in ids:
            events = await store.events(job_id)
            assert sum(1 for e in events if JobState(e.state).is_terminal()) == 1
    finally:
        await asyncio.to_thread(cp.stop)
        for agent in agents:
            await agent.stop(0.5, kill_jobs=True)
        await store.close()
