"""The end-to-end benchmark runs its quick version against real processes (redis-server, the
control plane's roles, a simulated fleet) and reports in the documented shape; every job it
submitted ended SUCCEEDED exactly once, which is checked here again from Redis itself, and a
job that did not is an error, not a figure. Never how fast."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import bench.__main__ as suite
from bench._cluster import BACKLOG_TENANT, PREFIX, Cluster, E2EError, EventTail, top_functions
from bench.e2e import (
    QUICK,
    STAGE_NAMES,
    PhaseResult,
    Report,
    _Context,
    main,
    measure,
    stages,
    sustained,
    tracing_cost,
)
from orchestrator.sdk import AsyncClient
from orchestrator.states import JobState

SITES = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("e2e"), sites=SITES, dispatchers=2) as started:
        yield started


@pytest.fixture(scope="module")
def report(cluster: Cluster) -> Report:
    return asyncio.run(measure(cluster, sizes=QUICK, runs=1, warm_up=False))


def _jobs(cluster: Cluster) -> dict[str, dict[bytes, bytes]]:
    """Every job record in the cluster's Redis, by id, with how many SUCCEEDED events its
    history holds (the record's field h: entries end with \\x1e, the state comes first)."""
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        keys = list(client.scan_iter(match=f"{PREFIX}job:*", count=10_000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, "state", "attempt", "tenant", "h")
        rows = pipe.execute()
    finally:
        client.close()
    done = str(JobState.SUCCEEDED.value).encode()
    out = {}
    for key, (state, attempt, tenant, history) in zip(keys, rows, strict=True):
        entries = (history or b"").split(b"\x1e")[:-1]
        succeeded = sum(1 for e in entries if e.split(b"\x1f", 1)[0] == done)
        out[key.decode().removeprefix(f"{PREFIX}job:")] = {
            b"state": state,
            b"attempt": attempt,
            b"tenant": tenant,
            b"succeeded": str(succeeded).encode(),
        }
    return out


def test_the_quick_run_has_the_documented_shape(report: Report) -> None:
    names = [r.measurement for r in report.rows]
    assert names[0].startswith("batch submit (")
    assert names[1].startswith("one RPC per job (")
    assert names[2] == "paced at half the batch rate"
    assert [n for n in names if n.endswith(" queued")] == [
        f"batch submit, {d} queued" for d in QUICK.depths
    ]
    assert names[-3].startswith("floor (best batch: ")
    assert names[-2].startswith("bare unary call, own process")
    assert names[-1].startswith("bare unary call, this process")
    for row in report.rows:
        assert row.jobs > 0 and len(row.rate_runs) == 1 and row.jobs_per_second > 0
    for row in report.rows[: 3 + len(QUICK.depths)]:
        assert row.p50_ms is not None and row.p99_ms is not None and row.max_ms is not None
        assert 0 <= row.p50_ms <= row.p99_ms <= row.max_ms
        assert {
            "bench",
            "api",
            "scheduler",
            "dispatcher-0",
            "dispatcher-1",
            "fleet",
            "redis",
        } <= set(row.cpu_us_per_job)
        # every stage timed; a job's stage takes no longer than its whole submit -> RUNNING
        assert list(row.stages_ms) == list(STAGE_NAMES)
        for p50, p99 in row.stages_ms.values():
            assert 0 <= p50 <= p99 <= row.max_ms
    assert [q.queued for q in report.queue_memory] == list(QUICK.depths)
    for q in report.queue_memory:
        assert q.pending >= q.queued
        assert list(q.job_keys) == ["{p}job:{id}", "{p}job:{id}:ev", "{p}job:{id}:spec"]
        used = q.job_keys["{p}job:{id}"]
        assert used is not None and used > 0  # every job has its record; the others may be absent
        assert all(b is None or b > 0 for b in q.job_keys.values())
    assert len(report.goals) == 6 and len(report.ratios) == 5
    assert report.options == {"sites": SITES, "dispatchers": 2, "secure": False, "sim_seconds": 0.0}
    text = report.text()
    assert text.startswith("end-to-end benchmark  ")
    assert "latency by stage, p50 / p99 ms" in text
    goal_lines = [line for line in text.splitlines() if line.startswith(("  PASS", "  FAIL"))]
    assert len(goal_lines) == 6
    doc = json.loads(report.to_json())
    assert doc["verified_jobs"] == report.verified_jobs
    assert {g["name"] for g in doc["goals"]} == {g.name for g in report.goals}


def test_the_suite_lists_the_paced_p99_and_its_stages(report: Report) -> None:
    names = [f.name for f in suite._e2e_figures(report)]
    at = names.index("  p99 submit -> RUNNING")
    assert names[at - 1] == "paced at half the batch rate"
    assert names[at + 1 : at + 5] == [f"    p99 {stage}" for stage in STAGE_NAMES]


def test_every_job_ended_succeeded_exactly_once(cluster: Cluster, report: Report) -> None:
    measured = {
        job_id: fields
        for job_id, fields in _jobs(cluster).items()
        if fields[b"tenant"] != BACKLOG_TENANT.encode()
    }
    submitted = sum(r.jobs for r in report.rows[: 3 + len(QUICK.depths)])
    assert len(measured) == submitted == report.verified_jobs
    outcomes = Counter((f[b"state"], f[b"attempt"], f[b"succeeded"]) for f in measured.values())
    assert outcomes == {(b"5", b"1", b"1"): submitted}
    backlog = Counter(
        f[b"state"] for f in _jobs(cluster).values() if f[b"tenant"] == BACKLOG_TENANT.encode()
    )
    # the queued jobs are still waiting, and the one that holds their tenant's quota runs
    assert backlog == {b"1": max(QUICK.depths), b"4": 1}


def test_a_job_that_succeeded_twice_fails_the_run(cluster: Cluster) -> None:
    async def check() -> None:
        client = await AsyncClient.connect(cluster.api_address)
        ctx = _Context(cluster, client, 0.0)
        try:
            job_id = next(
                j for j, f in _jobs(cluster).items() if f[b"tenant"] != BACKLOG_TENANT.encode()
            )
            event = (job_id.encode(), b"1", b"1.0")
            with pytest.raises(E2EError, match="SUCCEEDED more than once"):
                await ctx._check("twice", {job_id: 0.0}, [event], [event, event])
            with pytest.raises(E2EError, match="never SUCCEEDED"):
                await ctx._check("lost", {job_id: 0.0}, [], [])
            await ctx._check("once", {job_id: 0.0}, [event], [event])
        finally:
            await client.close()
            await ctx.store.close()

    asyncio.run(check())


def test_an_events_reader_that_falls_behind_the_cap_is_an_error(cluster: Cluster) -> None:
    key = f"{PREFIX}test-tail"
    client = redis.Redis.from_url(cluster.redis_url)
    client.xadd(key, {"job": "j-0", "state": "4", "attempt": "1", "t": "1.0"})

    async def lag() -> None:
        async with EventTail(cluster.redis_url, key) as tail:
            await asyncio.sleep(0.05)
            # 100 entries in one step, the stream capped at 10: the reader's cursor is gone
            client.eval(
                "for i = 1, 100 do redis.call('XADD', KEYS[1], 'MAXLEN', 10, '*', "
                "'job', 'j-' .. i, 'state', '5', 'attempt', '1', 't', '2.0') end",
                1,
                key,
            )
            with pytest.raises(E2EError, match="fell behind"):
                await tail.wait_succeeded(100, stall=10)

    try:
        asyncio.run(lag())
    finally:
        client.delete(key)
        client.close()


def test_main_prints_goals_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "e2e.json"
    assert main(["--quick", "--sites", "2", "--dispatchers", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "goals" in printed and f"wrote {out}" in printed
    doc = json.loads(out.read_text())
    assert doc["options"]["sites"] == 2 and doc["verified_jobs"] > 0
    assert {"machine", "runs", "sizes", "rows", "ratios", "goals", "queue_memory"} <= set(doc)


def test_summaries_of_rates_and_profiles() -> None:
    assert sustained([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]) == pytest.approx(1.0)
    collapsed = (
        "<module> (a.py:1);run (loop.py:10);place (s.py:5) 30\n"
        "<module> (a.py:1);run (loop.py:12);place (s.py:7) 10\n"
        "<module> (a.py:1);run (loop.py:10) 60\n"
    )
    total, top = top_functions(collapsed, 2)
    assert total == 100
    assert [(f.function, f.samples) for f in top] == [("run (loop.py)", 60), ("place (s.py)", 40)]
    assert top[0].share == pytest.approx(0.6)


def test_each_stage_runs_from_the_state_before_it() -> None:
    submitted = {"a": 10.0, "b": 10.0, "c": 10.0}
    pending = {"a": 10.001, "b": 10.002, "c": 10.004}
    scheduled = {"a": 10.011, "b": 10.012}  # c not placed: no later stage for it
    dispatched = {"a": 10.013, "b": 10.022}
    running = {"a": 10.023, "b": 10.023, "x": 9.0}  # x: not submitted by this measurement
    out = stages(submitted, [pending, scheduled, dispatched, running])
    assert list(out) == list(STAGE_NAMES)
    assert out["submit -> PENDING"] == pytest.approx([2.0, 4.0])
    assert out["PENDING -> SCHEDULED"] == pytest.approx([10.0, 10.0])
    assert out["SCHEDULED -> DISPATCHED"] == pytest.approx([2.0, 10.0])
    assert out["DISPATCHED -> RUNNING"] == pytest.approx([1.0, 10.0])
    # a stage no job reached is left out, and so is every stage after it
    assert list(stages(submitted, [pending, {}, {}, {}])) == ["submit -> PENDING"]


def test_the_tracing_cost_is_what_tracing_adds_to_the_cpu_per_job() -> None:
    def run(rate: float, **cpu: float) -> PhaseResult:
        return PhaseResult("batch", 1000, 1.0, 1000.0, 1.0, rate, 1.0, 2.0, 3.0, 0, cpu)

    off = [
        run(5000, api=50, fleet=50, redis=140, bench=15),
        run(4000, api=50, fleet=50, redis=150, bench=15),  # a slow cluster: redis costs more
    ]
    traced = [
        run(4000, api=60, fleet=70, redis=170, bench=15),  # +30 of 300 without the client
        run(4500, api=55, fleet=65, redis=140, bench=15),  # +20 of 260
    ]
    # redis-server and the client are left out of what tracing adds; the rates play no part
    assert tracing_cost(off, traced) == pytest.approx((30 / 300 + 20 / 260) / 2 * 100)
    assert tracing_cost(off, off) == 0
    # the control plane alone: the fleet counts on neither side (+10 of 230, +5 of 195)
    assert tracing_cost(off, traced, without=("fleet",)) == pytest.approx(
        (10 / 230 + 5 / 195) / 2 * 100
    )
