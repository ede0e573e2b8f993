"""Exporters are chosen by the standard OTEL_* variables (checked in a fresh interpreter each,
since the global tracer provider can be set only once per process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import INVALID_SPAN

from orchestrator.tracing import current_traceparent, span_traceparent, wants_span

_PROGRAM = """
import os, json
from orchestrator.tracing import configure_tracing, get_tracer
installed = configure_tracing("sg-test", os.environ)
with get_tracer("t").start_as_current_span("hello"):
    pass
from opentelemetry import trace
trace.get_tracer_provider().force_flush() if installed else None
print(json.dumps({"installed": installed}))
"""


def run(env: dict[str, str]) -> tuple[bool, str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM],
        capture_output=True, text=True, timeout=60, check=True,
        env={"PATH": "/usr/bin:/bin", **env},
    )  # fmt: skip
    last = out.stdout.strip().splitlines()[-1]
    return json.loads(last)["installed"], out.stdout


def test_no_variables_means_no_exporter() -> None:
    installed, output = run({})
    assert installed is False
    assert '"name": "hello"' not in output


def test_console_exporter_prints_spans_with_the_service_name() -> None:
    installed, output = run({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "svc-x"})
    assert installed is True
    assert '"name": "hello"' in output and "svc-x" in output


@pytest.mark.parametrize("env", [{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"},
                                 {"OTEL_TRACES_EXPORTER": "zipkin-nope"}])  # fmt: skip
def test_disabled_or_unknown_exporter_installs_nothing(env: dict[str, str]) -> None:
    installed, _ = run(env)
    assert installed is False


def test_an_otlp_endpoint_exports_to_that_collector() -> None:
    """A real OTLP/gRPC receiver on loopback gets the span, with the service name."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list[trace_service_pb2.ExportTraceServiceRequest] = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # type: ignore[no-untyped-def]
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        installed, _ = run(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                "OTEL_SERVICE_NAME": "svc-otlp",
            }
        )
    finally:
        server.stop(None)
    assert installed is True
    spans = [
        (span.name, attr.value.string_value)
        for req in received
        for rs in req.resource_spans
        for attr in rs.resource.attributes
        if attr.key == "service.name"
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    assert ("hello", "svc-otlp") in spans


def test_a_span_is_wanted_only_under_a_sampled_or_blank_parent() -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-"
    assert wants_span(tp + "01", active=True) and wants_span(tp + "03", active=True)
    # not sampled, with or without the random-trace-id flag the SDK sets (0x02)
    assert not wants_span(tp + "00", active=True) and not wants_span(tp + "02", active=True)
    # blank or malformed: a new trace, the sampler decides
    assert wants_span("", active=True) and wants_span("garbage-00", active=True)
    assert wants_span(tp + "zz", active=True)
    assert not wants_span(tp + "01", active=False) and not wants_span("", active=False)


def test_the_sdk_marks_unsampled_parents_as_wants_span_reads_them() -> None:
    """Under ratio sampling, a root span's traceparent is wanted exactly when it is sampled."""
    provider = TracerProvider(sampler=TraceIdRatioBased(0.5))
    tracer = provider.get_tracer("test")
    seen = {True: 0, False: 0}
    for _ in range(200):
        with tracer.start_as_current_span("root") as span:
            sampled = span.get_span_context().trace_flags.sampled
            assert wants_span(current_traceparent(), active=True) == sampled
            seen[sampled] += 1
    assert seen[True] > 0 and seen[False] > 0


def test_a_spans_traceparent_is_what_the_propagator_injects() -> None:
    provider = TracerProvider(sampler=TraceIdRatioBased(0.5))
    tracer = provider.get_tracer("test")
    for _ in range(20):
        with tracer.start_as_current_span("s") as span:
            assert span_traceparent(span) == current_traceparent() != ""
    assert span_traceparent(INVALID_SPAN) == ""
