"""The placement benchmark runs and reports in the documented shape (never how fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.placement import Goal, Report, Row, main, quick


def test_quick_run_measures_every_pair_and_states_the_goals() -> None:
    report = quick()
    assert isinstance(report, Report)
    assert [(r.sites, r.pending) for r in report.rows] == [
        (3, 50),
        (3, 100),
        (3, 400),
        (20, 50),
        (20, 100),
        (20, 400),
    ]
    for row in report.rows:
        assert isinstance(row, Row)
        assert row.window_jobs == min(row.pending, report.window)
        assert row.placed + row.waiting + row.unschedulable == row.window_jobs
        assert row.cycle_seconds > 0 and row.cpu_seconds > 0
        assert row.decisions_per_second > 0 and row.us_per_decision > 0
        assert row.placed > 0
        assert len(row.cpu_runs) == report.runs
    names = [g.name for g in report.goals]
    assert names == [
        "cost per decision, 20 vs 3 sites, 50 pending",
        "cost per decision, 20 vs 3 sites, 100 pending",
        "cost per decision, 20 vs 3 sites, 400 pending",
        "cycle time, 400 vs 100 pending, 3 sites",
        "cycle time, 400 vs 100 pending, 20 sites",
    ]
    assert all(isinstance(g, Goal) and g.value > 0 for g in report.goals)
    assert set(report.machine) >= {"cores", "python", "date"}


def test_main_prints_a_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results" / "placement.json"
    assert main(["--quick", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "decisions/s" in printed and "cores" in printed and str(out) in printed
    assert any(line.startswith(("  PASS", "  FAIL")) for line in printed.splitlines())
    doc = json.loads(out.read_text())
    assert set(doc) == {"machine", "window", "runs", "rows", "goals"}
    assert set(doc["rows"][0]) == {
        "sites",
        "pending",
        "window_jobs",
        "cycle_seconds",
        "cpu_seconds",
        "cpu_runs",
        "decisions_per_second",
        "us_per_decision",
        "placed",
        "waiting",
        "unschedulable",
        "preemptions",
    }
    assert set(doc["goals"][0]) == {"name", "value", "target", "limit", "unit", "passed"}
