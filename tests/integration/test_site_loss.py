"""Lost sites, reconcile and LOST reports, against a real redis-server (the Lua scripts)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from harness import federation
from test_store import place, site, spec

from agents import AgentServer
from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.config import RedisConfig
from orchestrator.local.state import pid_alive
from orchestrator.states import JobState
from orchestrator.store import Ack, HeldAttempt, JobStore, StatusReport
from orchestrator.validation import normalize_spec


async def running_job(store: JobStore, name: str, **kw: object) -> types_pb2.Job:
    """A job placed at narvik, sent, acknowledged and RUNNING (attempt 1)."""
    job, _ = await store.submit(spec(name, **kw))  # type: ignore[arg-type]
    assert await place(store, job) == "ok"
    await store.take_outbox("narvik", limit=100, resend=False)
    assert await store.record_acks("narvik", [Ack(job.id, 1, True)]) == ["ok"]
    assert await store.apply_status("narvik", [StatusReport(job.id, 1, JobState.RUNNING)]) == ["ok"]
    return job


async def events_of(store: JobStore, job_id: str) -> list[tuple[int, int, str]]:
    return [(e.state, e.attempt, e.message) for e in await store.events(job_id)]


async def test_a_silent_site_is_lost_and_its_work_requeued(store: JobStore) -> None:
    await store.register_site(site())
    t0 = time.time()
    await store.record_heartbeat("narvik", dispatcher_id="d0", at=t0)
    job = await running_job(store, "a", max_attempts=1)
    queued, _ = await store.submit(spec("b"))
    assert await place(store, queued) == "ok"  # SCHEDULED, not sent yet

    # within lost_after nothing happens, whatever the caller's clock says
    assert await store.lose_site("narvik", lost_after=10, at=t0 + 9) == ("alive", 0)
    assert (await store.get_site("narvik")).state == types_pb2.SITE_STATE_ACTIVE

    assert await store.lose_site("narvik", lost_after=10, at=t0 + 11) == ("lost", 2)
    assert (await store.get_site("narvik")).state == types_pb2.SITE_STATE_LOST
    moved = await store.get_job(job.id)
    # a lost attempt is not the job's failure: max_attempts=1 and it is still retried
    assert (moved.state, moved.attempt, moved.site) == (JobState.PENDING.value, 2, "")
    assert any(s == JobState.LOST.value and a == 1 for s, a, _ in await events_of(store, job.id))
    back = await store.get_job(queued.id)
    assert (back.state, back.attempt) == (JobState.PENDING.value, 2)
    [rec] = await store.site_records()
    assert rec.used_gpus == {} and rec.active_jobs == 0 and rec.used_cpus == 0
    assert {r.job_id for r in await store.pending_window(10)} == {job.id, queued.id}

    # the old attempt's reports are stale now
    late = StatusReport(job.id, 1, JobState.SUCCEEDED, exit_code=0)
    assert await store.apply_status("narvik", [late]) == ["stale"]
    # losing it again moves nothing
    assert await store.lose_site("narvik", lost_after=10, at=t0 + 20) == ("lost", 0)


async def test_a_lost_site_comes_back_in_the_state_it_had(store: JobStore) -> None:
    await store.register_site(site())
    await store.set_site_state("narvik", types_pb2.SITE_STATE_CORDONED)
    t0 = time.time()
    assert await store.record_heartbeat("narvik", dispatcher_id="d0", at=t0) is False
    await store.lose_site("narvik", lost_after=1, at=t0 + 5)
    assert (await store.get_site("narvik")).state == types_pb2.SITE_STATE_LOST
    assert await store.record_heartbeat("narvik", dispatcher_id="d0") is True
    assert (await store.get_site("narvik")).state == types_pb2.SITE_STATE_CORDONED
    assert await store.record_heartbeat("narvik", dispatcher_id="d0") is False


async def test_an_operator_state_set_while_lost_wins(store: JobStore) -> None:
    await store.register_site(site())
    t0 = time.time()
    await store.record_heartbeat("narvik", dispatcher_id="d0", at=t0)
    await store.lose_site("narvik", lost_after=1, at=t0 + 5)
    await store.set_site_state("narvik", types_pb2.SITE_STATE_DRAINING)
    await store.record_heartbeat("narvik", dispatcher_id="d0")
    assert (await store.get_site("narvik")).state == types_pb2.SITE_STATE_DRAINING


async def test_a_site_never_heard_from_is_not_lost(store: JobStore) -> None:
    await store.register_site(site())
    assert await store.lose_site("narvik", lost_after=1, at=time.time() + 100) == ("never", 0)
    assert await store.lose_site("nowhere", lost_after=1) == ("missing", 0)


async def test_a_cancelled_job_at_a_lost_site_is_cancelled_not_rerun(store: JobStore) -> None:
    await store.register_site(site())
    t0 = time.time()
    await store.record_heartbeat("narvik", dispatcher_id="d0", at=t0)
    job = await running_job(store, "a")
    await store.cancel(job.id)
    await store.lose_site("narvik", lost_after=1, at=t0 + 5)
    final = await store.get_job(job.id)
    assert (final.state, final.attempt) == (JobState.CANCELLED.value, 1)
    assert await store.pending_window(10) == []


async def test_a_lost_report_requeues_without_counting_a_failure(store: JobStore) -> None:
    await store.register_site(site())
    job = await running_job(store, "a", max_attempts=1)
    lost = StatusReport(job.id, 1, JobState.LOST, message="lease expired")
    assert await store.apply_status("narvik", [lost]) == ["retry"]
    again = await store.get_job(job.id)
    assert (again.state, again.attempt) == (JobState.PENDING.value, 2)
    assert await store.apply_status("narvik", [lost]) == ["stale"]


async def test_a_cancel_wins_over_a_lost_report(store: JobStore) -> None:
    await store.register_site(site())
    job = await running_job(store, "a")
    await store.cancel(job.id)
    lost = StatusReport(job.id, 1, JobState.LOST, message="lease expired")
    assert await store.apply_status("narvik", [lost]) == ["retry"]
    assert (await store.get_job(job.id)).state == JobState.CANCELLED.value


async def test_reconcile_keeps_current_stops_stale_and_requeues_what_the_agent_lost(
    store: JobStore,
) -> None:
    await store.register_site(site(h100=8))
    await store.register_site(site("other", jurisdiction="SE"))
    current = await running_job(store, "current")
    unheld = await running_job(store, "unheld")
    ended = await running_job(store, "ended")
    done = StatusReport(ended.id, 1, JobState.SUCCEEDED, exit_code=0)
    assert await store.apply_status("narvik", [done]) == ["ok"]
    in_flight, _ = await store.submit(spec("in-flight"))
    assert await place(store, in_flight) == "ok"
    await store.take_outbox("narvik", limit=10, resend=False)  # DISPATCHED, not acked

    held = [
        HeldAttempt(current.id, 1, JobState.RUNNING),
        HeldAttempt(current.id, 0, JobState.RUNNING),  # an older attempt: stop it
        HeldAttempt("job-unknown", 3, JobState.RUNNING),
        HeldAttempt(ended.id, 1, JobState.SUCCEEDED),  # its outcome is recorded: forget it
        HeldAttempt("job-gone", 2, JobState.FAILED),
    ]
    r = await store.reconcile("narvik", held)
    assert r.keep == [(current.id, 1)]
    assert r.stop == [(current.id, 0), ("job-unknown", 3)]
    assert r.forget == [(ended.id, 1), ("job-gone", 2)]
    # RUNNING here but not held by the agent: gone with it; the in-flight one is resent instead
    assert r.requeued == [unheld.id]
    lost = await store.get_job(unheld.id)
    assert (lost.state, lost.attempt) == (JobState.PENDING.value, 2)
    assert (await store.get_job(in_flight.id)).state == JobState.DISPATCHED.value
    assert (await store.get_job(current.id)).state == JobState.RUNNING.value
    # the same call from another site changes nothing of narvik's
    r2 = await store.reconcile("other", [HeldAttempt(current.id, 1, JobState.RUNNING)])
    assert (r2.keep, r2.stop, r2.requeued) == ([], [(current.id, 1)], [])


async def test_a_partitioned_site_fences_itself_and_its_job_moves_without_overlap(
    redis_config: RedisConfig, tmp_path: Path
) -> None:
    """The whole path: narvik goes silent (its agent's server stops, its processes do not);
    its agent stops the attempt when its lease runs out, then the scheduler declares narvik
    lost and the job runs again at the other site its residency allows, never at abu-dhabi.
    When narvik comes back, its stale report is dropped and it takes work again."""
    lost_after, grace, hb = 3.0, 0.5, 0.2
    async with federation(
        redis_config,
        tmp_path,
        kill_grace_seconds=grace,
        heartbeat_interval_seconds=hb,
        lost_after_seconds=lost_after,
    ) as fed:
        s = types_pb2.JobSpec(name="moves", tenant="acme", command=["sleep", "4"])
        s.placement.allowed_jurisdictions.extend(["NO", "US"])
        s.placement.preferred_sites.append("narvik")
        job, _ = await fed.store.submit(normalize_spec(s))
        await fed.wait_state(job.id, JobState.RUNNING)
        narvik = fed.agents["narvik"]
        [pid] = [a.handle.pid for a in narvik.runtime._active.values() if a.handle]
        assert pid is not None

        cut = time.monotonic()
        await narvik.stop(0)  # the link is gone; the agent and its job are not
        while pid_alive(pid):
            await asyncio.sleep(0.02)
        fenced_after = time.monotonic() - cut
        # the agent stopped its own attempt within its lease (plus the kill grace)
        assert fenced_after <= lost_after + 0.5, fenced_after

        deadline = time.monotonic() + 20
        while (moved := await fed.store.get_job(job.id)).attempt < 2 or moved.state not in (
            JobState.RUNNING.value,
            JobState.SUCCEEDED.value,
        ):
            assert time.monotonic() < deadline, moved
            await asyncio.sleep(0.02)
        assert (moved.site, moved.attempt) == ("abilene", 2)
        moved_after = time.monotonic() - cut
        assert moved_after >= lost_after - 0.5
        # attempt 1 ended before attempt 2 was even placed: no overlap at all
        assert fenced_after < moved_after
        assert (await fed.store.get_site("narvik")).state == types_pb2.SITE_STATE_LOST
        states = [e.state for e in await fed.store.events(job.id)]
        assert JobState.LOST.value in states

        # narvik comes back (on a new port): reconciled, ACTIVE again, its LOST report dropped
        reg = next(r.site for r in await fed.store.site_records() if r.site.id == "narvik")
        reg.endpoint = await narvik.start()
        await fed.store.register_site(reg)
        deadline = time.monotonic() + 15
        while (await fed.store.get_site("narvik")).state != types_pb2.SITE_STATE_ACTIVE:
            assert time.monotonic() < deadline, "narvik did not come back"
            await asyncio.sleep(0.05)
        [final] = await fed.wait_terminal([job.id], timeout=20)
        assert (final.state, final.attempt, final.site) == (
            JobState.SUCCEEDED.value,
            2,
            "abilene",
        )
        await wait_outbox_empty(narvik)
        again, _ = await fed.store.submit(
            normalize_spec(
                types_pb2.JobSpec(
                    name="after",
                    tenant="acme",
                    command=["true"],
                    placement=types_pb2.Placement(allowed_jurisdictions=["NO"]),
                )
            )
        )
        [done] = await fed.wait_terminal([again.id], timeout=20)
        assert (done.state, done.site) == (JobState.SUCCEEDED.value, "narvik")


async def wait_outbox_empty(agent: AgentServer, timeout: float = 10) -> None:
    """Until the agent holds no unacknowledged status update (the stale one was forgotten)."""
    deadline = time.monotonic() + timeout
    while agent.runtime.pending_updates():
        assert time.monotonic() < deadline, agent.runtime.pending_updates()
        await asyncio.sleep(0.05)


async def test_a_cancel_wins_over_late_running_and_succeeded_reports(store: JobStore) -> None:
    """A cancel made while the site was cut off: the agent's late reports cannot undo it."""
    await store.register_site(site())
    job, _ = await store.submit(spec("a"))
    assert await place(store, job) == "ok"
    await store.take_outbox("narvik", limit=10, resend=False)
    await store.cancel(job.id)
    assert await store.pending_cancels("narvik") == [(job.id, 1)]  # sent again on reconnect
    late = [
        StatusReport(job.id, 1, JobState.RUNNING),
        StatusReport(job.id, 1, JobState.SUCCEEDED, exit_code=0),
    ]
    assert await store.apply_status("narvik", late) == ["ok", "ok"]
    final = await store.get_job(job.id)
    assert final.state == JobState.CANCELLED.value
    assert await store.pending_cancels("narvik") == []
