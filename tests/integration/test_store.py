"""The queue store against a real redis-server: every transition is one checked Lua script."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.config import RedisConfig
from orchestrator.errors import (
    IllegalTransitionError,
    JobNotFoundError,
    SiteNotFoundError,
    StoreUnavailableError,
)
from orchestrator.states import JobState
from orchestrator.store import Ack, Decision, JobStore, LocalRedis, StatusReport
from orchestrator.validation import normalize_site, normalize_spec


def spec(
    name: str = "job",
    *,
    gpus: int = 0,
    gpu_type: str = "",
    allowed: tuple[str, ...] = (),
    rid: str = "",
    max_attempts: int = 1,
    tenant: str = "acme",
) -> types_pb2.JobSpec:
    s = types_pb2.JobSpec(
        name=name, tenant=tenant, command=["true"], client_request_id=rid, max_attempts=max_attempts
    )
    s.resources.gpus = gpus
    s.resources.gpu_type = gpu_type
    s.placement.allowed_jurisdictions.extend(allowed)
    return normalize_spec(s)


def site(site_id: str = "narvik", *, jurisdiction: str = "NO", h100: int = 8) -> types_pb2.Site:
    s = types_pb2.Site(
        id=site_id,
        name=site_id,
        jurisdiction=jurisdiction,
        cpus=64,
        memory_mb=512 * 1024,
        endpoint="127.0.0.1:1",
    )
    s.gpus.add(type="H100", count=h100)
    return normalize_site(s)


async def place(store: JobStore, job: types_pb2.Job, site_id: str = "narvik") -> str:
    [code] = await store.commit([Decision(job.id, job.attempt, site_id, "H100")])
    return code


async def test_submit_get_and_events(store: JobStore) -> None:
    job, dedup = await store.submit(spec("a"))
    assert not dedup
    assert job.state == JobState.PENDING.value and job.attempt == 1
    assert job.spec.queue == "default" and job.spec.resources.cpus == 1
    got = await store.get_job(job.id)
    assert got == job
    events = await store.events(job.id)
    assert [e.message for e in events] == ["submitted"]


async def test_idempotent_submit_returns_same_job(store: JobStore) -> None:
    first, d1 = await store.submit(spec("a", rid="req-1"))
    again, d2 = await store.submit(spec("a", rid="req-1"))
    other, _ = await store.submit(spec("a", rid="req-1", tenant="other"))
    assert (d1, d2) == (False, True)
    assert again.id == first.id
    assert other.id != first.id


async def test_unknown_job_is_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFoundError) as err:
        await store.get_job("j-0000000000-000000")
    assert err.value.job_id == "j-0000000000-000000"
    with pytest.raises(JobNotFoundError):
        await store.cancel("j-0000000000-000000")


async def test_full_lifecycle_and_capacity_accounting(store: JobStore) -> None:
    await store.register_site(site(h100=8))
    job, _ = await store.submit(spec("a", gpus=4, gpu_type="H100"))
    [ref] = await store.pending_window(10)
    assert (ref.job_id, ref.attempt) == (job.id, 1)
    assert await place(store, job) == "ok"
    [rec] = await store.site_records()
    assert rec.used_gpus == {"H100": 4} and rec.active_jobs == 1
    assert await store.pending_window(10) == []

    [a] = await store.take_outbox("narvik", limit=10, resend=False)
    assert (a.job_id, a.attempt, a.gpu_type) == (job.id, 1, "H100")
    assert (await store.get_job(job.id)).state == JobState.DISPATCHED.value
    # the in-flight assignment is sent again after a reconnect, until acknowledged
    assert [x.job_id for x in await store.take_outbox("narvik", limit=10, resend=True)] == [job.id]
    assert await store.record_acks("narvik", [Ack(job.id, 1, True)]) == ["ok"]
    assert await store.take_outbox("narvik", limit=10, resend=True) == []

    running = StatusReport(job.id, 1, JobState.RUNNING)
    assert await store.apply_status("narvik", [running]) == ["ok"]
    assert await store.apply_status("narvik", [running]) == ["dup"]
    done = StatusReport(job.id, 1, JobState.FAILED, exit_code=3, message="exit code 3")
    assert await store.apply_status("narvik", [done]) == ["ok"]
    final = await store.get_job(job.id)
    assert final.state == JobState.FAILED.value
    assert final.has_exit_code and final.exit_code == 3
    assert final.HasField("finished_at")
    [rec] = await store.site_records()
    assert rec.used_gpus == {} and rec.active_jobs == 0
    # a late or repeated report changes nothing
    late = StatusReport(job.id, 1, JobState.SUCCEEDED, exit_code=0)
    assert await store.apply_status("narvik", [late]) == ["stale"]
    assert (await store.get_job(job.id)).state == JobState.FAILED.value


async def test_commit_drops_decisions_whose_preconditions_changed(store: JobStore) -> None:
    await store.register_site(site(h100=8))
    a, _ = await store.submit(spec("a", gpus=6, gpu_type="H100"))
    b, _ = await store.submit(spec("b", gpus=6, gpu_type="H100"))
    codes = await store.commit(
        [Decision(a.id, 1, "narvik", "H100"), Decision(b.id, 1, "narvik", "H100")]
    )
    assert codes == ["ok", "capacity"]
    assert await store.commit([Decision(a.id, 1, "narvik", "H100")]) == ["stale"]
    assert await store.commit([Decision(b.id, 2, "narvik", "H100")]) == ["stale"]
    assert await store.commit([Decision(b.id, 1, "nowhere", "H100")]) == ["site"]
    await store.set_site_state("narvik", types_pb2.SITE_STATE_CORDONED)
    c, _ = await store.submit(spec("c", gpus=1, gpu_type="H100"))
    assert await store.commit([Decision(c.id, 1, "narvik", "H100")]) == ["site"]


async def test_stale_attempt_and_wrong_site_reports_are_ignored(store: JobStore) -> None:
    await store.register_site(site())
    await store.register_site(site("other", jurisdiction="SE"))
    job, _ = await store.submit(spec("a", max_attempts=2))
    await place(store, job)
    await store.take_outbox("narvik", limit=10, resend=False)
    fail = StatusReport(job.id, 1, JobState.FAILED, exit_code=1, message="exit code 1")
    assert await store.apply_status("other", [fail]) == ["stale"]
    assert await store.apply_status("narvik", [fail]) == ["retry"]
    retried = await store.get_job(job.id)
    assert (retried.state, retried.attempt, retried.site) == (JobState.PENDING.value, 2, "")
    # attempt 1 can no longer change the job
    ok = StatusReport(job.id, 1, JobState.SUCCEEDED, exit_code=0)
    assert await store.apply_status("narvik", [ok]) == ["stale"]
    assert (await store.get_job(job.id)).state == JobState.PENDING.value


async def test_cancel_paths(store: JobStore) -> None:
    await store.register_site(site())
    pending, _ = await store.submit(spec("p"))
    assert (await store.cancel(pending.id)).state == JobState.CANCELLED.value
    assert (await store.cancel(pending.id)).state == JobState.CANCELLED.value  # idempotent
    assert await store.pending_window(10) == []

    running, _ = await store.submit(spec("r"))
    await place(store, running)
    await store.take_outbox("narvik", limit=10, resend=False)
    after = await store.cancel(running.id, "no longer needed")
    assert after.state == JobState.DISPATCHED.value and after.cancel_requested
    assert await store.pending_cancels("narvik") == [(running.id, 1)]
    # the dispatcher gets them with the outbox, in the same call
    other, _ = await store.submit(spec("o"))
    await place(store, other)
    work = await store.take_work("narvik", limit=10, resend=False)
    assert [a.job_id for a in work.assignments] == [other.id]
    assert work.cancels == [(running.id, 1)]
    # a late success still ends as CANCELLED: the cancel wins
    done = StatusReport(running.id, 1, JobState.SUCCEEDED, exit_code=0, message="exit code 0")
    assert await store.apply_status("narvik", [done]) == ["ok"]
    assert (await store.get_job(running.id)).state == JobState.CANCELLED.value
    assert await store.pending_cancels("narvik") == []

    finished, _ = await store.submit(spec("f"))
    await place(store, finished)
    await store.take_outbox("narvik", limit=10, resend=False)
    await store.apply_status("narvik", [StatusReport(finished.id, 1, JobState.SUCCEEDED, 0)])
    with pytest.raises(IllegalTransitionError) as err:
        await store.cancel(finished.id)
    assert err.value.state == "SUCCEEDED"


async def test_refusals(store: JobStore) -> None:
    await store.register_site(site())
    a, _ = await store.submit(spec("a"))
    b, _ = await store.submit(spec("b"))
    await store.commit([Decision(a.id, 1, "narvik"), Decision(b.id, 1, "narvik")])
    await store.take_outbox("narvik", limit=10, resend=False)
    codes = await store.record_acks(
        "narvik",
        [
            Ack(a.id, 1, False, "residency: job allows [SE], site is NO"),
            Ack(b.id, 1, False, "insufficient capacity"),
        ],
    )
    assert codes == ["failed", "requeued"]
    assert (await store.get_job(a.id)).state == JobState.FAILED.value
    requeued = await store.get_job(b.id)
    assert (requeued.state, requeued.attempt) == (JobState.PENDING.value, 2)


async def test_unschedulable_and_reconsider(store: JobStore) -> None:
    job, _ = await store.submit(spec("a", allowed=("JP",)))
    assert await store.mark_unschedulable([(job.id, 1, "no site in [JP]")]) == 1
    marked = await store.get_job(job.id)
    assert marked.unschedulable and "no site in [JP]" in marked.reason
    assert await store.pending_window(10) == []
    await store.register_site(site("tokyo", jurisdiction="JP"))
    assert [r.job_id for r in await store.pending_window(10)] == [job.id]


async def test_list_jobs_filters_and_pages(store: JobStore) -> None:
    ids = [(await store.submit(spec(f"j{i}")))[0].id for i in range(7)]
    await store.cancel(ids[2])
    page, token = await store.list_jobs(page_size=3)
    assert [j.id for j in page] == ids[::-1][:3]
    page2, token2 = await store.list_jobs(page_size=3, page_token=token)
    assert [j.id for j in page2] == ids[::-1][3:6]
    page3, token3 = await store.list_jobs(page_size=3, page_token=token2)
    assert [j.id for j in page3] == ids[:1] and token3 == ""
    cancelled, _ = await store.list_jobs(states=[JobState.CANCELLED])
    assert [j.id for j in cancelled] == [ids[2]]
    assert (await store.list_jobs(tenant="nobody"))[0] == []


async def test_priority_orders_the_window(store: JobStore) -> None:
    low = spec("low")
    high = types_pb2.JobSpec()
    high.CopyFrom(spec("high"))
    high.priority = types_pb2.PRIORITY_CLASS_HIGH
    a, _ = await store.submit(low)
    b, _ = await store.submit(high)
    assert [r.job_id for r in await store.pending_window(10)] == [b.id, a.id]


async def test_site_not_found(store: JobStore) -> None:
    with pytest.raises(SiteNotFoundError):
        await store.get_site("nowhere")
    with pytest.raises(SiteNotFoundError):
        await store.set_site_state("nowhere", types_pb2.SITE_STATE_CORDONED)


async def test_durability_settings_are_checked(store: JobStore) -> None:
    assert await store.durability_warnings() == []
    await store.client.config_set("appendfsync", "everysec")
    try:
        [warning] = await store.durability_warnings()
        assert "appendfsync=everysec" in warning
    finally:
        await store.client.config_set("appendfsync", "always")


async def test_a_redis_that_would_inflate_job_records_is_named(store: JobStore) -> None:
    await store.client.config_set("hash-max-ziplist-value", "64")
    try:
        [warning] = await store.durability_warnings()
        assert "hash-max-ziplist-value=64" in warning
    finally:
        await store.client.config_set("hash-max-ziplist-value", "1024")
    assert await store.durability_warnings() == []


async def test_a_queued_job_record_stays_compact(store: JobStore) -> None:
    job, _ = await store.submit(spec("compact"))
    encoding = await store.client.object("encoding", store.keys.job(job.id))
    assert encoding in (b"ziplist", b"listpack")  # Redis 6 and 7 names
    assert not await store.client.exists(f"{store.keys.job(job.id)}:ev")  # no stream per job


async def test_unreachable_redis_is_unavailable_and_writes_nothing() -> None:
    from orchestrator.store import free_port

    dead = JobStore.from_config(
        RedisConfig(url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    )
    try:
        with pytest.raises(StoreUnavailableError, match="unreachable"):
            await dead.submit(spec("a"))
    finally:
        await dead.close()


async def test_a_burst_beyond_the_pool_size_queues_instead_of_failing(
    redis_config: RedisConfig,
) -> None:
    import asyncio
    import dataclasses

    small = JobStore.from_config(dataclasses.replace(redis_config, max_connections=4))
    try:
        results = await asyncio.gather(*[small.submit(spec(f"b{i}")) for i in range(200)])
        assert len({job.id for job, _ in results}) == 200
        assert len(await small.pending_window(1000)) == 200
    finally:
        await small.close()


async def test_password_protected_redis_is_one_url_away(tmp_path: Path) -> None:
    from orchestrator.store import LocalRedis

    server = LocalRedis(tmp_path / "redis", password="s3cret-pw")
    url = server.start()
    try:
        assert url.startswith("redis://:s3cret-pw@")
        good = JobStore.from_config(RedisConfig.from_url(url, prefix="pw:"))
        try:
            job, _ = await good.submit(spec("a"))
            assert (await good.get_job(job.id)).id == job.id
        finally:
            await good.close()
        no_auth = JobStore.from_config(RedisConfig.from_url(url.replace(":s3cret-pw@", "")))
        try:
            with pytest.raises(StoreUnavailableError, match="refused the configured credentials"):
                await no_auth.ping()
        finally:
            await no_auth.close()
    finally:
        server.stop()


async def test_a_cycle_view_reads_what_the_separate_reads_do_at_once(store: JobStore) -> None:
    await store.register_site(site("narvik"))
    await store.register_site(site("abudhabi", jurisdiction="AE", h100=4))
    await store.put_tenant(types_pb2.Tenant(id="acme", country="NO", weight=1.0))
    await store.put_tenant(types_pb2.Tenant(id="zeta", country="SE", weight=2.0))
    surplus = types_pb2.JobSpec()
    surplus.CopyFrom(spec("surplus", gpus=2, gpu_type="H100"))
    surplus.priority = types_pb2.PRIORITY_CLASS_SURPLUS
    running, _ = await store.submit(surplus)
    assert await place(store, running) == "ok"
    other = types_pb2.JobSpec()
    other.CopyFrom(spec("batch", tenant="zeta"))
    other.queue = "batch"
    for s in [spec("a"), other, spec("b", gpus=1, gpu_type="H100")]:
        await store.submit(s)
    epoch_key = store.keys.epoch
    before = int(await store.client.get(epoch_key) or 0)

    view = await store.cycle_view(2, epoch_key=epoch_key)

    assert view.epoch == before + 1 == int(await store.client.get(epoch_key))
    assert view.order == await store.pending_order(2) and len(view.order) == 2
    assert (await store.cycle_view(10, epoch_key=epoch_key)).order == await store.pending_order(10)
    assert view.sites == await store.site_records()
    assert [r.site.id for r in view.sites] == ["abudhabi", "narvik"]
    assert view.sites[1].used_gpus == {"H100": 2}
    assert view.tenants == await store.tenant_records()
    assert [t.tenant.id for t in view.tenants] == ["acme", "zeta"]
    assert view.surplus == await store.surplus_running()
    assert [r.job_id for r in view.surplus] == [running.id]


async def test_an_idle_cycle_view_reads_only_the_silent_sites(store: JobStore) -> None:
    for site_id in ("abudhabi", "narvik", "tromso", "unheard"):
        await store.register_site(site(site_id))
    await store.record_heartbeat("narvik", dispatcher_id="d", at=1_000.0)
    await store.record_heartbeat("tromso", dispatcher_id="d", at=1_100.0)
    await store.record_heartbeat("abudhabi", dispatcher_id="d", at=900.0)
    key = store.keys.epoch

    # nothing pending: the sites heard from before the time, none never heard from
    idle = await store.cycle_view(10, epoch_key=key, silent_before=1_050.0)
    records = {r.site.id: r for r in await store.site_records()}
    assert idle.order == []
    assert idle.sites == [records["abudhabi"], records["narvik"]]
    assert (await store.cycle_view(10, epoch_key=key, silent_before=0.0)).sites == []

    # a job pending: every site, as without the time
    await store.submit(spec("a"))
    busy = await store.cycle_view(10, epoch_key=key, silent_before=1_050.0)
    assert len(busy.order) == 1
    assert busy.sites == await store.site_records()
    assert [r.site.id for r in busy.sites] == ["abudhabi", "narvik", "tromso", "unheard"]


async def _calls(store: JobStore, command: str) -> int:
    """``command``s the server ran so far (scripts' included)."""
    stats = await store.client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {"calls": 0})["calls"])


async def _dispatched(store: JobStore, specs: list[types_pb2.JobSpec]) -> list[str]:
    """Jobs submitted, placed on narvik and taken for sending (DISPATCHED), in order."""
    ids = []
    for s in specs:
        job, _ = await store.submit(s)
        assert await place(store, job) == "ok"
        ids.append(job.id)
    await store.take_outbox("narvik", limit=100, resend=False)
    return ids


async def test_a_running_report_and_the_end_in_one_batch_act_as_two(
    redis_server: LocalRedis,
) -> None:
    """RUNNING then an end of one attempt in one batch is applied as one update: the codes, the
    records and the histories are those of the reports applied one by one."""
    together, one_by_one = (
        JobStore.from_config(RedisConfig(url=redis_server.url, prefix=f"pair-{name}:"))
        for name in ("together", "apart")
    )
    results = []
    try:
        for store in (together, one_by_one):
            await store.register_site(site())
            specs = [spec(f"j{i}", max_attempts=2 if i == 2 else 1) for i in range(8)]
            ids = await _dispatched(store, specs)
            await store.cancel(ids[4])  # cancel requested: the end becomes CANCELLED
            R, S, F, L = JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.LOST
            reports = [
                StatusReport(ids[0], 1, R, message="started\x1ehere"),
                StatusReport(ids[1], 1, R),
                StatusReport(ids[2], 1, R),
                StatusReport(ids[3], 1, R),
                StatusReport(ids[4], 1, R),
                StatusReport(ids[5], 1, R),
                StatusReport(ids[6], 9, R),  # another attempt: stale, both
                StatusReport(ids[0], 1, S, exit_code=0, message="exit code 0"),
                StatusReport(ids[1], 1, F, exit_code=3, message="exit code 3"),
                StatusReport(ids[2], 1, F, exit_code=1, message="exit code 1"),  # retried
                StatusReport(ids[3], 1, L, message="lease ran out"),  # not an end: apart
                StatusReport(ids[4], 1, S, exit_code=0),
                StatusReport(ids[6], 9, S, exit_code=0),
                StatusReport(ids[7], 1, S, exit_code=0),  # no RUNNING before it
                StatusReport(ids[0], 1, R),  # after its end: stale
                StatusReport(ids[5], 1, JobState.CANCELLED, exit_code=143),
            ]
            hsets = await _calls(store, "hset")
            if store is together:
                codes = await store.apply_status("narvik", reports)
            else:
                codes = [c for r in reports for c in await store.apply_status("narvik", [r])]
            hsets = await _calls(store, "hset") - hsets
            jobs = await store.get_jobs(ids)
            histories = [[e.state for e in await store.events(j)] for j in ids]
            results.append((codes, jobs, histories, hsets))
    finally:
        await together.close()
        await one_by_one.close()
    (codes, jobs, histories, hsets), (codes_apart, jobs_apart, histories_apart, hsets_apart) = (
        results
    )
    assert codes == codes_apart
    assert hsets <= hsets_apart - 5  # the five pairs that ran wrote their records once
    assert codes[:7] == ["ok"] * 6 + ["stale"] and codes[7:11] == ["ok", "ok", "retry", "retry"]
    assert histories == histories_apart
    assert histories[0][-2:] == [JobState.RUNNING.value, JobState.SUCCEEDED.value]
    for job, apart in zip(jobs, jobs_apart, strict=True):
        assert (job.state, job.attempt, job.exit_code) == (
            apart.state,
            apart.attempt,
            apart.exit_code,
        )
        assert job.HasField("started_at") == apart.HasField("started_at")
    assert [JobState(j.state).name for j in jobs] == [
        "SUCCEEDED", "FAILED", "PENDING", "PENDING", "CANCELLED", "CANCELLED", "DISPATCHED",
        "SUCCEEDED",
    ]  # fmt: skip
    assert jobs[0].HasField("started_at") and not jobs[7].HasField("started_at")


async def test_control_characters_in_messages_become_spaces_in_the_history(
    store: JobStore,
) -> None:
    """A message's control characters (the history's own separators among them) are stored as
    spaces, for every job of a batch, whether its message is shared or its own."""
    await store.register_site(site())
    ids = await _dispatched(store, [spec(f"j{i}") for i in range(4)])
    shared = "line one\nline\x1ftwo\x1e\x07"
    reports = [
        StatusReport(ids[0], 1, JobState.FAILED, exit_code=1, message=shared),
        StatusReport(ids[1], 1, JobState.FAILED, exit_code=1, message=shared),
        StatusReport(ids[2], 1, JobState.FAILED, exit_code=2, message="own\tmessage\r"),
        StatusReport(ids[3], 1, JobState.SUCCEEDED, exit_code=0, message="plain"),
    ]
    assert await store.apply_status("narvik", reports) == ["ok"] * 4
    last = [(await store.events(job_id))[-1] for job_id in ids]
    assert [e.message for e in last] == [
        "line one line two  ",
        "line one line two  ",
        "own message ",
        "plain",
    ]
    assert [e.exit_code for e in last] == [1, 1, 2, 0]


async def test_a_status_report_reads_the_record_once(store: JobStore) -> None:
    """RUNNING, an end, and a RUNNING with its end in one update each read the job's record
    with one HMGET (an end reads what its release needs together with its status)."""
    await store.register_site(site())
    ids = await _dispatched(store, [spec(f"j{i}") for i in range(6)])
    R, S = JobState.RUNNING, JobState.SUCCEEDED
    batches = [
        [StatusReport(j, 1, R) for j in ids[:3]],
        [StatusReport(j, 1, S, exit_code=0) for j in ids[:3]],
        [StatusReport(j, 1, s, exit_code=0 if s == S else None) for j in ids[3:] for s in (R, S)],
    ]
    for batch in batches:  # three updates each (the last: three pairs)
        before = await _calls(store, "hmget")
        assert await store.apply_status("narvik", batch) == ["ok"] * len(batch)
        assert await _calls(store, "hmget") - before == 3
    assert [j.state for j in await store.get_jobs(ids)] == [types_pb2.JOB_STATE_SUCCEEDED] * 6
