"""The idle-sites benchmark runs real dispatcher and scheduler processes, a real simulated fleet
and a real redis-server, and reports in the documented shape: every figure measured, every site
connected, nothing left behind in Redis (never how fast)."""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import redis

from bench.idle_sites import (
    QUICK,
    Goal,
    ProcessRow,
    Report,
    default_json_path,
    main,
    quick,
)
from orchestrator.store import LocalRedis


def bench_keys(url: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return list(client.scan_iter(match="bench-idle-*"))
    finally:
        client.close()


def test_quick_run_measures_every_process(redis_server: LocalRedis) -> None:
    report = quick(redis_server.url)

    assert isinstance(report, Report)
    assert report.runs == 2
    assert report.sizes == asdict(QUICK)
    assert set(report.machine) >= {"cores", "platform", "python", "date", "grpcio"}
    assert report.connect_seconds > 0

    assert [(r.name, r.control_plane) for r in report.processes] == [
        ("dispatcher", True),
        ("scheduler", True),
        ("fleet", False),
        ("redis", True),
    ]
    for row in report.processes:
        assert isinstance(row, ProcessRow)
        assert row.cpu_empty_percent >= 0 and row.cpu_percent >= 0
        assert len(row.cpu_runs) == report.runs
        assert row.rss_empty_mb > 0 and row.rss_mb > 0
    # ten connected sites beating every 0.05 s keep the dispatcher and the fleet busy
    by = {r.name: r for r in report.processes}
    assert by["dispatcher"].cpu_percent > 0 and by["fleet"].cpu_percent > 0

    assert [g.name for g in report.goals] == [
        "control-plane CPU, idle sites connected",
        "control-plane memory per site",
    ]
    for goal in report.goals:
        assert isinstance(goal, Goal)
        assert goal.passed == (goal.value <= goal.limit)
    assert report.goals[0].limit == pytest.approx(5.0 * QUICK.sites / 1000)
    assert report.goals[1].limit == 100.0

    assert bench_keys(redis_server.url) == []  # the run deleted what it wrote


def test_main_prints_the_table_and_writes_json(
    redis_server: LocalRedis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results" / "idle.json"
    assert main(["--quick", "--json", str(out), "--redis-url", redis_server.url]) == 0
    printed = capsys.readouterr().out
    for text in ("cores", "cpu % connected", "KiB/site", "dispatcher", "fleet", "redis", "goals",
                 str(out)):  # fmt: skip
        assert text in printed
    doc = json.loads(out.read_text())
    assert set(doc) == {
        "machine",
        "runs",
        "sizes",
        "heartbeat_seconds",
        "connect_seconds",
        "processes",
        "goals",
    }
    assert set(doc["processes"][0]) == {
        "name",
        "control_plane",
        "cpu_empty_percent",
        "cpu_percent",
        "cpu_runs",
        "rss_empty_mb",
        "rss_mb",
        "kb_per_site",
    }
    assert set(doc["goals"][0]) == {"name", "value", "target", "limit", "unit", "passed"}


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--sites", "0"])
    assert info.value.code == 2
    assert "must be positive" in capsys.readouterr().err


def test_results_go_to_a_timestamped_file_under_bench_results_by_default() -> None:
    when = datetime.datetime(2025, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)
    assert default_json_path(when) == Path("bench/results/idle-sites-20250304T050607Z.json")
