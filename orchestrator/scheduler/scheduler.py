"""The placement loop: read a bounded window and a site snapshot, place, commit, repeat.

Holds no durable state: everything it needs is read from the store each cycle (a cache of
immutable specs aside), so a restarted scheduler simply carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from opentelemetry.trace import Link
from redis.asyncio.client import PubSub

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.config import SchedulerConfig
from orchestrator.crashpoints import crash_point
from orchestrator.errors import StoreUnavailableError
from orchestrator.scheduler.model import JobRequest, PlacementResult, TenantView
from orchestrator.scheduler.placement import DefaultPolicy, Policy
from orchestrator.scheduler.snapshot import job_request, read_snapshot, tenant_view
from orchestrator.store import Decision, EpochGuard, JobStore, PendingJob, SiteRecord, Victim
from orchestrator.store.store import unavailable_as_error
from orchestrator.tracing import (
    context_from_traceparent,
    get_tracer,
    recordable_traces,
    tracing_active,
    wants_span,
)

__all__ = ["CycleStats", "Scheduler"]

log = logging.getLogger(__name__)
tracer = get_tracer(__name__)

OFFER_REFRESH_SECONDS = 60.0
"""How often the loop applies capacity offers' hour windows again (and on each UTC hour)."""


@dataclass(frozen=True, slots=True)
class CycleStats:
    """What one placement cycle did."""

    window: int
    placed: int
    dropped: int
    preempted: int
    unschedulable: int
    seconds: float


class Scheduler:
    """Runs placement cycles against a store with a pure placement policy."""

    def __init__(
        self,
        store: JobStore,
        *,
        config: SchedulerConfig | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.store = store
        self.config = config or SchedulerConfig()
        self.policy: Policy = policy or DefaultPolicy()
        self._jobs: dict[str, PendingJob] = {}
        """The pending jobs of the window as last read: each is read once while it stays in
        the window (a job whose attempt moved on is dropped when its commit says stale)."""
        self._requests: dict[str, JobRequest] = {}
        """Their placement views, built once (again if the tenant's country changes)."""
        self._waiting: dict[str, str] = {}
        self.cycles = 0
        self.placed_total = 0
        self.preempted_total = 0
        self.sites_lost_total = 0
        self._offers_due = 0.0  # wall-clock time of the next refresh of capacity offers
        self._idle_check = self.config.lost_after_seconds / 12
        """With nothing to place, how often a cycle still runs (to find silent sites, to open
        and close capacity offers' hours): a twelfth of ``lost_after``, 5 s by default. A lost
        site is found at most that much after ``lost_after``; never earlier, so attempts its
        agent stops at the lease's end are still stopped before they are run elsewhere."""
        self.epoch = EpochGuard.for_store(store, name="scheduler")
        """Notices (and logs at CRITICAL) a Redis that went back in time; advanced each cycle."""

    async def run_once(self) -> CycleStats:
        """One cycle: window, snapshot, place, commit, preempt, record why the rest waits."""
        started = time.perf_counter()
        await self._refresh_offers()  # before the view: it may change the sites' policies
        mark = self.epoch.mark()
        # with nothing pending, only the sites silent for too long are read (for _lose_silent_sites)
        view = await self.store.cycle_view(
            self.config.window,
            epoch_key=self.epoch.key,
            silent_before=time.time() - self.config.lost_after_seconds,
        )
        await self.epoch.advanced(view.epoch, mark)
        order = view.order
        missing = [job_id for job_id, _ in order if job_id not in self._jobs]
        if missing:
            self._jobs.update(await self.store.pending_jobs(missing))
        in_window = {job_id for job_id, _ in order}
        for job_id in [j for j in self._jobs if j not in in_window]:
            del self._jobs[job_id]  # the cache stays bounded by the window
            self._requests.pop(job_id, None)
        for job_id in [j for j in self._waiting if j not in in_window]:
            del self._waiting[job_id]
        records = view.sites
        await self._lose_silent_sites(records)
        if not self._jobs:  # nothing to place: an idle cycle only watches the sites' liveness
            return CycleStats(0, 0, 0, 0, 0, time.perf_counter() - started)
        tenants = {r.tenant.id: tenant_view(r) for r in view.tenants}
        jobs = self._window_requests(order, tenants)
        snapshot = await read_snapshot(
            self.store,
            jobs,
            tenants=tenants,
            stale_after=self.config.site_stale_after_seconds,
            preemption_window_seconds=self.config.preemption_window_seconds,
            weights=self.config.weights,
            records=records,
            running=view.surplus,
        )
        result = self.policy.place(snapshot)
        with tracer.start_as_current_span(
            "scheduler.cycle",
            attributes={"scheduler.window": len(jobs), "scheduler.sites": len(snapshot.sites)},
        ) as cycle:
            decisions = [
                Decision(d.job_id, d.attempt, d.site_id, d.gpu_type, d.watts)
                for d in result.decisions
            ]
            codes = await self.store.commit(decisions)
            if decisions:
                crash_point("scheduler.after_commit")
            victims = [
                Victim(p.victim_job_id, p.victim_attempt, p.for_job_id) for p in result.preemptions
            ]
            preempt_codes = await self.store.preempt(victims)
            marked = await self.store.mark_unschedulable(result.unschedulable)
            changed = [
                (job.job_id, job.attempt, result.waiting[job.job_id])
                for job in jobs
                if job.job_id in result.waiting
                and self._waiting.get(job.job_id) != result.waiting[job.job_id]
            ]
            await self.store.note_waiting(changed)
            self._trace(result, codes, changed, link=Link(cycle.get_span_context()))
            for d, code in zip(decisions, codes, strict=True):
                if code in ("ok", "stale"):  # placed, or its attempt moved on: read it again
                    self._jobs.pop(d.job_id, None)
                    self._requests.pop(d.job_id, None)
            for job_id, _, reason in changed:
                self._waiting[job_id] = reason
            placed = sum(1 for c in codes if c == "ok")
            preempted = sum(1 for c in preempt_codes if c in ("ok", "requeued"))
            cycle.set_attributes({"scheduler.placed": placed, "scheduler.preempted": preempted})
        self.cycles += 1
        self.placed_total += placed
        self.preempted_total += preempted
        for d, code in zip(decisions, codes, strict=True):
            if code != "ok":
                log.info("dropped decision %s -> %s: %s", d.job_id, d.site, code)
        return CycleStats(
            window=len(jobs),
            placed=placed,
            dropped=len(codes) - placed,
            preempted=preempted,
            unschedulable=marked,
            seconds=time.perf_counter() - started,
        )

    def _window_requests(
        self, order: Sequence[tuple[str, float]], tenants: Mapping[str, TenantView]
    ) -> list[JobRequest]:
        """The placement views of the window's jobs, in queue order (from the caches)."""
        out = []
        requests = self._requests
        for job_id, score in order:
            cached = self._jobs.get(job_id)
            if cached is None:
                continue
            req = requests.get(job_id)
            tenant = tenants.get(cached.spec.tenant)
            country = tenant.country if tenant else ""
            if (
                req is None
                or req.attempt != cached.attempt
                or req.submit_order != score
                or req.tenant_country != country
            ):
                req = job_request(
                    job_id, cached.attempt, cached.spec, submit_order=score, tenants=tenants
                )
                requests[job_id] = req
            out.append(req)
        return out

    async def _refresh_offers(self) -> None:
        """Apply capacity offers' hour windows (``JobStore.refresh_offers``) once a minute and at
        the first cycle of every UTC hour, so that windows open and close on the hour."""
        now = time.time()
        if now < self._offers_due:
            return
        changed = await self.store.refresh_offers(now)
        if changed:
            log.info("capacity offers: policy of %d site(s) changed with the hour", changed)
        next_hour = (now // 3600 + 1) * 3600
        self._offers_due = min(now + OFFER_REFRESH_SECONDS, next_hour)

    async def _lose_silent_sites(self, records: Sequence[SiteRecord]) -> None:
        """Declare LOST the sites silent for longer than ``lost_after`` and requeue their work
        (the store checks the heartbeat again atomically, so one that just spoke is spared)."""
        now = time.time()
        lost_after = self.config.lost_after_seconds
        for rec in records:
            hb = rec.last_heartbeat
            if hb is None or now - hb <= lost_after:
                continue
            if rec.state == types_pb2.SITE_STATE_LOST and not rec.active_jobs:
                continue
            code, moved = await self.store.lose_site(rec.site.id, lost_after=lost_after, at=now)
            if code == "lost" and rec.state != types_pb2.SITE_STATE_LOST:
                self.sites_lost_total += 1
                log.warning(
                    "site %s lost: no heartbeat for %.1fs (lost_after %gs); %d job(s) requeued",
                    rec.site.id, now - hb, lost_after, moved,
                )  # fmt: skip

    def _trace(
        self,
        result: PlacementResult,
        codes: list[str],
        waiting: list[tuple[str, int, str]],
        *,
        link: Link,
    ) -> None:
        """Spans in each job's own trace (linked to the cycle) carrying the decision's reasons.

        Only for jobs whose trace could record them (``wants_span``): with tracing off, or a
        job's trace not sampled, nothing is built. Placements are traced per trace, not per
        job: the jobs of one ``SubmitJobs`` call share a trace, and one ``scheduler.place``
        span in it lists all of them placed this cycle (``job.ids``, ``site.ids``,
        ``placement.commits``, in order); a job alone in its trace gets the single-job
        attributes (``job.id``, ``site.id``, ``placement.*``).
        """
        active = tracing_active()
        if not active:
            return

        def parent(job_id: str) -> str:
            cached = self._jobs.get(job_id)
            return cached.traceparent if cached else ""

        def span(name: str, job_id: str, attributes: dict[str, str | int | float]) -> None:
            tp = parent(job_id)
            if not wants_span(tp, active=active):
                return
            with tracer.start_as_current_span(
                name,
                context=context_from_traceparent(tp),
                links=[link],
                attributes={"job.id": job_id, **attributes},
            ):
                pass

        placed_by_trace = recordable_traces(
            zip(result.decisions, codes, strict=True), lambda dc: parent(dc[0].job_id), active=True
        )
        for tp, placed in placed_by_trace.items():
            if len(placed) == 1:
                d, code = placed[0]
                span(
                    "scheduler.place",
                    d.job_id,
                    {
                        "job.attempt": d.attempt,
                        "site.id": d.site_id,
                        "placement.gpu_type": d.gpu_type,
                        "placement.score": d.score,
                        "placement.watts": d.watts,
                        "placement.commit": code,
                    },
                )
            else:
                with tracer.start_as_current_span(
                    "scheduler.place",
                    context=context_from_traceparent(tp),
                    links=[link],
                    attributes={
                        "job.count": len(placed),
                        "job.ids": [d.job_id for d, _ in placed],
                        "site.ids": [d.site_id for d, _ in placed],
                        "placement.commits": [code for _, code in placed],
                    },
                ):
                    pass
        for p in result.preemptions:
            span(
                "scheduler.preempt",
                p.for_job_id,
                {"site.id": p.site_id, "placement.victim": p.victim_job_id},
            )
        for job_id, attempt, reason in result.unschedulable:
            span(
                "scheduler.unschedulable",
                job_id,
                {"job.attempt": attempt, "placement.reason": reason},
            )
        for job_id, attempt, reason in waiting:
            span("scheduler.wait", job_id, {"job.attempt": attempt, "placement.reason": reason})

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Cycle until ``stop`` is set; sleep on the store's wake channel when there is no work."""
        pubsub = self.store.client.pubsub()
        backoff = 0.1
        subscribed = False
        try:
            while not stop.is_set():
                try:
                    if not subscribed:
                        with unavailable_as_error():
                            await pubsub.subscribe(self.store.keys.wake_channel)
                        subscribed = True
                    stats = await self.run_once()
                    backoff = 0.1
                except StoreUnavailableError as exc:
                    log.warning("scheduler: %s; retrying in %.1fs", exc, backoff)
                    subscribed = False
                    await _sleep_or_stop(stop, backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                except Exception:
                    # a bug in one cycle must not stop placement for good: log it, go on
                    log.exception("scheduler: placement cycle failed; retrying in %.1fs", backoff)
                    await _sleep_or_stop(stop, backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if stats.placed and stats.window >= self.config.window:
                    continue  # more waiting right behind this window
                await self._wait_for_wake(pubsub, stop, busy=bool(stats.placed))
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _wait_for_wake(self, pubsub: PubSub, stop: asyncio.Event, *, busy: bool) -> None:
        """Wait for a wake message (new job, freed capacity, site change) or a timeout."""
        timeout = self.config.idle_interval_seconds if busy else self._idle_check
        deadline = time.monotonic() + timeout
        got = False
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            except Exception as exc:  # noqa: BLE001 - a broken subscription is resubscribed
                log.debug("scheduler wake channel: %s", exc)
                await _sleep_or_stop(stop, min(left, 0.5))
                return
            if msg is not None:
                got = True
                # drain the burst: many submits wake us once
                while await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.0):
                    pass
            if got:
                # let a burst of submits gather into one cycle
                await _sleep_or_stop(stop, self.config.gather_seconds)
                return


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
