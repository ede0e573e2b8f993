"""The in-memory exporter (``OTEL_TRACES_EXPORTER=memory``) keeps a bounded number of spans and
counts them all; a process configured with it reports, at exit, its sampler and its count. The
sampler comes from the mapping given to ``configure_tracing``, not from ``os.environ``.
(Processes are fresh interpreters: the global tracer provider can be set once per process.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from orchestrator.tracing_memory import MemorySpanExporter, report_path

_PROGRAM = """
import json, os, sys
from orchestrator.tracing import configure_tracing, get_tracer
env = json.loads(sys.argv[1])
installed = configure_tracing("sg-test", env)
tracer = get_tracer("t")
for _ in range(int(sys.argv[2])):
    with tracer.start_as_current_span("s"):
        pass
print(json.dumps({"installed": installed}))
"""


REPO = Path(__file__).resolve().parents[2]


def run(
    env: dict[str, str], spans: int, os_env: dict[str, str] | None = None, cwd: Path = REPO
) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM, json.dumps(env), str(spans)],
        capture_output=True, text=True, timeout=60, check=True, cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **(os_env or {})},
    )  # fmt: skip
    return bool(json.loads(out.stdout.strip().splitlines()[-1])["installed"])


def test_the_exporter_keeps_the_last_spans_and_counts_them_all() -> None:
    exporter = MemorySpanExporter(limit=5)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    for i in range(12):
        with tracer.start_as_current_span(f"s{i}"):
            pass
    assert exporter.exported == 12
    assert [s.name for s in exporter.spans()] == ["s7", "s8", "s9", "s10", "s11"]
    exporter.clear()
    assert exporter.exported == 0 and exporter.spans() == []
    provider.shutdown()


def test_a_process_reports_its_spans_and_sampler_at_exit(tmp_path: Path) -> None:
    env = {"OTEL_TRACES_EXPORTER": "memory", "SG_TRACES_MEMORY_REPORT": str(tmp_path)}
    assert run(env, spans=10_050) is True
    (path,) = tmp_path.glob("sg-test-*.json")
    doc = json.loads(path.read_text())
    assert path == report_path(tmp_path, "sg-test", doc["pid"])
    # every span counted (flushed at exit), only the last 10,000 kept
    assert (doc["spans"], doc["kept"], doc["limit"]) == (10_050, 10_000, 10_000)
    assert "root:AlwaysOnSampler" in doc["sampler"]  # the default: parentbased_always_on


def test_the_sampler_comes_from_the_mapping_given(tmp_path: Path) -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "memory",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.01",
        "SG_TRACES_MEMORY_REPORT": str(tmp_path),
    }
    # the process's own environment says otherwise: the mapping wins
    assert run(env, spans=2000, os_env={"OTEL_TRACES_SAMPLER": "always_off"}) is True
    (path,) = tmp_path.glob("*.json")
    doc = json.loads(path.read_text())
    assert "root:TraceIdRatioBased{0.01}" in doc["sampler"]
    assert 0 < doc["spans"] < 200  # about 1% of 2,000 new traces


@pytest.mark.parametrize(
    ("sampler", "arg", "root"),
    [("always_off", "", "AlwaysOffSampler"), ("nonsense", "", "root:AlwaysOnSampler"),
     ("traceidratio", "2.5", "TraceIdRatioBased{1.0}")],
)  # fmt: skip
def test_samplers_as_the_sdk_names_them(tmp_path: Path, sampler: str, arg: str, root: str) -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "memory",
        "OTEL_TRACES_SAMPLER": sampler,
        "OTEL_TRACES_SAMPLER_ARG": arg,
        "SG_TRACES_MEMORY_REPORT": str(tmp_path),
    }
    assert run(env, spans=3) is True
    (path,) = tmp_path.glob("*.json")
    assert root in json.loads(path.read_text())["sampler"]


def test_without_a_report_directory_nothing_is_written(tmp_path: Path) -> None:
    assert run({"OTEL_TRACES_EXPORTER": "memory"}, spans=3, cwd=tmp_path) is True
    assert list(tmp_path.iterdir()) == []
