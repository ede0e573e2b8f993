"""What idle sites cost the dispatcher, and that the savings keep its guarantees: against a
real redis-server and a SimFleet on loopback.

Heartbeats of many sites are recorded in one store call, and a site's lease is renewed only
once its heartbeat is in the store. An idle site's sender makes no store call; new work and
cancels reach it on their announcement, and the sweep finds work whose announcement was lost.
The registry is re-read only when its version changed.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from test_store import place, site, spec

from agents.fleet import SimFleet, sim_sites
from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.dispatch import Dispatcher, DispatcherOptions
from orchestrator.sitefile import SiteConfig
from orchestrator.states import JobState
from orchestrator.store import Decision, JobStore
from orchestrator.validation import normalize_site, normalize_spec

RunDispatcher = Callable[..., Awaitable[Dispatcher]]


class CountingStore(JobStore):
    """A JobStore that counts calls to the methods a dispatcher uses, and can hold heartbeats
    back (``heartbeats_open`` cleared)."""

    def __init__(self, store: JobStore) -> None:
        super().__init__(store.client, prefix=store.prefix)
        self.calls: Counter[str] = Counter()
        self.heartbeat_batches: list[int] = []
        self.heartbeats_open = asyncio.Event()
        self.heartbeats_open.set()

    async def record_heartbeats(
        self, site_ids: Sequence[str], *, dispatcher_id: str, at: float | None = None
    ) -> list[bool]:
        self.calls["record_heartbeats"] += 1
        self.heartbeat_batches.append(len(site_ids))
        await self.heartbeats_open.wait()
        return await super().record_heartbeats(site_ids, dispatcher_id=dispatcher_id, at=at)

    async def take_work(self, site_id: str, *, limit: int, resend: bool) -> Any:
        self.calls["take_work"] += 1
        return await super().take_work(site_id, limit=limit, resend=resend)

    async def site_records(self, site_ids: Sequence[str] | None = None) -> Any:
        self.calls["site_records"] += 1
        return await super().site_records(site_ids)

    async def sites_with_work(self, site_ids: Sequence[str]) -> list[str]:
        self.calls["sites_with_work"] += 1
        return await super().sites_with_work(site_ids)


class DeafDispatcher(Dispatcher):
    """Hears no announcement: only the sweep finds new work."""

    async def _listen(self, stop: asyncio.Event) -> None:
        await stop.wait()


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[SimFleet]:
    f = SimFleet(sim_sites(20), state_root=tmp_path / "fleet")
    await f.start()
    yield f
    await f.stop(0)


@pytest.fixture
async def counting(store: JobStore) -> CountingStore:
    return CountingStore(store)


@pytest.fixture
async def run_dispatcher(counting: CountingStore) -> AsyncIterator[RunDispatcher]:
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def run(
        sites: Sequence[str], *, kind: type[Dispatcher] = Dispatcher, **options: Any
    ) -> Dispatcher:
        opts = {"heartbeat_interval_seconds": 0.1, "refresh_seconds": 0.1, **options}
        dispatcher = kind(counting, DispatcherOptions(dispatcher_id="idle-test", **opts))
        stop = asyncio.Event()
        running.append((stop, asyncio.create_task(dispatcher.run_forever(stop))))
        async with asyncio.timeout(20):
            while dispatcher.connected_sites() != sorted(sites):
                await asyncio.sleep(0.02)
        return dispatcher

    yield run
    for stop, task in running:
        stop.set()
        await asyncio.wait_for(task, 30)


async def register(store: JobStore, sites: Sequence[SiteConfig], endpoint: str) -> None:
    for s in sites:
        reg = s.to_proto()
        reg.endpoint = endpoint
        await store.register_site(normalize_site(reg))


async def submit_to(store: JobStore, site_id: str, **env: str) -> str:
    """A job committed straight to ``site_id`` (announced on the notify channel)."""
    job_spec = types_pb2.JobSpec(name="j", tenant="acme", command=["sleep", "inf"], env=env)
    job, _ = await store.submit(normalize_spec(job_spec))
    assert await store.commit([Decision(job.id, job.attempt, site_id)]) == ["ok"]
    return job.id


async def wait_state(store: JobStore, job_id: str, state: JobState, timeout: float) -> float:
    """Seconds until the job is in ``state``."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while JobState((await store.get_job(job_id)).state) != state:
            await asyncio.sleep(0.02)
    return time.monotonic() - started


# -- the store -------------------------------------------------------------------------------------


async def test_heartbeats_of_many_sites_are_one_call(store: JobStore) -> None:
    for site_id in ("narvik", "oslo", "bergen"):
        await store.register_site(site(site_id))
    t0 = time.time()
    await store.record_heartbeats(["narvik", "oslo", "bergen"], dispatcher_id="d0", at=t0)
    assert await store.lose_site("oslo", lost_after=1, at=t0 + 5) == ("lost", 0)
    version = await store.sites_version()

    back = await store.record_heartbeats(
        ["narvik", "oslo", "nowhere", "bergen"], dispatcher_id="d1", at=t0 + 6
    )
    assert back == [False, True, False, False]  # oslo was LOST until now; nowhere is unknown
    records = {r.site.id: r for r in await store.site_records()}
    assert set(records) == {"narvik", "oslo", "bergen"}  # an unknown site is not created
    for rec in records.values():
        assert (rec.last_heartbeat, rec.connected_by) == (pytest.approx(t0 + 6), "d1")
        assert rec.state == types_pb2.SITE_STATE_ACTIVE
    assert await store.sites_version() == version + 1  # one site came back
    assert await store.record_heartbeats([], dispatcher_id="d1") == []
    assert await store.record_heartbeat("oslo", dispatcher_id="d1") is False


async def test_sites_with_work_are_found_in_one_read(store: JobStore) -> None:
    for site_id in ("narvik", "oslo", "bergen"):
        await store.register_site(site(site_id))
    queued, _ = await store.submit(spec("queued"))
    assert await place(store, queued, "narvik") == "ok"
    sent, _ = await store.submit(spec("sent"))
    assert await place(store, sent, "oslo") == "ok"
    await store.take_outbox("oslo", limit=10, resend=False)
    assert await store.sites_with_work(["bergen", "narvik", "oslo"]) == ["narvik"]
    await store.cancel(sent.id)  # a cancel to deliver
    assert await store.sites_with_work(["bergen", "narvik", "oslo"]) == ["narvik", "oslo"]
    assert await store.sites_with_work([]) == []


# -- the dispatcher --------------------------------------------------------------------------------


async def test_heartbeats_are_recorded_together_and_renewals_wait_for_them(
    fleet: SimFleet, counting: CountingStore, run_dispatcher: RunDispatcher
) -> None:
    sites = sim_sites(20)
    await register(counting, sites, fleet.address)
    await run_dispatcher([s.id for s in sites], lease_seconds=5.0)
    connected = len(counting.heartbeat_batches)  # one call per hello, as each stream opened
    await asyncio.sleep(0.5)
    # 20 sites beating every 0.1 s: far fewer calls than heartbeats, many sites per call
    batches = counting.heartbeat_batches[connected:]
    assert len(batches) <= 0.5 / 0.1 + 2 and max(batches) >= 10, batches
    assert sum(batches) >= 20 * 2

    runtime = fleet.runtime(sites[0].id)
    # renewed at most every eighth of the lease: never below 5 - 5/8 - one heartbeat, and slack
    floor = 5.0 - 5.0 / 8 - 0.1 - 0.15
    assert (runtime.lease_remaining() or 0) > floor
    # ... and not after every heartbeat: over 3 s (30 heartbeats), renewals (the lease left
    # jumping up) come every 0.625 s or a little later
    renewals, last = 0, runtime.lease_remaining() or 0.0
    for _ in range(150):
        await asyncio.sleep(0.02)
        left = runtime.lease_remaining() or 0.0
        renewals += left > last + 0.05
        last = left
    assert 3 <= renewals <= 5, renewals
    counting.heartbeats_open.clear()  # the store takes no heartbeat: no renewal may go out
    await asyncio.sleep(0.3)  # what was recorded before has been renewed
    fresh = runtime.lease_remaining()
    assert fresh is not None
    await asyncio.sleep(1.0)
    held = runtime.lease_remaining()
    assert held is not None and held < fresh - 0.9, (fresh, held)
    counting.heartbeats_open.set()
    async with asyncio.timeout(5):  # recorded now: renewed again
        while (runtime.lease_remaining() or 0) < floor:
            await asyncio.sleep(0.02)


async def test_an_idle_site_costs_no_store_call_and_work_still_arrives_at_once(
    fleet: SimFleet, counting: CountingStore, run_dispatcher: RunDispatcher
) -> None:
    sites = sim_sites(20)
    await register(counting, sites[:10], fleet.address)
    dispatcher = await run_dispatcher([s.id for s in sites[:10]], sweep_seconds=60.0)
    await asyncio.sleep(0.3)  # every sender has looked once
    before = Counter(counting.calls)
    await asyncio.sleep(1.0)
    idle = counting.calls - before
    assert idle["take_work"] == idle["site_records"] == 0, idle
    assert idle["record_heartbeats"] > 0

    # announced work and cancels arrive long before any sweep
    job_id = await submit_to(counting, sites[3].id)
    assert await wait_state(counting, job_id, JobState.RUNNING, timeout=5) < 2
    await counting.cancel(job_id)
    assert await wait_state(counting, job_id, JobState.CANCELLED, timeout=5) < 2

    # a registration changes the registry's version: the new sites are connected
    await register(counting, sites[10:], fleet.address)
    async with asyncio.timeout(10):
        while dispatcher.connected_sites() != sorted(s.id for s in sites):
            await asyncio.sleep(0.02)


async def test_the_sweep_finds_work_whose_announcement_was_lost(
    fleet: SimFleet, counting: CountingStore, run_dispatcher: RunDispatcher
) -> None:
    sites = sim_sites(5)
    await register(counting, sites, fleet.address)
    await run_dispatcher([s.id for s in sites], kind=DeafDispatcher, sweep_seconds=0.5)
    job_id = await submit_to(counting, sites[2].id)
    await wait_state(counting, job_id, JobState.RUNNING, timeout=5)
    assert counting.calls["sites_with_work"] >= 1
