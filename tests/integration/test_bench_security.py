"""The security benchmark runs against a real redis-server and reports in the documented shape:
every figure measured and positive, every configuration answering as configured (never how
fast)."""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import redis

from bench.security import (
    ANSWERED,
    QUICK,
    ApiRow,
    Ratio,
    Report,
    TokenRow,
    default_json_path,
    main,
    quick,
)
from orchestrator.store import LocalRedis


def bench_keys(url: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return list(client.scan_iter(match="bench-security-*"))
    finally:
        client.close()


def test_quick_run_measures_every_figure_of_every_configuration(
    redis_server: LocalRedis,
) -> None:
    report = quick(redis_server.url)

    assert isinstance(report, Report)
    assert report.runs == 2
    assert report.sizes == asdict(QUICK)
    assert set(report.machine) >= {"cores", "platform", "python", "date", "grpcio"}

    assert [t.operation for t in report.tokens] == ["issue", "verify, cold", "verify, cached"]
    for t in report.tokens:
        assert isinstance(t, TokenRow)
        assert t.calls > 0 and t.us_per_call > 0
        assert len(t.us_runs) == report.runs and all(us > 0 for us in t.us_runs)

    assert [(r.name, r.tls, r.auth) for r in report.api] == [
        ("plaintext", False, False),
        ("tls", True, False),
        ("tls+auth", True, True),
    ]
    for row in report.api:
        assert isinstance(row, ApiRow)
        assert row.get_per_second > 0 and row.concurrent_per_second > 0 and row.connect_ms > 0
        assert 0 < row.get_p50_ms <= row.get_p99_ms
        for runs in (row.get_runs, row.concurrent_runs, row.connect_runs):
            assert len(runs) == report.runs and all(x > 0 for x in runs)
        if row.name == "tls":
            assert row.submit_per_second is None and row.submit_runs == []
        else:
            assert row.submit_per_second is not None and row.submit_per_second > 0
            assert len(row.submit_runs) == report.runs
        # every timed answer (warm-up round included) named the right job and tenant
        submits = row.submit_per_second is not None
        assert row.answers_checked == sum(
            s.sequential_calls + s.batches * s.concurrency + (s.submit_calls if submits else 0)
            for s in (QUICK.warm_up(), QUICK, QUICK)
        )

    by = {r.name: r for r in report.api}
    # auth off answers a call without a token; auth on refuses it
    assert by["plaintext"].without_token == ANSWERED
    assert by["tls"].without_token == ANSWERED
    assert by["tls+auth"].without_token == "UnauthenticatedError"
    # a TLS server does not talk to a plaintext client
    assert by["plaintext"].plaintext_client == ANSWERED
    assert by["tls"].plaintext_client == "ServiceUnavailableError"
    assert by["tls+auth"].plaintext_client == "ServiceUnavailableError"

    assert [r.name for r in report.ratios] == [
        "GetJob sequential calls/s, tls / plaintext",
        "GetJob sequential calls/s, tls+auth / plaintext",
        "GetJob concurrent calls/s, tls / plaintext",
        "GetJob concurrent calls/s, tls+auth / plaintext",
        "SubmitJob calls/s, tls+auth / plaintext",
        "connect time, tls / plaintext",
        "connect time, tls+auth / plaintext",
        "verify time, cold / cached",
    ]
    assert all(isinstance(r, Ratio) and r.value > 0 for r in report.ratios)

    assert bench_keys(redis_server.url) == []  # the run deleted what it wrote


def test_main_prints_the_tables_and_writes_json(
    redis_server: LocalRedis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results" / "security.json"
    assert main(["--quick", "--json", str(out), "--redis-url", redis_server.url]) == 0
    printed = capsys.readouterr().out
    for text in ("cores", "us/call", "GetJob/s", "p99 ms", "SubmitJob/s", "ratios", str(out)):
        assert text in printed
    for name in ("plaintext", "tls", "tls+auth", "verify, cold", "verify, cached", "issue"):
        assert name in printed
    doc = json.loads(out.read_text())
    assert set(doc) == {"machine", "runs", "sizes", "tokens", "api", "ratios"}
    assert set(doc["tokens"][0]) == {"operation", "calls", "us_per_call", "us_runs"}
    assert set(doc["api"][0]) == {
        "name",
        "tls",
        "auth",
        "get_per_second",
        "get_runs",
        "get_p50_ms",
        "get_p99_ms",
        "concurrent_per_second",
        "concurrent_runs",
        "submit_per_second",
        "submit_runs",
        "connect_ms",
        "connect_runs",
        "answers_checked",
        "without_token",
        "plaintext_client",
    }
    assert set(doc["ratios"][0]) == {"name", "value"}


def test_results_go_to_a_timestamped_file_under_bench_results_by_default() -> None:
    when = datetime.datetime(2025, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)
    assert default_json_path(when) == Path("bench/results/security-20250304T050607Z.json")
