"""The store side of the partner federation against a real redis-server: site ownership,
capacity offers and the effective policy they make, withdrawals, usage, single-use tokens."""

from __future__ import annotations

import asyncio
import time

import pytest
from test_store import spec

from orchestrator._pb.orchestrator.v1 import federation_pb2, types_pb2
from orchestrator.errors import InvalidSpecError, PermissionDeniedError, SiteNotFoundError
from orchestrator.federation import utc_hour
from orchestrator.scheduler import Scheduler
from orchestrator.scheduler.snapshot import read_snapshot
from orchestrator.states import JobState
from orchestrator.store import Ack, Decision, JobStore, StatusReport
from orchestrator.validation import normalize_site

REQUEUE = federation_pb2.WITHDRAW_MODE_REQUEUE
FINISH = federation_pb2.WITHDRAW_MODE_FINISH


def site(
    site_id: str = "narvik",
    *,
    name: str = "",
    owner: str = "",
    home: tuple[str, ...] = ("NO",),
    h100: int = 32,
    policy: types_pb2.SitePolicy | None = None,
) -> types_pb2.Site:
    s = types_pb2.Site(
        id=site_id, name=name or site_id, jurisdiction="NO", cpus=256, memory_mb=1 << 20,
        endpoint="127.0.0.1:1", owner=owner, home_countries=list(home),
    )  # fmt: skip
    s.gpus.add(type="H100", count=h100, watts=700)
    if policy is not None:
        s.policy.CopyFrom(policy)
    return normalize_site(s)


def offer(
    countries: tuple[str, ...],
    gpus: int,
    *,
    site_id: str = "narvik",
    offer_id: str = "",
    hours: tuple[tuple[int, int], ...] = (),
) -> federation_pb2.CapacityOffer:
    o = federation_pb2.CapacityOffer(id=offer_id, site_id=site_id, tenant_countries=countries)
    o.gpus.add(type="H100", count=gpus)
    for start, end in hours:
        o.hours.add(start_hour=start, end_hour=end)
    return o


def open_now() -> tuple[int, int]:
    """A window holding now and for at least another hour."""
    h = utc_hour(time.time())
    return h, (h + 2) % 24


def closed_now() -> tuple[int, int]:
    """A window that does not hold now nor for at least another two hours."""
    h = utc_hour(time.time())
    return (h + 3) % 24, (h + 4) % 24


async def tenants(store: JobStore, **countries: str) -> None:
    for tenant_id, country in countries.items():
        await store.put_tenant(types_pb2.Tenant(id=tenant_id, country=country, weight=1.0))


async def policy_fields(store: JobStore, site_id: str = "narvik") -> tuple[str, str, str | None]:
    """The site hash fields commit.lua checks: pol:c, pol:t, pol:surplus (None: no limit)."""
    fields = await store.client.hmget(store.keys.site(site_id), "pol:c", "pol:t", "pol:surplus")
    c, t, surplus = (v.decode() if isinstance(v, bytes) else v for v in fields)
    assert c is not None and t is not None
    return c, t, surplus


async def placed(store: JobStore, tenant: str, gpus: int, *, site_id: str = "narvik") -> str:
    """A job of ``tenant`` committed at the site (SCHEDULED); returns its id."""
    job, _ = await store.submit(spec(f"{tenant}-job", gpus=gpus, gpu_type="H100", tenant=tenant))
    [code] = await store.commit([Decision(job.id, 1, site_id, "H100", watts=700 * gpus)])
    assert code == "ok", code
    return job.id


async def running(store: JobStore, job_ids: list[str], *, site_id: str = "narvik") -> None:
    """Send, acknowledge and start the given SCHEDULED jobs (attempt 1), one after another."""
    await store.take_outbox(site_id, limit=100, resend=False)
    await store.record_acks(site_id, [Ack(j, 1, True) for j in job_ids])
    for job_id in job_ids:
        ok = await store.apply_status(site_id, [StatusReport(job_id, 1, JobState.RUNNING)])
        assert ok == ["ok"]
        await asyncio.sleep(0.002)  # distinct start times


async def state_of(store: JobStore, job_id: str) -> tuple[int, int]:
    job = await store.get_job(job_id)
    return job.state, job.attempt


# ---------------------------------------------------------------- ownership


async def test_a_partner_owns_the_sites_it_registers(store: JobStore) -> None:
    status = await store.register_site(site(name="Narvik"), owner="narvik-jv")
    assert status.site.owner == "narvik-jv"
    assert await store.site_owner("narvik") == "narvik-jv"
    # the owner updates it
    assert (await store.register_site(site(name="Narvik 2"), owner="narvik-jv")).site.name == (
        "Narvik 2"
    )
    # another partner changes nothing
    with pytest.raises(PermissionDeniedError) as err:
        await store.register_site(site(name="Mine now", h100=1), owner="gulf")
    assert err.value.principal == "gulf" and "narvik-jv" not in err.value.message
    status = await store.get_site("narvik")
    assert (status.site.name, status.site.owner) == ("Narvik 2", "narvik-jv")
    assert status.site.gpus[0].count == 32
    assert await store.site_owner("narvik") == "narvik-jv"


async def test_the_operator_path_is_unchanged_and_its_sites_are_not_a_partners(
    store: JobStore,
) -> None:
    await store.register_site(site())  # no owner
    assert await store.site_owner("narvik") == ""
    with pytest.raises(PermissionDeniedError):
        await store.register_site(site(name="claimed"), owner="narvik-jv")
    assert (await store.get_site("narvik")).site.name == "narvik"
    # the operator records whatever owner the registration names, and may change it
    await store.register_site(site(owner="narvik-jv"))
    assert await store.site_owner("narvik") == "narvik-jv"
    await store.register_site(site(name="mine", owner="narvik-jv"), owner="narvik-jv")
    await store.register_site(site(owner="gulf"))
    assert await store.site_owner("narvik") == "gulf"
    with pytest.raises(SiteNotFoundError):
        await store.site_owner("nowhere")


async def test_two_partners_racing_for_a_new_site_id_one_wins_the_other_writes_nothing(
    store: JobStore,
) -> None:
    for i in range(10):
        site_id = f"new-{i}"
        results = await asyncio.gather(
            store.register_site(site(site_id, name="by a", h100=8), owner="a"),
            store.register_site(site(site_id, name="by b", h100=16), owner="b"),
            return_exceptions=True,
        )
        wins = [r for r in results if isinstance(r, types_pb2.SiteStatus)]
        losses = [r for r in results if isinstance(r, PermissionDeniedError)]
        assert len(wins) == 1 and len(losses) == 1, results
        winner = wins[0].site.owner
        stored = await store.get_site(site_id)
        assert stored.site.owner == winner == await store.site_owner(site_id)
        assert stored.site.name == f"by {winner}"
        [rec] = await store.site_records([site_id])
        assert rec.capacity_gpus == {"H100": 8 if winner == "a" else 16}


# ---------------------------------------------------------------- offers


async def test_offers_round_trip(store: JobStore) -> None:
    await store.register_site(site())
    with pytest.raises(SiteNotFoundError):
        await store.put_offer(offer(("SE",), 8, site_id="nowhere"))
    first = await store.put_offer(offer(("SE",), 8, hours=(open_now(),)))
    assert first.id.startswith("o-") and first.site_id == "narvik"
    assert first.HasField("created_at") and first.active_now
    second = await store.put_offer(offer(("DK",), 4, offer_id="night", hours=(closed_now(),)))
    assert second.id == "night" and not second.active_now
    listed = await store.list_offers(["narvik"])
    assert [o.id for o in listed] == sorted([first.id, "night"])
    assert {o.id: o.active_now for o in listed} == {first.id: True, "night": False}
    assert await store.list_offers() == listed
    assert await store.list_offers([]) == []

    # the same id replaces the offer, and keeps when it was first made
    replaced = await store.put_offer(offer(("FI",), 2, offer_id=first.id))
    assert replaced.created_at == first.created_at
    [again] = [o for o in await store.list_offers(["narvik"]) if o.id == first.id]
    assert list(again.tenant_countries) == ["FI"] and again.gpus[0].count == 2

    # active_now answers for the time asked
    h = closed_now()[0]
    at_night = time.time() // 86400 * 86400 + h * 3600 + 60
    assert {o.id: o.active_now for o in await store.list_offers(now=at_night)}["night"]

    await store.delete_offer("narvik", "night")
    assert [o.id for o in await store.list_offers()] == [first.id]
    with pytest.raises(InvalidSpecError) as err:
        await store.delete_offer("narvik", "night")
    assert err.value.field == "offer_id"
    with pytest.raises(SiteNotFoundError):
        await store.delete_offer("nowhere", first.id)
    await store.delete_offer("narvik", first.id)
    assert await store.list_offers() == []
    with pytest.raises(InvalidSpecError):
        await store.put_offer(offer(("SE",), 1, offer_id="bad id"))
    with pytest.raises(InvalidSpecError):
        await store.put_offer(offer(("SE",), 1, hours=((25, 3),)))


async def test_the_effective_policy_reaches_the_commit_check_and_the_snapshot(
    store: JobStore,
) -> None:
    await store.register_site(site())
    assert await policy_fields(store) == ("", "", None)  # no offers: the base policy (open)
    o = await store.put_offer(offer(("SE",), 8, hours=(open_now(),)))
    assert await policy_fields(store) == (",NO,SE,", "", "8")
    # the registration keeps the base policy the owner set
    assert (await store.get_site("narvik")).site.policy == types_pb2.SitePolicy()
    [rec] = await store.site_records()
    assert rec.policy is not None
    assert list(rec.policy.allowed_tenant_countries) == ["NO", "SE"]
    snap = await read_snapshot(store, [], tenants={}, stale_after=60, preemption_window_seconds=600)
    [view] = snap.sites
    assert view.policy.allowed_tenant_countries == {"NO", "SE"}
    assert view.policy.surplus_gpus == 8

    # the window closes: refresh_offers applies it (once)
    later = time.time() + 3 * 3600
    assert await store.refresh_offers(later) == 1
    assert await store.refresh_offers(later) == 0
    assert await policy_fields(store) == (",NO,", "", "0")
    assert await store.refresh_offers() == 1  # and opens again now
    assert await policy_fields(store) == (",NO,SE,", "", "8")

    # the owner's base policy is kept apart, offers add to it
    base = types_pb2.SitePolicy(allowed_tenant_countries=["NO", "DK"], has_surplus_limit=True)
    base.surplus_gpus = 4
    status = await store.set_site_policy("narvik", base)
    assert status.site.policy == base
    assert await policy_fields(store) == (",DK,NO,SE,", "", "12")
    # a new registration keeps the offers, and its home countries count
    await store.register_site(site(home=("FI",), policy=base))
    assert await policy_fields(store) == (",DK,NO,SE,", "", "12")
    await store.register_site(site(home=("FI",)))
    assert await policy_fields(store) == (",FI,SE,", "", "8")
    # with no offers left, the base policy again exactly
    await store.delete_offer("narvik", o.id)
    assert await policy_fields(store) == ("", "", None)
    [rec] = await store.site_records()
    assert rec.policy == types_pb2.SitePolicy()
    with pytest.raises(SiteNotFoundError):
        await store.set_site_policy("nowhere", base)


async def test_concurrent_offers_all_count(store: JobStore) -> None:
    await store.register_site(site())
    await asyncio.gather(
        *(store.put_offer(offer(("SE",), 1, offer_id=f"o{i}")) for i in range(20)),
        store.set_site_policy("narvik", types_pb2.SitePolicy(allowed_tenants=["acme"])),
    )
    assert len(await store.list_offers()) == 20
    assert await policy_fields(store) == (",SE,", ",acme,", "20")


async def test_a_non_home_tenant_is_placed_only_while_an_offer_for_its_country_holds(
    store: JobStore,
) -> None:
    await store.register_site(site(h100=8))
    await store.record_heartbeat("narvik", dispatcher_id="d0")
    await tenants(store, sweco="SE", norco="NO")
    await store.put_offer(offer(("SE",), 8, offer_id="se", hours=(closed_now(),)))
    job, _ = await store.submit(spec("train", gpus=8, gpu_type="H100", tenant="sweco"))

    # the store refuses it, and so does placement
    [code] = await store.commit([Decision(job.id, 1, "narvik", "H100")])
    assert code == "policy"
    scheduler = Scheduler(store)
    stats = await scheduler.run_once()
    assert stats.placed == 0
    assert (await store.get_job(job.id)).state == JobState.PENDING.value

    # the window is moved to now: the job is placed
    await store.put_offer(offer(("SE",), 8, offer_id="se", hours=(open_now(),)))
    assert (await scheduler.run_once()).placed == 1
    placed_job = await store.get_job(job.id)
    assert (placed_job.state, placed_job.site) == (JobState.SCHEDULED.value, "narvik")

    # a second one finds the offered GPUs used up; the home tenant is not limited
    other, _ = await store.submit(spec("more", gpus=1, gpu_type="H100", tenant="sweco"))
    [code] = await store.commit([Decision(other.id, 1, "narvik", "H100")])
    assert code in ("surplus", "capacity")
    await store.register_site(site(h100=16))
    [code] = await store.commit([Decision(other.id, 1, "narvik", "H100")])
    assert code == "surplus"
    home, _ = await store.submit(spec("home", gpus=8, gpu_type="H100", tenant="norco"))
    [code] = await store.commit([Decision(home.id, 1, "narvik", "H100")])
    assert code == "ok"


async def test_the_scheduler_applies_hour_windows_itself(store: JobStore) -> None:
    await store.register_site(site(h100=8))
    await store.record_heartbeat("narvik", dispatcher_id="d0")
    await tenants(store, sweco="SE")
    await store.put_offer(offer(("SE",), 8, hours=(open_now(),)))
    # as if the window had closed when last applied
    assert await store.refresh_offers(time.time() + 3 * 3600) == 1
    job, _ = await store.submit(spec("train", gpus=8, gpu_type="H100", tenant="sweco"))
    stats = await Scheduler(store).run_once()  # applies the windows as they are now
    assert stats.placed == 1
    assert (await store.get_job(job.id)).site == "narvik"


# ---------------------------------------------------------------- withdraw


async def test_withdrawing_the_site_with_requeue_stops_and_requeues_everything(
    store: JobStore,
) -> None:
    await store.register_site(site())
    await tenants(store, norco="NO", sweco="SE")
    await store.put_offer(offer(("SE",), 16))
    run_home = await placed(store, "norco", 8)
    run_away = await placed(store, "sweco", 4)
    await running(store, [run_home, run_away])
    sent = await placed(store, "sweco", 2)
    await store.take_outbox("narvik", limit=100, resend=False)  # DISPATCHED
    queued = await placed(store, "norco", 1)  # SCHEDULED, not sent

    status, requeued, still = await store.withdraw(
        "narvik", offer_id="", mode=REQUEUE, reason="maintenance"
    )
    assert (requeued, still) == (4, 0)
    assert status.state == types_pb2.SITE_STATE_DRAINING
    log = await store.site_log("narvik")
    assert [s for _, s, _ in log] == [types_pb2.SITE_STATE_CORDONED, types_pb2.SITE_STATE_DRAINING]
    assert all("maintenance" in m for _, _, m in log)
    assert await store.list_offers() == []
    assert await policy_fields(store) == ("", "", None)

    assert await state_of(store, queued) == (JobState.PENDING.value, 2)
    for job_id in (run_home, run_away, sent):
        assert await state_of(store, job_id) == (JobState.PREEMPTED.value, 1)
    assert await store.pending_cancels("narvik") == sorted(
        [(run_home, 1), (run_away, 1), (sent, 1)]
    )
    # the agent reports the attempts ended: requeued with a new attempt, not failures
    codes = await store.apply_status(
        "narvik",
        [StatusReport(j, 1, JobState.CANCELLED) for j in (run_home, run_away)]
        + [StatusReport(sent, 1, JobState.FAILED, exit_code=143)],
    )
    assert codes == ["retry"] * 3
    for job_id in (run_home, run_away, sent, queued):
        job = await store.get_job(job_id)
        assert (job.state, job.attempt, job.preemptions) == (JobState.PENDING.value, 2, 1)
    [rec] = await store.site_records()
    assert rec.active_jobs == 0 and rec.used_gpus == {} and not rec.releasing_gpus

    # once more: nothing more to do, nothing recorded twice
    _, requeued, still = await store.withdraw("narvik", offer_id="", mode=REQUEUE)
    assert (requeued, still) == (0, 0)
    assert len(await store.site_log("narvik")) == 2


async def test_withdrawing_the_site_with_finish_leaves_running_jobs(store: JobStore) -> None:
    await store.register_site(site())
    await tenants(store, norco="NO")
    job = await placed(store, "norco", 8)
    await running(store, [job])
    queued = await placed(store, "norco", 1)
    status, requeued, still = await store.withdraw("narvik", offer_id="", mode=FINISH)
    assert (requeued, still) == (1, 1)  # the one not sent yet starts elsewhere
    assert status.state == types_pb2.SITE_STATE_DRAINING
    assert await state_of(store, job) == (JobState.RUNNING.value, 1)
    assert await state_of(store, queued) == (JobState.PENDING.value, 2)
    assert await store.pending_cancels("narvik") == []
    # UNSPECIFIED is FINISH; repeating it reports the job still running
    _, requeued, still = await store.withdraw(
        "narvik", offer_id="", mode=federation_pb2.WITHDRAW_MODE_UNSPECIFIED
    )
    assert (requeued, still) == (0, 1)
    assert await store.apply_status("narvik", [StatusReport(job, 1, JobState.SUCCEEDED)]) == ["ok"]


async def test_withdrawing_an_offer_stops_what_it_no_longer_covers(store: JobStore) -> None:
    base = types_pb2.SitePolicy(has_surplus_limit=True, surplus_gpus=4)
    await store.register_site(site(policy=base))
    await tenants(store, norco="NO", sweco="SE", dkco="DK")
    await store.put_offer(offer(("SE",), 8, offer_id="se"))
    await store.put_offer(offer(("DK",), 4, offer_id="dk"))
    assert await policy_fields(store) == (",DK,NO,SE,", "", "16")
    home = await placed(store, "norco", 16)
    se_first = await placed(store, "sweco", 4)
    se_later = await placed(store, "sweco", 4)
    dk = await placed(store, "dkco", 2)
    await running(store, [home, se_first, se_later, dk])
    se_queued = await placed(store, "sweco", 2)

    # DK no longer offered: its job goes; SE's 10 GPUs fit the 12 left
    _, requeued, still = await store.withdraw("narvik", offer_id="dk", mode=REQUEUE)
    assert (requeued, still) == (1, 0)
    assert await state_of(store, dk) == (JobState.PREEMPTED.value, 1)
    assert await policy_fields(store) == (",NO,SE,", "", "12")
    assert [o.id for o in await store.list_offers()] == ["se"]
    assert any("offer dk withdrawn" in m for _, _, m in await store.site_log("narvik"))

    # SE's offer goes with FINISH: the base 4 GPUs are left for non-home tenants; the one not
    # started yet is requeued, the most recently started is left to finish (counted)
    status, requeued, still = await store.withdraw("narvik", offer_id="se", mode=FINISH)
    assert (requeued, still) == (1, 1)
    assert status.state == types_pb2.SITE_STATE_ACTIVE
    assert await state_of(store, se_queued) == (JobState.PENDING.value, 2)
    assert await state_of(store, se_later) == (JobState.RUNNING.value, 1)
    assert await policy_fields(store) == ("", "", "4")  # no offers: the base policy

    with pytest.raises(InvalidSpecError):
        await store.withdraw("narvik", offer_id="se", mode=REQUEUE)
    await store.put_offer(offer(("SE",), 2, offer_id="se2"))
    # with REQUEUE the most recently started goes first, until the rest fits
    _, requeued, still = await store.withdraw("narvik", offer_id="se2", mode=REQUEUE)
    assert (requeued, still) == (1, 0)
    assert await state_of(store, se_later) == (JobState.PREEMPTED.value, 1)
    assert await state_of(store, se_first) == (JobState.RUNNING.value, 1)
    assert await state_of(store, home) == (JobState.RUNNING.value, 1)
    assert set(await store.pending_cancels("narvik")) == {(dk, 1), (se_later, 1)}


async def test_withdraw_checks_its_arguments(store: JobStore) -> None:
    with pytest.raises(SiteNotFoundError):
        await store.withdraw("nowhere", offer_id="", mode=REQUEUE)
    await store.register_site(site())
    with pytest.raises(InvalidSpecError):
        await store.withdraw("narvik", offer_id="nope", mode=REQUEUE)
    with pytest.raises(InvalidSpecError):
        await store.withdraw("narvik", offer_id="", mode=7)
    assert (await store.get_site("narvik")).state == types_pb2.SITE_STATE_ACTIVE


# ---------------------------------------------------------------- usage


async def test_usage_is_gpu_seconds_and_watt_seconds_of_running_time(store: JobStore) -> None:
    await store.register_site(site())
    await store.register_site(site("abisko"))
    await tenants(store, norco="NO", acme="NO")
    done = await placed(store, "norco", 8)
    await running(store, [done])
    await asyncio.sleep(0.3)
    assert await store.apply_status("narvik", [StatusReport(done, 1, JobState.SUCCEEDED)]) == ["ok"]
    finished = await store.get_job(done)
    ran = finished.finished_at.ToNanoseconds() / 1e9 - finished.started_at.ToNanoseconds() / 1e9
    assert ran >= 0.3

    still = await placed(store, "acme", 2)
    await running(store, [still])
    [usage] = await store.usage(["narvik"])
    assert usage.site_id == "narvik"
    assert [t.tenant for t in usage.tenants] == ["acme", "norco"]
    acme, norco = usage.tenants
    assert norco.gpu_hours == pytest.approx(8 * ran / 3600, rel=1e-6)
    assert norco.energy_kwh == pytest.approx(5600 * ran / 3.6e6, rel=1e-6)
    started = (await store.get_job(still)).started_at.ToNanoseconds() / 1e9
    so_far = usage.as_of.ToNanoseconds() / 1e9 - started
    assert acme.gpu_hours == pytest.approx(2 * so_far / 3600, rel=1e-3)
    assert acme.energy_kwh == pytest.approx(1400 * so_far / 3.6e6, rel=1e-3)
    assert usage.gpu_hours == pytest.approx(acme.gpu_hours + norco.gpu_hours)
    assert usage.energy_kwh == pytest.approx(acme.energy_kwh + norco.energy_kwh)

    # an attempt that is stopped and requeued counts once, up to when it ended
    await store.withdraw("narvik", offer_id="", mode=REQUEUE)
    await asyncio.sleep(0.05)
    assert await store.apply_status("narvik", [StatusReport(still, 1, JobState.CANCELLED)]) == [
        "retry"
    ]
    [after] = await store.usage(["narvik"])
    assert after.tenants[0].gpu_hours > acme.gpu_hours
    [again] = await store.usage(["narvik"])
    assert again.tenants[0].gpu_hours == after.tenants[0].gpu_hours  # ended: no longer grows

    # sites ordered by id; nothing used is zero
    both = await store.usage(["narvik", "abisko", "narvik"])
    assert [u.site_id for u in both] == ["abisko", "narvik"]
    assert (both[0].gpu_hours, list(both[0].tenants)) == (0.0, [])
    assert await store.usage([]) == []


# ---------------------------------------------------------------- single-use tokens


async def test_a_token_is_spent_once(store: JobStore) -> None:
    expires = time.time() + 600
    assert await store.consume_once("tok-1", expires_at=expires)
    assert not await store.consume_once("tok-1", expires_at=expires)
    assert await store.consume_once("tok-2", expires_at=expires)
    ttl = await store.client.ttl(store.keys.spent_token("tok-1"))
    assert 86_400 < ttl <= 86_400 + 602
    # an already expired token's mark still lasts a while
    assert await store.consume_once("tok-3", expires_at=time.time() - 10 * 86_400)
    assert await store.client.ttl(store.keys.spent_token("tok-3")) > 3000
