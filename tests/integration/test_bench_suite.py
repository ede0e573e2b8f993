"""The benchmark suite (``python -m bench``) runs its tiny version against real processes and
reports coherently: one table, every goal of the parts it ran with PASS or FAIL, the JSON with
the figures and each part's own report; with tracing on, the spans were really recorded, and
with it off, none. The peer part's arithmetic is checked against a stand-in for Ray Jobs (the
real one has its own test, ``test_bench_ray_jobs``). Never how fast."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import bench.__main__ as suite
from bench import e2e
from bench.e2e import QUICK, TRACING_MODES, E2EError, span_reports

REPO = Path(__file__).resolve().parents[2]
GOAL_PREFIXES = ("  PASS  ", "  FAIL  ")


def goal_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(GOAL_PREFIXES)]


def test_the_quick_tracing_part_prints_one_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "tracing", "--sites", "2",
         "--dispatchers", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=110, cwd=REPO, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "== tracing: started" in done.stderr and "== tracing: done" in done.stderr
    text = done.stdout
    assert text.startswith("benchmark suite  ")
    assert "part     figure" in text and f"wrote {out}" in text
    lines = goal_lines(text)
    assert [line.split(":")[0][8:] for line in lines] == [
        "tracing at 100% sampling",
        "tracing at 1% sampling",
    ]
    assert f"{sum(line.startswith('  PASS') for line in lines)} of 2 goals met" in text

    doc = json.loads(out.read_text())
    assert doc["parts"] == ["tracing"] and doc["failures"] == {} and doc["quick"] is True
    assert {g["name"] for g in doc["goals"]} == {
        "tracing at 100% sampling: throughput lost",
        "tracing at 1% sampling: throughput lost",
    }
    for goal in doc["goals"]:
        assert goal["passed"] == (goal["value"] <= goal["limit"]) and goal["unit"] == "%"
    names = {f["name"] for f in doc["figures"]}
    assert {"batch submit, tracing off", "batch submit, tracing 100%",
            "batch submit, tracing 1%"} <= names  # fmt: skip
    assert all(f["value"] > 0 for f in doc["figures"] if f["unit"] == "jobs/s")

    tracing = doc["details"]["tracing"]
    assert [c["mode"] for c in tracing["clusters"]] == [m.name for m in TRACING_MODES]
    off, full, one = tracing["clusters"]
    processes = {"api", "scheduler", "dispatcher-0", "fleet"}
    assert off["spans"] == {} and off["samplers"] == {}
    # at 100% every process recorded spans (the suite checked at least one per job, too)
    assert set(full["spans"]) == processes and all(n > 0 for n in full["spans"].values())
    assert (
        sum(full["spans"].values()) >= full["jobs"] == QUICK.batch_jobs + QUICK.warm_up().batch_jobs
    )
    assert all("root:AlwaysOnSampler" in s for s in full["samplers"].values())
    # at 1% every process installed the ratio sampler (few traces, if any, were sampled)
    assert set(one["samplers"]) == processes
    assert all("TraceIdRatioBased{0.01}" in s for s in one["samplers"].values())
    assert tracing["verified_jobs"] == 3 * full["jobs"]


def report(directory: Path, pid: int, spans: int, sampler: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"svc-{pid}.json").write_text(
        json.dumps({"service": "svc", "pid": pid, "sampler": sampler, "spans": spans})
    )


def test_a_mode_that_did_not_trace_as_asked_fails_the_measurement(tmp_path: Path) -> None:
    off, full, one = TRACING_MODES
    pids = {"api": 10, "fleet": 11, "redis": 12}
    on = "ParentBased{root:AlwaysOnSampler,...}"
    report(tmp_path / "a", 10, 40, on)
    report(tmp_path / "a", 11, 70, on)
    spans, samplers = span_reports(full, tmp_path / "a", pids, jobs=100)
    assert spans == {"api": 40, "fleet": 70} and set(samplers) == {"api", "fleet"}
    with pytest.raises(E2EError, match="110 spans for 200 jobs"):
        span_reports(full, tmp_path / "a", pids, jobs=200)
    with pytest.raises(E2EError, match="not the sampler asked for"):
        span_reports(one, tmp_path / "a", pids, jobs=100)
    with pytest.raises(E2EError, match="processes recorded spans"):
        span_reports(off, tmp_path / "a", pids, jobs=100)
    report(tmp_path / "b", 10, 400, on)  # the fleet wrote nothing: it did not trace
    with pytest.raises(E2EError, match="no span report from fleet"):
        span_reports(full, tmp_path / "b", pids, jobs=100)
    assert span_reports(off, tmp_path / "none", pids, jobs=100) == ({}, {})


def test_the_peer_part_measures_ours_beside_the_peer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Our batch submit on a fresh cluster is the tracing part's measurement (tested above);
    # here a stand-in gives its rate, and the control plane's memory is measured for real.
    batch = SimpleNamespace(result=SimpleNamespace(jobs_per_second=5000.0))
    monkeypatch.setattr(e2e, "batch_on_fresh_cluster", lambda *a, **k: batch)
    asked: list[dict[str, Any]] = []

    def ray_jobs(**kwargs: Any) -> SimpleNamespace:
        asked.append(kwargs)
        return SimpleNamespace(
            jobs=kwargs["jobs"], submit_per_s=40.0, jobs_per_s=2.0, latency_p50_ms=900.0,
            latency_p99_ms=2000.0, inflight_jobs=kwargs["inflight"],
            memory_per_inflight_mb=80.0, baseline_rss_mb=900.0, ray_version="stand-in",
        )  # fmt: skip

    said: list[str] = []
    peer = suite.measure_peer(
        tmp_path,
        sizes=QUICK,
        runs=1,
        inflight_jobs=60,
        ray_rate_jobs=7,
        ray_inflight=3,
        sites=2,
        dispatchers=1,
        measure_ray_jobs=ray_jobs,
        say=said.append,
    )
    assert asked == [{"jobs": 7, "inflight": 3, "temp_dir": tmp_path / "peer-1" / "ray"}]
    (round_,) = peer.rounds
    assert round_.ours_jobs_per_s == 5000.0 and round_.ours_inflight_jobs == 60
    assert math.isfinite(round_.ours_mb_per_inflight_job)  # RSS: too few jobs for a sign
    assert set(round_.ours_rss_mb) == {"api", "scheduler", "dispatcher-0", "redis"}
    assert round_.theirs["ray_version"] == "stand-in"
    assert round_.rate_ratio == pytest.approx(2500.0)
    assert round_.memory_ratio == pytest.approx(round_.ours_mb_per_inflight_job / 80.0)
    assert [g.name for g in peer.goals] == [
        "batch submit / Ray Jobs",
        "memory per job in flight / Ray Jobs'",
    ]
    assert peer.goals[0].limit == 50 and peer.goals[1].limit == pytest.approx(1 / 50)
    assert len(said) == 3
    names = [f.name for f in suite._peer_figures(peer)]
    assert "Ray Jobs: jobs to SUCCEEDED" in names and "ours: batch submit (fresh cluster)" in names


def test_a_part_that_fails_is_reported_and_its_goals_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(part: str, args: argparse.Namespace, base: Path) -> Any:
        raise RuntimeError(f"{part} broke\nmore detail")

    monkeypatch.setattr(suite, "_run_part", broken)
    args = argparse.Namespace(quick=True, runs=1, big=False, sites=2, dispatchers=1)
    result = suite.run_suite(args, ["ray", "idle"], tmp_path)
    assert result.failures == {"ray": "RuntimeError: ray broke", "idle": "RuntimeError: idle broke"}
    assert [g.name for g in result.goals] == [*suite._NOT_MEASURED["ray"],
                                              *suite._NOT_MEASURED["idle"]]  # fmt: skip
    assert not any(g.passed for g in result.goals) and all(
        math.isnan(g.value) for g in result.goals
    )

    def strict(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    # the JSON is strict: what was not measured is null, not NaN
    doc = json.loads(result.to_json(), parse_constant=strict)
    goals = [(g["value"], g["limit"], g["passed"]) for g in doc["goals"]]
    assert goals == [(None, None, False)] * 4
    text = result.text()
    assert len(goal_lines(text)) == 4 and "FAILED ray: RuntimeError: ray broke" in text
    assert "0 of 4 goals met" in text


def test_unknown_parts_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        suite.main(["--only", "e2e,nope"])
    assert info.value.code == 2
    assert "--only takes parts among e2e, tracing, ray, idle" in capsys.readouterr().err


def test_every_part_has_the_goals_it_would_report() -> None:
    assert set(suite._NOT_MEASURED) == set(suite.PARTS)
    assert suite._NOT_MEASURED["tracing"] == [
        f"tracing at {m.name} sampling: throughput lost" for m in e2e.TRACING_MODES[1:]
    ]
