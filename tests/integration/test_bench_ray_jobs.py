"""The Ray Jobs peer benchmark starts a Ray head of its own (not the session's shared Ray), runs
a few no-op jobs and holds a few RUNNING, reports coherent figures and leaves no process of that
head behind (never how fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray

from bench.ray_jobs import (
    FULL,
    QUICK,
    Memory,
    RayJobsResult,
    Report,
    RoundRow,
    main,
    measure_ray_jobs,
    processes_using,
)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


def _alive(pid: int, start: int) -> bool:
    """The process ``pid`` that started at ``start`` (clock ticks) still runs."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return int(data[data.rfind(b")") + 2 :].split()[19]) == start


def test_a_tiny_run_is_coherent_and_leaves_nothing_behind(tmp_path: Path) -> None:
    result = measure_ray_jobs(jobs=3, inflight=2, temp_dir=tmp_path, timeout=150)

    # every job ended SUCCEEDED (measure_ray_jobs raises otherwise)
    assert isinstance(result, RayJobsResult)
    assert result.jobs == 3
    assert result.submit_per_s > 0 and result.jobs_per_s > 0
    assert 0 < result.latency_p50_ms <= result.latency_p99_ms
    assert result.inflight_jobs == 2
    assert result.baseline_rss_mb > 0
    assert result.memory_per_inflight_mb > 0
    assert result.ray_version == ray.__version__

    head = json.loads((tmp_path / "ray-head.json").read_text())
    assert head["survivors"] == []
    assert len(head["processes"]) > 5  # GCS, raylet, dashboard, agents, workers, drivers
    assert not [p for p in head["processes"] if _alive(*p)]
    assert processes_using(Path(head["ray_dir"])) == []
    assert processes_using(tmp_path) == []
    assert (tmp_path / "ray").is_dir()  # the head's logs are kept in temp_dir
    assert "Ray runtime started" in (tmp_path / "ray-start.log").read_text()


def test_the_report_prints_every_figure_and_the_targets_for_ours() -> None:
    result = RayJobsResult(
        jobs=4, submit_per_s=30.0, jobs_per_s=0.5, latency_p50_ms=4000.0,
        latency_p99_ms=6000.0, inflight_jobs=2, memory_per_inflight_mb=100.0,
        baseline_rss_mb=1800.0, ray_version="2.x",
    )  # fmt: skip
    memory = Memory(
        requested=2, running=2, seconds_to_running=3.0, baseline_rss_mb=1800.0, rss_mb=2000.0,
        baseline_pss_mb=800.0, pss_mb=920.0, per_job_rss_mb=100.0, per_job_pss_mb=60.0,
        processes_before=22, processes=32, kinds=[],
    )  # fmt: skip
    report = Report(
        machine={"date": "d", "cores": "2", "implementation": "CPython", "python": "3",
                 "platform": "p", "ray": "2.x"},
        sizes={"jobs": 4, "inflight": 2, "concurrency": 4, "num_cpus": 2},
        runs=1, result=result,
        rounds=[RoundRow(1, 4, 30.0, 0.5, 4000.0, 6000.0, 3, 8.0)],
        alone_latency_ms=[1500.0], memory=memory, startup_seconds=5.0, warmup_seconds=3.0,
        poll_interval_ms=100.0, list_jobs_ms=30.0,
    )  # fmt: skip
    text = report.text()
    pieces = ["Ray Jobs peer", "jobs/s", "p99 ms", "3/4", "1,500 ms", "2 of 2", "RSS MiB/job"]
    pieces += [">= 25.00 jobs/s", "<= 2,048 KiB per in-flight job", "85 MB"]
    for piece in pieces:
        assert piece in text
    doc = json.loads(report.to_json())
    assert doc["result"]["memory_per_inflight_mb"] == 100.0
    assert set(doc["result"]) == set(RayJobsResult.__dataclass_fields__)


def test_sizes_and_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert QUICK.jobs < FULL.jobs and QUICK.inflight < FULL.inflight
    with pytest.raises(SystemExit) as info:
        main(["--jobs", "0"])
    assert info.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err
