"""Fault scenarios against a ``Cluster``: a seeded workload, one function per fault, the check.

A scenario (``run_scenario``) starts a seeded workload (``generate``: residency NO-only, AE-only,
US-only, NO|US, EEA and anywhere; 0.3-3 s jobs; a few that exit 1 with ``max_attempts`` 2; some
cancelled while they run), plus, for faults aimed at one site, a few *sentinel* jobs that are
running there when the fault strikes and long enough to outlive a lease (so a fault that must
fence or move work has work to fence and move). It then injects the fault (``FAULTS``: each
function injects, waits and heals), waits for every acknowledged job to end, and checks:

- the Jepsen-style ``checker.check`` over the job program's records and the store's final
  states (lost, duplicated beyond the overlap bound, same attempt twice, jurisdiction);
- outcomes: a job that should succeed SUCCEEDED, one that should fail FAILED, a cancelled one
  CANCELLED (or ended on its own first): a fault must never become the job's failure;
- fencing: when a site was cut off for longer than its lease (partition, frozen agent, dead
  agent), its runs ended by fault start + lease + kill grace (+ ``FENCE_SLACK``);
- losses: no site was declared LOST except by a fault that cut it off past ``lost_after``;
- figures: time to detect a lost site (fault start to the site's LOST in the store) and time to
  requeue (the site's LOST to the moved job RUNNING at another site).

Only acknowledged submits (OK from the API) are expected; a submit that failed may still have
been written, and its runs are reported apart (``Report.unexpected``), not as failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import random
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.errors import (
    IllegalTransitionError,
    ServiceUnavailableError,
    StoreUnavailableError,
)
from orchestrator.sdk import AsyncClient
from orchestrator.spec import JobSpec, Placement, Resources
from orchestrator.states import JobState
from orchestrator.store import JobStore

from .checker import Expect, Report, check
from .cluster import CONTROL_PLANE, Cluster
from .jobprog import Run, read_records

__all__ = [
    "FAULTS",
    "FENCE_SLACK",
    "RESIDENCIES",
    "Evaluation",
    "FaultContext",
    "FaultRecord",
    "FaultSpec",
    "JobPlan",
    "Outcome",
    "ScenarioResult",
    "SiteMonitor",
    "Workload",
    "bounded",
    "cancel_and_wait",
    "evaluate",
    "generate",
    "run_scenario",
    "sentinels",
    "settle",
    "wait_terminal",
]

log = logging.getLogger(__name__)

RESIDENCIES: dict[str, tuple[str, ...]] = {
    "NO": ("NO",),
    "AE": ("AE",),
    "US": ("US",),
    "NO|US": ("NO", "US"),
    "EEA": ("EEA",),
    "any": (),
}
"""The residency classes of the workload: label to allowed jurisdictions (empty: anywhere)."""
_RESIDENCY_WEIGHTS = {"NO": 4, "AE": 3, "US": 3, "NO|US": 4, "EEA": 2, "any": 4}

FENCE_SLACK = 1.0
"""Seconds allowed past ``fault start + lease + kill grace`` for a cut-off site's runs to end
(the agent's lease watchdog polls, the job needs a moment to write its end)."""

TENANT = "acme"
STORE_CALL_TIMEOUT = 15.0
"""Seconds the harness gives one read of the store before it reports a hang (with every
asyncio task's stack) instead of waiting forever."""

T = TypeVar("T")
_RETRYABLE = (ServiceUnavailableError, StoreUnavailableError)
_TERMINAL_NAMES = {s.name for s in JobState if s.is_terminal()}


def task_stacks() -> str:
    """The stack of every asyncio task of the running loop (for reports of hangs)."""
    out = []
    for task in asyncio.all_tasks():
        buf = io.StringIO()
        task.print_stack(limit=12, file=buf)
        out.append(f"task {task.get_name()}:\n{buf.getvalue()}")
    return "\n".join(out)


async def cancel_and_wait(task: asyncio.Task[object], *, patience: float = 1.0) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again if it swallowed the
    cancellation. It can: on Python 3.11 ``asyncio.wait_for`` drops a cancel that lands as its
    inner awaitable finishes, and redis-py wraps every command it sends in ``wait_for`` when a
    socket timeout is set."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=patience)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()


async def bounded(what: str, aw: Awaitable[T], timeout: float = STORE_CALL_TIMEOUT) -> T:
    """``await aw``, but raise ``TimeoutError`` naming ``what`` (every task's stack logged)
    if it takes longer than ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            return await aw
    except TimeoutError:
        log.error("%s hung for %gs; tasks:\n%s", what, timeout, task_stacks())
        raise TimeoutError(f"{what} did not answer within {timeout:g}s") from None


# -- the workload ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobPlan:
    """One job the workload will submit."""

    name: str
    residency: str
    """A key of ``RESIDENCIES``."""
    seconds: float
    exit_code: int = 0
    max_attempts: int = 1
    gpus: int = 0
    cancel_after: float | None = None
    """Seconds after the acknowledgement to cancel it, if at all."""
    preferred_site: str = ""
    sentinel: bool = False
    """Pinned to a faulted site to be running there when the fault strikes."""

    @property
    def allowed(self) -> tuple[str, ...]:
        """Allowed jurisdictions (empty: anywhere)."""
        return RESIDENCIES[self.residency]


def generate(
    rng: random.Random,
    count: int,
    *,
    prefix: str,
    cancel_share: float = 0.12,
    fail_share: float = 0.06,
    gpu_share: float = 0.15,
) -> list[JobPlan]:
    """``count`` seeded job plans: mixed residency, 0.3-3 s, a few failing, some cancelled."""
    labels = list(_RESIDENCY_WEIGHTS)
    weights = list(_RESIDENCY_WEIGHTS.values())
    plans = []
    for i in range(count):
        residency = rng.choices(labels, weights)[0]
        fails = rng.random() < fail_share
        cancelled = not fails and rng.random() < cancel_share
        seconds = round(rng.uniform(0.3, 3.0), 2)
        if cancelled:
            seconds = round(rng.uniform(2.5, 4.0), 2)  # still running when the cancel comes
        plans.append(
            JobPlan(
                name=f"{prefix}-{i}",
                residency=residency,
                seconds=seconds,
                exit_code=1 if fails else 0,
                max_attempts=2 if fails else 1,
                gpus=1 if rng.random() < gpu_share else 0,
                cancel_after=round(rng.uniform(0.4, 1.8), 2) if cancelled else None,
            )
        )
    return plans


def sentinels(prefix: str, site: str, count: int, seconds: float) -> list[JobPlan]:
    """Jobs that may run anywhere but prefer ``site``: running there when its fault strikes."""
    return [
        JobPlan(
            name=f"{prefix}-s{i}",
            residency="any",
            seconds=seconds,
            preferred_site=site,
            sentinel=True,
        )
        for i in range(count)
    ]


@dataclass
class Submitted:
    """An acknowledged submit and what happened to its cancel."""

    job_id: str
    plan: JobPlan
    acked_at: float
    cancelled_at: float | None = None
    """When the harness sent the cancel the API acknowledged."""
    cancel_unknown: bool = False
    """A cancel was sent but its answer was lost (it may have been applied)."""


class Workload:
    """Submits job plans through the SDK and remembers every acknowledged one."""

    def __init__(
        self, cluster: Cluster, client: AsyncClient, log_dir: Path, rng: random.Random
    ) -> None:
        self.cluster = cluster
        self.client = client
        self.log_dir = log_dir
        self.rng = rng
        self.acked: dict[str, Submitted] = {}
        self.gave_up: list[str] = []
        """Plans whose submit never got an OK (their runs, if any, are 'unexpected')."""
        self.submit_errors = 0
        """Failed submit calls (each retried with the same client request id)."""
        self.errors: list[str] = []
        """Unexpected errors (not 'unavailable'): a bug somewhere."""
        self._tasks: set[asyncio.Task[None]] = set()
        log_dir.mkdir(parents=True, exist_ok=True)

    def spec(self, plan: JobPlan) -> JobSpec:
        """The job spec of a plan."""
        return JobSpec(
            name=plan.name,
            tenant=TENANT,
            command=tuple(
                self.cluster.job_command(self.log_dir, plan.seconds, exit_code=plan.exit_code)
            ),
            resources=Resources(gpus=plan.gpus, cpus=1, memory_mb=256),
            placement=Placement(
                allowed_jurisdictions=plan.allowed,
                preferred_sites=(plan.preferred_site,) if plan.preferred_site else (),
            ),
            max_attempts=plan.max_attempts,
            client_request_id=f"{self.cluster.run_id}-{plan.name}",
        )

    async def submit(self, plan: JobPlan, *, give_up_after: float = 20.0) -> Submitted | None:
        """Submit until the API acknowledges (same client request id each time); schedule its
        cancel. None if no OK came within ``give_up_after`` seconds."""
        spec = self.spec(plan)
        deadline = time.monotonic() + give_up_after
        while True:
            try:
                job = await self.client.submit(spec)
                break
            except _RETRYABLE:
                self.submit_errors += 1
            except Exception as exc:
                self.errors.append(f"submit {plan.name}: {exc!r}")
                self.submit_errors += 1
            if time.monotonic() > deadline:
                self.gave_up.append(plan.name)
                return None
            await asyncio.sleep(0.05)
        sub = Submitted(job.id, plan, time.time())
        self.acked[job.id] = sub
        if plan.cancel_after is not None:
            self.spawn(self._cancel_later(sub, plan.cancel_after))
        return sub

    async def _cancel_later(self, sub: Submitted, after: float) -> None:
        await asyncio.sleep(after)
        for _ in range(40):
            sent = time.time()
            try:
                await self.client.cancel(sub.job_id, reason="fault harness")
            except IllegalTransitionError:
                return  # it ended first
            except _RETRYABLE:
                sub.cancel_unknown = True
                await asyncio.sleep(0.1)
                continue
            except Exception as exc:
                self.errors.append(f"cancel {sub.job_id}: {exc!r}")
                sub.cancel_unknown = True
                return
            sub.cancelled_at = sent
            return

    def spawn(self, coro: Awaitable[object]) -> None:
        """Run ``coro`` in the background; ``drain()`` waits for it."""

        async def wrap() -> None:
            await coro

        task = asyncio.create_task(wrap())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def submit_over(self, plans: Sequence[JobPlan], seconds: float) -> None:
        """Submit ``plans`` spread over ``seconds`` (seeded arrival times), concurrently."""
        offsets = sorted(self.rng.uniform(0, seconds) for _ in plans)
        began = time.monotonic()
        for plan, offset in zip(plans, offsets, strict=True):
            delay = began + offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.spawn(self.submit(plan))

    async def continuous(
        self, stop: asyncio.Event, *, rate: float, prefix: str, cancel_share: float = 0.12
    ) -> None:
        """Submit generated plans at about ``rate`` per second until ``stop`` is set."""
        i = 0
        while not stop.is_set():
            [plan] = generate(self.rng, 1, prefix=f"{prefix}-{i}", cancel_share=cancel_share)
            self.spawn(self.submit(plan))
            i += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.rng.expovariate(rate))

    async def storm(
        self, stop: asyncio.Event, *, prefix: str, submitters: int = 4, limit: int = 80
    ) -> int:
        """A storm of short jobs from ``submitters`` loops until ``stop`` or ``limit`` jobs;
        returns how many were acknowledged."""
        count = 0
        acked = 0

        async def loop(k: int) -> None:
            nonlocal count, acked
            while not stop.is_set() and count < limit:
                count += 1
                plan = JobPlan(
                    name=f"{prefix}-{k}-{count}",
                    residency=self.rng.choice(list(RESIDENCIES)),
                    seconds=0.3,
                )
                if await self.submit(plan) is not None:
                    acked += 1
                await asyncio.sleep(0.02)

        await asyncio.gather(*(loop(k) for k in range(submitters)))
        return acked

    async def drain(self, timeout: float = 60.0) -> None:
        """Wait for every submit and cancel in flight."""
        deadline = time.monotonic() + timeout
        while self._tasks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self._tasks)} submits/cancels still in flight")
            await asyncio.wait(set(self._tasks), timeout=1.0)

    def expects(self) -> dict[str, Expect]:
        """What the checker must find about each acknowledged job."""
        return {
            job_id: Expect(job_id, frozenset(s.plan.allowed), s.cancelled_at)
            for job_id, s in self.acked.items()
        }


# -- watching the store ---------------------------------------------------------------------------


class SiteMonitor:
    """Polls every site's state in the store and records when each went LOST (and back)."""

    def __init__(self, store: JobStore, sites: Iterable[str], *, interval: float = 0.1) -> None:
        self.store = store
        self.sites = list(sites)
        self.interval = interval
        self.lost: dict[str, list[float]] = defaultdict(list)
        """Per site, the times (the store's ``state_changed``) it was declared LOST."""
        self.back: dict[str, list[float]] = defaultdict(list)
        """Per site, when it left LOST."""
        self._state: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        """Start polling in the background."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop polling."""
        self._stopping = True
        if self._task is not None:
            await cancel_and_wait(self._task)

    def lost_since(self, site: str, t: float) -> float | None:
        """First time at or after ``t`` the site was declared LOST."""
        return next((x for x in self.lost[site] if x >= t), None)

    async def wait_lost(self, site: str, since: float, timeout: float) -> float | None:
        """Until the site is declared LOST at or after ``since``; None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (t := self.lost_since(site, since)) is None:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.05)
        return t

    async def _run(self) -> None:
        client = self.store.client
        while not self._stopping:
            try:
                async with client.pipeline(transaction=False) as pipe:
                    for site in self.sites:
                        pipe.hmget(self.store.keys.site(site), "state", "state_changed")
                    rows = await pipe.execute()
                now = time.time()
                for site, (state, changed) in zip(self.sites, rows, strict=True):
                    value = int(state or 0)
                    if value != self._state.get(site):
                        at = float(changed) if changed else now
                        if value == types_pb2.SITE_STATE_LOST:
                            self.lost[site].append(at)
                            log.info("site %s LOST (state_changed %.3f)", site, at)
                        elif self._state.get(site) == types_pb2.SITE_STATE_LOST:
                            self.back[site].append(at)
                            log.info("site %s back (%s)", site, value)
                        self._state[site] = value
            except Exception as exc:
                log.debug("site monitor: %r", exc)
            await asyncio.sleep(self.interval)


# -- faults ---------------------------------------------------------------------------------------


@dataclass
class FaultRecord:
    """One injected fault."""

    kind: str
    """The fault's name (a key of ``FAULTS``, set by whoever injected it)."""
    site: str | None
    """The site it struck, if it struck one."""
    started: float
    """Wall-clock time the fault began."""
    healed: float = 0.0
    """When everything it broke was started or healed again."""
    isolating: bool = False
    """The site was cut off for longer than its lease: expect LOST, fencing and moves."""
    fired: bool = True
    """For crash points: whether the armed process did crash there."""
    note: str = ""


@dataclass
class FaultContext:
    """What a fault function works with."""

    cluster: Cluster
    store: JobStore
    workload: Workload
    monitor: SiteMonitor
    rng: random.Random
    prefix: str


FaultFn = Callable[[FaultContext, str | None], Awaitable[FaultRecord]]


async def _hold_until_lost(ctx: FaultContext, rec: FaultRecord) -> None:
    """Keep an isolating fault on until its site is LOST (and its work had a moment to start
    elsewhere) and past the fencing deadline, so that runs nobody fenced show up late."""
    assert rec.site is not None
    t = ctx.cluster.timings
    lost = await ctx.monitor.wait_lost(rec.site, rec.started, timeout=t.lost_after + 6.0)
    if lost is None:
        rec.note += " (site never declared LOST)"
    fence_deadline = rec.started + t.lease + t.kill_grace + FENCE_SLACK + 1.0
    await asyncio.sleep(max(0.5, fence_deadline - time.time()))


def _agent_kill(*, with_jobs: bool, restart: Literal["now", "after_lost"]) -> FaultFn:
    async def fault(ctx: FaultContext, site: str | None) -> FaultRecord:
        assert site is not None
        kind = f"agent_kill{'_with_jobs' if with_jobs else ''}_restart_{restart}"
        rec = FaultRecord(kind, site, time.time(), isolating=restart == "after_lost")
        groups = await asyncio.to_thread(ctx.cluster.kill_agent, site, with_jobs=with_jobs)
        rec.note = f"{len(groups)} job groups killed" if with_jobs else ""
        if restart == "after_lost":
            await _hold_until_lost(ctx, rec)
        await asyncio.to_thread(ctx.cluster.start_agent, site)
        rec.healed = time.time()
        return rec

    return fault


async def _redis_kill_storm(ctx: FaultContext, site: str | None) -> FaultRecord:
    stop = asyncio.Event()
    errors_before = ctx.workload.submit_errors
    storm = asyncio.create_task(ctx.workload.storm(stop, prefix=f"{ctx.prefix}-storm"))
    await asyncio.sleep(0.3)
    rec = FaultRecord("redis_kill_storm", None, time.time())
    await asyncio.to_thread(ctx.cluster.kill_redis)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(ctx.cluster.restart_redis)
    rec.healed = time.time()
    await asyncio.sleep(0.7)
    stop.set()
    acked = await storm
    failed = ctx.workload.submit_errors - errors_before
    rec.note = f"storm: {acked} acknowledged, {failed} failed submit calls"
    rec.fired = failed > 0  # the outage was felt by the clients
    return rec


def _crash(role_of: Callable[[Cluster, str | None], str], point: str, nth: int) -> FaultFn:
    async def fault(ctx: FaultContext, site: str | None) -> FaultRecord:
        cluster = ctx.cluster
        role = role_of(cluster, site)
        rec = FaultRecord(f"{point.replace('.', '_')}", site, time.time())
        await asyncio.to_thread(cluster.restart_role, role, crash_at=f"{point}:{nth}")
        # Drive work through the armed process until it crashes: jobs for its site (cancelled
        # soon after, for a cancel point), or anywhere for the scheduler.
        residency = _residency_of(cluster, site) if site else "any"
        cancel = 0.6 if "cancel" in point else None
        deadline = time.monotonic() + 20.0
        i = 0
        while cluster.role_alive(role) and time.monotonic() < deadline:
            plan = JobPlan(f"{ctx.prefix}-d{i}", residency, 1.5, cancel_after=cancel)
            ctx.workload.spawn(ctx.workload.submit(plan))
            i += 1
            await asyncio.sleep(0.3)
        crashed = await asyncio.to_thread(cluster.wait_role_exit, role, 0.5)
        rec.fired = crashed
        rec.note = f"{role} armed at {point}:{nth}, {i} driver jobs" + (
            "" if crashed else ": never fired"
        )
        await asyncio.to_thread(cluster.restart_role, role)
        rec.healed = time.time()
        return rec

    return fault


def _residency_of(cluster: Cluster, site: str) -> str:
    """The residency class that allows only ``site``'s country."""
    return cluster.sites[site].config.jurisdiction


def _scheduler(cluster: Cluster, site: str | None) -> str:
    return "scheduler"


def _dispatcher(cluster: Cluster, site: str | None) -> str:
    return cluster.dispatcher_of(site or "abu-dhabi")


async def _control_plane_kill(ctx: FaultContext, site: str | None) -> FaultRecord:
    rec = FaultRecord("control_plane_kill", None, time.time())
    await asyncio.to_thread(ctx.cluster.kill_control_plane)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(ctx.cluster.start_control_plane)
    rec.healed = time.time()
    rec.note = f"killed {', '.join(CONTROL_PLANE)}"
    return rec


def _partition(
    *, long: bool, direction: Literal["both", "up", "down"] = "both", link: bool = False
) -> FaultFn:
    async def fault(ctx: FaultContext, site: str | None) -> FaultRecord:
        assert site is not None
        cluster = ctx.cluster
        how: Literal["proxy", "link"] = "link" if link and cluster.kind == "netns" else "proxy"
        kind = f"partition_{'long' if long else 'short'}" + (
            "_one_way" if direction != "both" else ""
        )
        rec = FaultRecord(kind, site, time.time(), isolating=long)
        rec.note = f"{how} {direction}"
        await asyncio.to_thread(cluster.partition, site, direction=direction, how=how)
        if long:
            await _hold_until_lost(ctx, rec)
        else:
            await asyncio.sleep(SHORT_PARTITION)
        await asyncio.to_thread(cluster.heal, site)
        rec.healed = time.time()
        return rec

    return fault


SHORT_PARTITION = 1.2
"""Seconds of a short partition: well under the lease (2.7 s) less a reconnect (about a second
over the WAN delay), so no attempt may be stopped or moved."""


async def _freeze(ctx: FaultContext, site: str | None) -> FaultRecord:
    assert site is not None
    rec = FaultRecord("agent_freeze_past_lease", site, time.time(), isolating=True)
    await asyncio.to_thread(ctx.cluster.freeze_agent, site)
    await _hold_until_lost(ctx, rec)
    await asyncio.to_thread(ctx.cluster.thaw_agent, site)
    rec.healed = time.time()
    return rec


async def _link_flap(ctx: FaultContext, site: str | None) -> FaultRecord:
    """A flapping WAN link: each time the dispatcher has re-established the site's stream (a
    new heartbeat in the store), the connection is reset ``FLAP_AFTER`` seconds later,
    ``FLAPS`` times, while work for the site keeps coming. Every outage lasts only as long as
    the dispatcher takes to reconnect, so a dispatcher that reconnects promptly never lets
    the site fall silent for ``lost_after``: nothing may be stopped or moved."""
    assert site is not None
    rec = FaultRecord("link_flap", site, time.time())
    proxy = ctx.cluster.proxies[site]
    residency = _residency_of(ctx.cluster, site)
    key = ctx.store.keys.site(site)
    resets = 0
    last_reset = 0.0
    for i in range(FLAPS):
        deadline = time.monotonic() + 2 * ctx.cluster.timings.lost_after
        while time.monotonic() < deadline:  # until it reconnected after the last reset
            with contextlib.suppress(Exception):
                if float(await ctx.store.client.hget(key, "hb") or 0) > last_reset:
                    break
            await asyncio.sleep(0.05)
        await asyncio.sleep(FLAP_AFTER)
        plan = JobPlan(f"{ctx.prefix}-r{i}", residency, 0.8)
        ctx.workload.spawn(ctx.workload.submit(plan))
        last_reset = time.time()
        resets += await asyncio.to_thread(proxy.reset_all)
    rec.healed = time.time()
    rec.note = f"{resets} connections reset in {FLAPS} flaps"
    rec.fired = resets > 0
    return rec


FLAPS = 6
FLAP_AFTER = 0.5
"""A link flap: this many resets, each this many seconds after the stream came back."""


@dataclass(frozen=True)
class FaultSpec:
    """A fault and how a scenario sets it up."""

    fn: FaultFn
    site: str | None = None
    """The site it strikes (None: not a site fault)."""
    sentinel_seconds: float = 0.0
    """Duration of the sentinels pinned to ``site`` (0: none)."""
    cancel_share: float = 0.12
    """Share of workload jobs cancelled."""


_LONG = 6.5  # a sentinel started before the fault outlives lease + grace + FENCE_SLACK after it
FAULTS: dict[str, FaultSpec] = {
    "agent_kill_restart_now": FaultSpec(
        _agent_kill(with_jobs=False, restart="now"), "narvik", sentinel_seconds=4.0
    ),
    "agent_kill_restart_after_lost": FaultSpec(
        _agent_kill(with_jobs=False, restart="after_lost"), "narvik", sentinel_seconds=_LONG
    ),
    "agent_kill_with_jobs_restart_now": FaultSpec(
        _agent_kill(with_jobs=True, restart="now"), "abilene", sentinel_seconds=4.0
    ),
    "agent_kill_with_jobs_restart_after_lost": FaultSpec(
        _agent_kill(with_jobs=True, restart="after_lost"), "abilene", sentinel_seconds=_LONG
    ),
    "redis_kill_storm": FaultSpec(_redis_kill_storm),
    "scheduler_crash_after_commit": FaultSpec(_crash(_scheduler, "scheduler.after_commit", 2)),
    "dispatcher_crash_after_take": FaultSpec(
        _crash(_dispatcher, "dispatcher.after_take", 2), "abu-dhabi"
    ),
    "dispatcher_crash_after_send": FaultSpec(
        _crash(_dispatcher, "dispatcher.after_send", 2), "narvik"
    ),
    "dispatcher_crash_after_cancel_sent": FaultSpec(
        _crash(_dispatcher, "dispatcher.after_cancel_sent", 1), "narvik", cancel_share=0.35
    ),
    "control_plane_kill": FaultSpec(_control_plane_kill),
    "partition_short": FaultSpec(_partition(long=False, link=True), "abu-dhabi", 4.0),
    "partition_long": FaultSpec(_partition(long=True), "narvik", sentinel_seconds=_LONG),
    "partition_long_one_way": FaultSpec(
        _partition(long=True, direction="down"), "abilene", sentinel_seconds=_LONG
    ),
    "agent_freeze_past_lease": FaultSpec(_freeze, "narvik", sentinel_seconds=_LONG),
    "link_flap": FaultSpec(_link_flap, "abu-dhabi"),
}
"""Every fault, by name."""


# -- judging a run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """A job whose final state is not what its plan and the harness's cancel call for."""

    job_id: str
    plan: JobPlan
    state: str
    attempt: int
    reason: str

    def __str__(self) -> str:
        p = self.plan
        return (
            f"{self.job_id} ({p.name}, {p.residency}, exit {p.exit_code}"
            f"{', sentinel' if p.sentinel else ''}): {self.state} attempt {self.attempt}: "
            f"{self.reason}"
        )


@dataclass
class Evaluation:
    """The verdict on one run of the harness."""

    report: Report
    runs: list[Run]
    final: dict[str, types_pb2.Job]
    wrong_outcomes: list[Outcome]
    fence_late: list[str]
    """Runs at a cut-off site that outlived fault start + lease + grace + slack."""
    detect_seconds: list[float]
    """Per isolating fault that led to LOST: fault start to the site's LOST."""
    requeue_seconds: list[float]
    """Per job moved off a lost site: the site's LOST to the job RUNNING elsewhere."""
    unexpected_losses: list[str]
    """Sites declared LOST outside an isolating fault of theirs, each with the last fault
    before it (a short outage must not lose a site)."""
    moved: Counter[str]
    """Jobs moved off each site by its loss (LOST events saying 'site X lost')."""
    fenced: Counter[str]
    """LOST reports from agents that stopped attempts themselves (lease expired), by site."""
    events: dict[str, list[types_pb2.JobEvent]]


async def evaluate(
    cluster: Cluster,
    store: JobStore,
    workload: Workload,
    monitor: SiteMonitor,
    faults: Sequence[FaultRecord],
) -> Evaluation:
    """Check the records and the store once every acknowledged job has ended."""
    timings = cluster.timings
    ids = list(workload.acked)
    final = {j.id: j for j in await bounded("get_jobs", store.get_jobs(ids))}
    runs = read_records(workload.log_dir)
    report = check(
        runs,
        workload.expects(),
        {j: JobState(job.state).name for j, job in final.items()},
        cluster.site_jurisdictions,
        overlap_bound=timings.overlap_bound,
    )
    events = {job_id: await bounded("events", store.events(job_id)) for job_id in ids}

    wrong = []
    for job_id, sub in workload.acked.items():
        job = final.get(job_id)
        state = JobState(job.state).name if job is not None else "MISSING"
        if state not in _TERMINAL_NAMES:
            continue  # lost: the checker reports it
        natural = "SUCCEEDED" if sub.plan.exit_code == 0 else "FAILED"
        cancelled = sub.cancelled_at is not None or sub.cancel_unknown
        allowed = {natural, "CANCELLED"} if cancelled else {natural}
        if state not in allowed:
            wrong.append(
                Outcome(job_id, sub.plan, state, job.attempt if job else 0, _why(job, events))
            )

    fence_late = []
    deadline_after = timings.lease + timings.kill_grace + FENCE_SLACK
    for fault in faults:
        if not fault.isolating or fault.site is None:
            continue
        deadline = fault.started + deadline_after
        for r in runs:
            if r.site == fault.site and r.start < fault.started and r.end > deadline:
                fence_late.append(
                    f"{r.job} attempt {r.attempt} at {r.site} ({r.how}) ended "
                    f"{r.end - fault.started:.2f}s after the {fault.kind} began "
                    f"(deadline {deadline_after:.1f}s)"
                )

    detect = []
    for fault in faults:
        if fault.isolating and fault.site is not None:
            lost = monitor.lost_since(fault.site, fault.started)
            if lost is not None and (fault.healed == 0 or lost <= fault.healed + 1.0):
                detect.append(lost - fault.started)

    unexpected_losses = []
    for site, times in monitor.lost.items():
        for t in times:
            if any(
                f.isolating and f.site == site and f.started <= t <= (f.healed or t) + 2.0
                for f in faults
            ):
                continue
            before = [f for f in faults if f.started <= t]
            last = (
                f"{t - before[-1].started:.1f}s after {before[-1].kind} at "
                f"{before[-1].site or '-'} began"
                if before
                else "before any fault"
            )
            unexpected_losses.append(f"{site} declared LOST {last}")

    requeue: list[float] = []
    moved: Counter[str] = Counter()
    fenced: Counter[str] = Counter()
    for evs in events.values():
        for i, e in enumerate(evs):
            if e.state != JobState.LOST.value:
                continue
            site_lost = f"site {e.site} lost" in e.message
            if not site_lost:
                fenced[e.site] += 1
                continue
            moved[e.site] += 1
            t_lost = e.time.ToNanoseconds() / 1e9
            nxt = next(
                (
                    x
                    for x in evs[i + 1 :]
                    if x.state == JobState.RUNNING.value
                    and x.attempt > e.attempt
                    and x.site != e.site
                ),
                None,
            )
            if nxt is not None:
                requeue.append(nxt.time.ToNanoseconds() / 1e9 - t_lost)
    return Evaluation(
        report,
        runs,
        final,
        wrong,
        fence_late,
        detect,
        requeue,
        unexpected_losses,
        moved,
        fenced,
        events,
    )


def _why(job: types_pb2.Job | None, events: Mapping[str, list[types_pb2.JobEvent]]) -> str:
    if job is None:
        return "not in the store"
    trail = [
        f"{JobState(e.state).name}#{e.attempt}@{e.site or '-'}: {e.message}"
        for e in events.get(job.id, [])
        if e.state in (JobState.FAILED.value, JobState.LOST.value, JobState.CANCELLED.value)
        or "fail" in e.message
    ]
    return job.reason + (" | " + " | ".join(trail[-3:]) if trail else "")


# -- one scenario ---------------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    """What ``run_scenario`` found."""

    name: str
    seed: int
    report: Report
    faults: list[FaultRecord]
    evaluation: Evaluation
    workload_errors: list[str]
    submit_errors: int
    gave_up: list[str]
    sentinels_at_site: int
    """Sentinels running at the faulted site when the fault struck."""
    seconds: float
    lost_sites: dict[str, list[float]] = field(default_factory=dict)
    """Per site, every time it was declared LOST during the scenario."""
    notes: list[str] = field(default_factory=list)

    @property
    def detect_seconds(self) -> list[float]:
        """Time to detect the lost site, per isolating fault."""
        return self.evaluation.detect_seconds

    @property
    def requeue_seconds(self) -> list[float]:
        """Time from LOST to RUNNING elsewhere, per moved job."""
        return self.evaluation.requeue_seconds

    def summary(self) -> str:
        """A readable account: faults, figures, and the checker's table."""
        ev = self.evaluation
        lines = [f"scenario {self.name} (seed {self.seed}, {self.seconds:.1f}s)"]
        for f in self.faults:
            lines.append(
                f"  fault {f.kind} site={f.site or '-'} fired={f.fired} "
                f"healed after {max(f.healed - f.started, 0):.2f}s {f.note}"
            )
        lines.append(
            f"  sentinels at site {self.sentinels_at_site}; moved {dict(ev.moved)}; "
            f"agent-fenced {dict(ev.fenced)}; submit errors {self.submit_errors}"
        )
        lines.append(f"  detect {_stats(ev.detect_seconds)}; requeue {_stats(ev.requeue_seconds)}")
        for name, items in (
            ("wrong outcomes", [str(o) for o in ev.wrong_outcomes]),
            ("late fencing", ev.fence_late),
            ("sites lost without an isolating fault", ev.unexpected_losses),
            ("workload errors", self.workload_errors),
            ("gave up submitting", self.gave_up),
            ("notes", self.notes),
        ):
            if items:
                lines.append(f"  {name} ({len(items)}):")
                lines += [f"    {x}" for x in items[:8]]
        lines.append(self.report.table())
        return "\n".join(lines)


def _stats(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):.2f}s max {max(values):.2f}s (n={len(values)})"


async def run_scenario(
    cluster: Cluster,
    name: str,
    *,
    seed: int,
    work_dir: Path,
    jobs: int = 30,
    spread: float = 2.5,
    finish_timeout: float = 60.0,
) -> ScenarioResult:
    """Run fault ``name`` (a key of ``FAULTS``) against a seeded workload; see the module
    docstring. Leaves the cluster healed and idle."""
    spec = FAULTS[name]
    rng = random.Random(seed)
    began = time.monotonic()
    prefix = f"{name[:12]}{seed}"
    store = JobStore.from_config(cluster.redis_config)
    client = await AsyncClient.connect(cluster.api_address, timeout=5.0)
    workload = Workload(cluster, client, work_dir / "records", rng)
    monitor = SiteMonitor(store, cluster.sites)
    faults: list[FaultRecord] = []
    notes: list[str] = []
    at_site = 0
    try:
        await cluster.wait_healthy(store=store)
        monitor.start()
        plans = generate(rng, jobs, prefix=prefix, cancel_share=spec.cancel_share)
        if spec.site is not None and spec.sentinel_seconds:
            pinned = sentinels(prefix, spec.site, 3, spec.sentinel_seconds)
            subs = await asyncio.gather(*(workload.submit(p) for p in pinned))
            at_site = await _running_at(store, [s.job_id for s in subs if s], spec.site)
            if not at_site:
                notes.append(f"no sentinel was running at {spec.site} when the fault struck")
        feeder = asyncio.create_task(workload.submit_over(plans, spread))
        await asyncio.sleep(min(1.0, spread / 2))
        ctx = FaultContext(cluster, store, workload, monitor, rng, prefix)
        log.info("%s: injecting", name)
        record = await spec.fn(ctx, spec.site)
        record.kind = name
        faults.append(record)
        await feeder
        await workload.drain()
        await asyncio.to_thread(cluster.heal_all)
        await cluster.wait_healthy(store=store)
        await wait_terminal(store, list(workload.acked), timeout=finish_timeout)
        evaluation = await evaluate(cluster, store, workload, monitor, faults)
        return ScenarioResult(
            name=name,
            seed=seed,
            report=evaluation.report,
            faults=faults,
            evaluation=evaluation,
            workload_errors=workload.errors,
            submit_errors=workload.submit_errors,
            gave_up=workload.gave_up,
            sentinels_at_site=at_site,
            seconds=time.monotonic() - began,
            lost_sites={k: list(v) for k, v in monitor.lost.items() if v},
            notes=notes,
        )
    finally:
        await monitor.stop()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(cluster.heal_all)
            await settle(cluster, store)
        await client.close()
        await store.close()


async def _running_at(store: JobStore, job_ids: Sequence[str], site: str) -> int:
    """Until each job runs (somewhere) or 10 s pass; how many run at ``site``."""
    deadline = time.monotonic() + 10.0
    while True:
        jobs = await bounded("get_jobs", store.get_jobs(job_ids))
        if all(j.state == JobState.RUNNING.value for j in jobs) or time.monotonic() > deadline:
            return sum(1 for j in jobs if j.state == JobState.RUNNING.value and j.site == site)
        await asyncio.sleep(0.05)


async def wait_terminal(store: JobStore, job_ids: Sequence[str], *, timeout: float) -> None:
    """Until every job is terminal, logging progress; ``TimeoutError`` with the stragglers."""
    deadline = time.monotonic() + timeout
    next_log = time.monotonic() + 3.0
    while True:
        try:
            jobs = await bounded("get_jobs", store.get_jobs(job_ids))
        except StoreUnavailableError as exc:
            if time.monotonic() > deadline:
                raise
            log.info("waiting for jobs: %s", exc)
            await asyncio.sleep(0.2)
            continue
        open_ = [j for j in jobs if not JobState(j.state).is_terminal()]
        if not open_ and len(jobs) == len(job_ids):
            return
        now = time.monotonic()
        if now > next_log:
            states = Counter(JobState(j.state).name for j in open_)
            log.info("waiting for %d of %d jobs: %s", len(open_), len(job_ids), dict(states))
            next_log = now + 3.0
        if now > deadline:
            shown = ", ".join(
                f"{j.id} {JobState(j.state).name}#{j.attempt}@{j.site or '-'} {j.reason!r}"
                for j in open_[:8]
            )
            raise TimeoutError(
                f"{len(open_)} of {len(job_ids)} acknowledged jobs not terminal after "
                f"{timeout:g}s: {shown}"
            )
        await asyncio.sleep(0.2)


async def settle(cluster: Cluster, store: JobStore, *, timeout: float = 20.0) -> None:
    """Leave the cluster idle: every site healthy, and no job of any run left open (jobs that
    were never acknowledged are waited for, then cancelled)."""
    await cluster.wait_healthy(store=store)
    deadline = time.monotonic() + timeout
    cancelled = False
    while jobs := await _open_jobs(store):
        if time.monotonic() > deadline:
            if cancelled:
                raise TimeoutError(f"{len(jobs)} jobs still open after a cancel: {jobs[:5]}")
            log.warning("cancelling %d jobs left open", len(jobs))
            for job_id in jobs:
                with contextlib.suppress(Exception):
                    await store.cancel(job_id, "fault harness: settling")
            cancelled = True
            deadline = time.monotonic() + timeout
        await asyncio.sleep(0.2)


async def _open_jobs(store: JobStore) -> list[str]:
    """Ids of every job not in a terminal state."""
    open_states = [s for s in JobState if not s.is_terminal()]
    out: list[str] = []
    token = ""
    while True:
        jobs, token = await bounded(
            "list_jobs", store.list_jobs(states=open_states, page_size=1000, page_token=token)
        )
        out += [j.id for j in jobs]
        if not token:
            return out
