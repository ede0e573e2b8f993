"""Every fault of the harness, once, short and seeded, against one cluster of real processes.

One ``Cluster`` (network namespaces, or loopback with the proxies where they cannot be made;
Redis; the control plane as role processes; one ``sg-agent`` per site behind a WAN-delay proxy)
serves the whole module; each scenario leaves it healed and idle. Each test asserts the
checker's verdict (no acknowledged job lost, no duplicate beyond lease + kill grace, no attempt
twice, no run outside its jurisdictions), that every job ended as it should (a fault is never the
job's failure), that cancels took effect within lease + kill grace, and what its fault must
cause or must not cause. On a failure the message has the scenario's account and the tails of
the logs. ``SG_FAULTS_SEED`` changes the seed (default 1).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import Cluster
from .scenarios import FAULTS, ScenarioResult, run_scenario

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

SEED = int(os.environ.get("SG_FAULTS_SEED", "1"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("cluster"), seed=SEED) as c:
        yield c


async def scenario(cluster: Cluster, name: str, tmp_path: Path) -> ScenarioResult:
    seed = SEED * 100 + sorted(FAULTS).index(name)
    try:
        result = await run_scenario(cluster, name, seed=seed, work_dir=tmp_path)
    except Exception as exc:
        raise AssertionError(f"scenario {name} did not finish: {exc}\n{cluster.tails()}") from exc
    print(result.summary())
    return result


def verify(cluster: Cluster, result: ScenarioResult, **expectations: bool) -> None:
    """Fail with the account and the logs unless the common invariants and ``expectations``
    (name -> held) all hold."""
    t = cluster.timings
    latency = result.report.max_cancel_latency
    common = {
        "checker ok (lost, duplicated, same attempt twice, jurisdiction)": result.report.ok,
        "every job ended as planned (no fault became a job failure)": not (
            result.evaluation.wrong_outcomes
        ),
        "every fault fired": all(f.fired for f in result.faults),
        "no site declared LOST but by a fault that cut it off": not (
            result.evaluation.unexpected_losses
        ),
        f"cancel latency <= lease + grace ({t.overlap_bound:g}s)": latency is None
        or latency <= t.overlap_bound,
        "no unexpected workload errors": not result.workload_errors,
        "every submit acknowledged in the end": not result.gave_up,
    }
    failed = [name for name, held in {**common, **expectations}.items() if not held]
    if failed:
        pytest.fail(
            "failed: " + "; ".join(failed) + "\n" + result.summary() + "\n" + cluster.tails(),
            pytrace=False,
        )


def no_site_lost(result: ScenarioResult) -> bool:
    return not result.lost_sites


def isolated(cluster: Cluster, result: ScenarioResult, site: str) -> dict[str, bool]:
    """What a site cut off past its lease must show: detected LOST, its running work moved
    elsewhere and RUNNING again, its own runs stopped by the lease (fencing)."""
    ev = result.evaluation
    return {
        f"a sentinel was running at {site} when the fault struck": result.sentinels_at_site > 0,
        f"{site} declared LOST": bool(ev.detect_seconds),
        f"detected within lost_after + 2s ({cluster.timings.lost_after + 2:g}s)": bool(
            ev.detect_seconds
        )
        and max(ev.detect_seconds) <= cluster.timings.lost_after + 2.0,
        f"jobs moved off {site}": ev.moved[site] > 0,
        "moved jobs RUNNING again elsewhere": bool(ev.requeue_seconds),
        f"{site}'s runs fenced by lease + grace": not ev.fence_late,
    }


# -- agents -----------------------------------------------------------------------------------


async def test_agent_kill_restart_now(cluster: Cluster, tmp_path: Path) -> None:
    """kill -9 narvik's agent alone and start it again at once: its jobs run on, the new agent
    takes them back (or reports them gone) and nothing is lost, doubled or failed."""
    result = await scenario(cluster, "agent_kill_restart_now", tmp_path)
    verify(cluster, result, **{"no site declared LOST": no_site_lost(result)})


async def test_agent_kill_restart_after_lost(cluster: Cluster, tmp_path: Path) -> None:
    """kill -9 narvik's agent alone; restart it only once narvik is LOST. Its orphaned jobs
    must stop when its lease runs out, before their next attempts run elsewhere."""
    result = await scenario(cluster, "agent_kill_restart_after_lost", tmp_path)
    verify(cluster, result, **isolated(cluster, result, "narvik"))


async def test_agent_kill_with_jobs_restart_now(cluster: Cluster, tmp_path: Path) -> None:
    """kill -9 abilene's agent and its jobs, restart at once: the jobs run again, none fails."""
    result = await scenario(cluster, "agent_kill_with_jobs_restart_now", tmp_path)
    verify(cluster, result, **{"no site declared LOST": no_site_lost(result)})


async def test_agent_kill_with_jobs_restart_after_lost(cluster: Cluster, tmp_path: Path) -> None:
    result = await scenario(cluster, "agent_kill_with_jobs_restart_after_lost", tmp_path)
    verify(cluster, result, **isolated(cluster, result, "abilene"))


async def test_agent_freeze_past_lease(cluster: Cluster, tmp_path: Path) -> None:
    """SIGSTOP narvik's agent until narvik is LOST, then SIGCONT: its jobs must be stopped by
    the lease even though the agent itself cannot act."""
    result = await scenario(cluster, "agent_freeze_past_lease", tmp_path)
    verify(cluster, result, **isolated(cluster, result, "narvik"))


# -- Redis and the control plane ----------------------------------------------------------------


async def test_redis_kill_during_submit_storm(cluster: Cluster, tmp_path: Path) -> None:
    result = await scenario(cluster, "redis_kill_storm", tmp_path)
    verify(
        cluster,
        result,
        **{
            "the storm was acknowledged around the outage": result.report.acknowledged >= 60,
            "no site declared LOST": no_site_lost(result),
        },
    )


async def test_scheduler_crash_after_commit(cluster: Cluster, tmp_path: Path) -> None:
    result = await scenario(cluster, "scheduler_crash_after_commit", tmp_path)
    verify(cluster, result, **{"no site declared LOST": no_site_lost(result)})


async def test_dispatcher_crash_after_take(cluster: Cluster, tmp_path: Path) -> None:
    result = await scenario(cluster, "dispatcher_crash_after_take", tmp_path)
    verify(cluster, result, **{"no site declared LOST": no_site_lost(result)})


async def test_dispatcher_crash_after_send(cluster: Cluster, tmp_path: Path) -> None:
    result = await scenario(cluster, "dispatcher_crash_after_send", tmp_path)
    verify(cluster, result, **{"no site declared LOST": no_site_lost(result)})


async def test_dispatcher_crash_after_cancel_sent(cluster: Cluster, tmp_path: Path) -> None:
    result = await scenario(cluster, "dispatcher_crash_after_cancel_sent", tmp_path)
    verify(
        cluster,
        result,
        **{
            "some cancels were measured": bool(result.report.cancel_latencies),
            "no site declared LOST": no_site_lost(result),
        },
    )


async def test_control_plane_kill(cluster: Cluster, tmp_path: Path) -> None:
    """kill -9 the API server, the scheduler and both dispatchers at once, mid-run."""
    result = await scenario(cluster, "control_plane_kill", tmp_path)
    verify(cluster, result, **{"no site declared LOST": no_site_lost(result)})


# -- partitions ---------------------------------------------------------------------------------


async def test_partition_short(cluster: Cluster, tmp_path: Path) -> None:
    """abu-dhabi cut off (its host's link, or its proxy on loopback) well within the lease:
    nothing is stopped, nothing moves, no attempt > 1 of a job that does not fail."""
    result = await scenario(cluster, "partition_short", tmp_path)
    ev = result.evaluation
    retried = [
        r
        for r in ev.runs
        if r.site == "abu-dhabi"
        and r.attempt > 1
        and r.job in result.evaluation.final
        and not _fails(result, r.job)
    ]
    verify(
        cluster,
        result,
        **{
            "no site declared LOST": no_site_lost(result),
            "nothing moved off abu-dhabi": ev.moved["abu-dhabi"] == 0,
            "nothing fenced at abu-dhabi": ev.fenced["abu-dhabi"] == 0,
            "no attempt > 1 at abu-dhabi": not retried,
        },
    )


async def test_partition_long(cluster: Cluster, tmp_path: Path) -> None:
    """narvik cut off (proxy, both ways) until it is LOST and its work moved; then healed."""
    result = await scenario(cluster, "partition_long", tmp_path)
    verify(cluster, result, **isolated(cluster, result, "narvik"))


async def test_partition_long_one_way(cluster: Cluster, tmp_path: Path) -> None:
    """Only abilene's answers are dropped (the control plane's messages still arrive)."""
    result = await scenario(cluster, "partition_long_one_way", tmp_path)
    verify(cluster, result, **isolated(cluster, result, "abilene"))


async def test_link_flap(cluster: Cluster, tmp_path: Path) -> None:
    """abu-dhabi's stream reset six times, each time half a second after it came back: each
    outage lasts only as long as the dispatcher takes to reconnect, so the site must be kept."""
    result = await scenario(cluster, "link_flap", tmp_path)
    ev = result.evaluation
    verify(
        cluster,
        result,
        **{
            "no site declared LOST": no_site_lost(result),
            "nothing moved off abu-dhabi": ev.moved["abu-dhabi"] == 0,
            "nothing fenced at abu-dhabi": ev.fenced["abu-dhabi"] == 0,
        },
    )


def _fails(result: ScenarioResult, job_id: str) -> bool:
    job = result.evaluation.final[job_id]
    return job.spec.max_attempts > 1
