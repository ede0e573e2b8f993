"""The placement loop: read a bounded window and a site snapshot, place, commit, repeat.

Holds no durable state: everything it needs is read from the store each cycle (a cache of
immutable specs aside), so a restarted scheduler simply carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.trace import Link
from redis.asyncio.client import PubSub

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.config import SchedulerConfig
from orchestrator.errors import StoreUnavailableError
from orchestrator.scheduler.placement import JobRequest, PlacementResult, SiteView, Snapshot, place
from orchestrator.store import Decision, JobStore, SiteRecord
from orchestrator.tracing import context_from_traceparent, get_tracer

__all__ = ["CycleStats", "Scheduler"]

log = logging.getLogger(__name__)
tracer = get_tracer(__name__)


@dataclass(frozen=True, slots=True)
class CycleStats:
    """What one placement cycle did."""

    window: int
    placed: int
    dropped: int
    unschedulable: int
    seconds: float


def site_view(rec: SiteRecord, *, now: float, stale_after: float) -> SiteView:
    """A snapshot view of a site: it accepts work when ACTIVE, connected and recently heard."""
    fresh = rec.last_heartbeat is not None and now - rec.last_heartbeat <= stale_after
    accepting = rec.state == types_pb2.SITE_STATE_ACTIVE and bool(rec.connected_by) and fresh
    return SiteView(
        site_id=rec.site.id,
        jurisdiction=rec.site.jurisdiction,
        accepting=accepting,
        total_gpus=rec.capacity_gpus,
        total_cpus=rec.capacity_cpus,
        total_memory_mb=rec.capacity_memory_mb,
        free_gpus={t: n - rec.used_gpus.get(t, 0) for t, n in rec.capacity_gpus.items()},
        free_cpus=rec.capacity_cpus - rec.used_cpus,
        free_memory_mb=rec.capacity_memory_mb - rec.used_memory_mb,
    )


class Scheduler:
    """Runs placement cycles against a store with a pure placement function."""

    def __init__(
        self,
        store: JobStore,
        *,
        config: SchedulerConfig | None = None,
        policy: Callable[[Snapshot], PlacementResult] = place,
    ) -> None:
        self.store = store
        self.config = config or SchedulerConfig()
        self.policy = policy
        self._specs: dict[str, tuple[types_pb2.JobSpec, str]] = {}
        self.cycles = 0
        self.placed_total = 0

    async def run_once(self) -> CycleStats:
        """One cycle: window, snapshot, place, commit."""
        started = time.perf_counter()
        refs = await self.store.pending_window(self.config.window)
        missing = [r.job_id for r in refs if r.job_id not in self._specs]
        if missing:
            self._specs.update(await self.store.job_specs(missing))
        # keep the cache to the window, so its size is bounded by it
        in_window = {r.job_id for r in refs}
        for job_id in [j for j in self._specs if j not in in_window]:
            del self._specs[job_id]
        jobs = [
            JobRequest.from_spec(r.job_id, r.attempt, self._specs[r.job_id][0])
            for r in refs
            if r.job_id in self._specs
        ]
        now = time.time()
        sites = [
            site_view(rec, now=now, stale_after=self.config.site_stale_after_seconds)
            for rec in await self.store.site_records()
        ]
        result = self.policy(Snapshot(jobs=jobs, sites=sites))
        with tracer.start_as_current_span(
            "scheduler.cycle",
            attributes={"scheduler.window": len(jobs), "scheduler.sites": len(sites)},
        ) as cycle:
            decisions = [
                Decision(d.job_id, d.attempt, d.site_id, d.gpu_type) for d in result.decisions
            ]
            codes = await self.store.commit(decisions)
            self._trace_decisions(result, codes, cycle_link=Link(cycle.get_span_context()))
            marked = await self.store.mark_unschedulable(result.unschedulable)
            placed = sum(1 for c in codes if c == "ok")
            cycle.set_attribute("scheduler.placed", placed)
        self.cycles += 1
        self.placed_total += placed
        for d, code in zip(decisions, codes, strict=True):
            if code != "ok":
                log.info("dropped decision %s -> %s: %s", d.job_id, d.site, code)
        return CycleStats(
            window=len(jobs),
            placed=placed,
            dropped=len(codes) - placed,
            unschedulable=marked,
            seconds=time.perf_counter() - started,
        )

    def _trace_decisions(
        self, result: PlacementResult, codes: list[str], *, cycle_link: Link
    ) -> None:
        """One span per decision, in the job's own trace, linked to the cycle."""
        for d, code in zip(result.decisions, codes, strict=True):
            tp = self._specs.get(d.job_id, (None, ""))[1]
            with tracer.start_as_current_span(
                "scheduler.place",
                context=context_from_traceparent(tp),
                links=[cycle_link],
                attributes={
                    "job.id": d.job_id,
                    "job.attempt": d.attempt,
                    "site.id": d.site_id,
                    "placement.gpu_type": d.gpu_type,
                    "placement.commit": code,
                },
            ):
                pass
        for job_id, attempt, reason in result.unschedulable:
            tp = self._specs.get(job_id, (None, ""))[1]
            with tracer.start_as_current_span(
                "scheduler.unschedulable",
                context=context_from_traceparent(tp),
                links=[cycle_link],
                attributes={"job.id": job_id, "job.attempt": attempt, "placement.reason": reason},
            ):
                pass

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Cycle until ``stop`` is set; sleep on the store's wake channel when there is no work."""
        pubsub = self.store.client.pubsub()
        backoff = 0.1
        subscribed = False
        try:
            while not stop.is_set():
                try:
                    if not subscribed:
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
        timeout = self.config.idle_interval_seconds if busy else 1.0
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
                await _sleep_or_stop(stop, self.config.idle_interval_seconds / 5)
                return


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
