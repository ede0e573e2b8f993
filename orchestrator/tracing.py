"""OpenTelemetry helpers: carry one trace per job across gRPC, Redis and the job's environment.

Library code uses only ``opentelemetry-api`` through these helpers. ``configure_tracing`` (SDK
and exporters) is for entrypoints only: the CLI, the control plane supervisor, the agent.

A job's trace context travels as a W3C ``traceparent`` string: in gRPC metadata from the SDK to
the API server, in the job's Redis record to the scheduler and dispatcher, in each Assignment to
the agent, and into the job's own process as ``TRACEPARENT``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.sampling import Sampler

__all__ = [
    "TRACEPARENT_KEY",
    "configure_tracing",
    "context_from_metadata",
    "context_from_traceparent",
    "current_traceparent",
    "get_tracer",
    "metadata_with_trace",
    "recordable_traces",
    "span_traceparent",
    "start_span_from",
    "tracing_active",
    "wants_span",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

TRACEPARENT_KEY = "traceparent"
_PROPAGATOR = TraceContextTextMapPropagator()


def get_tracer(name: str) -> Tracer:
    """The tracer for one module (``get_tracer(__name__)``)."""
    return trace.get_tracer(name)


_TRACEPARENT_LENGTH = 55
"""Of a version-00 W3C traceparent: 2 + 1 + 32 + 1 + 16 + 1 + 2 characters."""


def tracing_active() -> bool:
    """Whether a real TracerProvider is installed (spans made now could be recorded).

    Without one every span is a no-op: hot paths ask this once per batch and skip building
    per-job spans and their attributes altogether.
    """
    return not isinstance(
        trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    )


def wants_span(traceparent: str, *, active: bool) -> bool:
    """Whether a span under ``traceparent`` could be recorded (``active``: ``tracing_active()``).

    A parent whose trace flags say "not sampled" (bit 0 clear: ``-00``, or ``-02`` with the
    random-trace-id bit the SDK sets) makes every child unsampled under the parent-based
    samplers, so hot paths skip such spans: at 1% sampling 99% of jobs cost no span at all. A
    blank or malformed parent starts a new trace, which the sampler decides.
    """
    if not active:
        return False
    flags = traceparent[-3:]  # version-traceid-parentid-flags: "-" and two hex digits
    if len(traceparent) != _TRACEPARENT_LENGTH or flags[0] != "-":
        return True
    try:
        return bool(int(flags[1:], 16) & 1)
    except ValueError:
        return True


def recordable_traces(
    items: Iterable[T], traceparent: Callable[[T], str], *, active: bool
) -> dict[str, list[T]]:
    """``items`` whose trace could record a span (``wants_span``), grouped by traceparent, in
    order: the jobs of one ``SubmitJobs`` call share a trace, and hot paths make one span per
    group rather than one per job."""
    groups: dict[str, list[T]] = {}
    if active:
        for item in items:
            tp = traceparent(item)
            if wants_span(tp, active=True):
                groups.setdefault(tp, []).append(item)
    return groups


def current_traceparent() -> str:
    """The W3C traceparent of the current span, or "" when there is none."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get(TRACEPARENT_KEY, "")


def span_traceparent(span: Span) -> str:
    """The W3C traceparent naming ``span`` as parent ("" for a span with no valid context):
    what the propagator would inject, written directly (once per job on the agents' hot path,
    where the propagator's context round trip cost more than the formatting)."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return ""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def context_from_traceparent(traceparent: str) -> otel_context.Context:
    """A context whose parent span is the one ``traceparent`` names (empty context if blank)."""
    if not traceparent:
        return otel_context.Context()
    return _PROPAGATOR.extract({TRACEPARENT_KEY: traceparent})


def context_from_metadata(
    metadata: Sequence[tuple[str, str | bytes]] | None,
) -> otel_context.Context:
    """Extract the caller's trace context from gRPC invocation metadata."""
    for key, value in metadata or ():
        if key == TRACEPARENT_KEY and isinstance(value, str):
            return context_from_traceparent(value)
    return otel_context.Context()


def metadata_with_trace(
    metadata: Sequence[tuple[str, str]] = (),
) -> list[tuple[str, str]]:
    """``metadata`` plus the current span's traceparent, for an outgoing gRPC call."""
    out = [(k, v) for k, v in metadata if k != TRACEPARENT_KEY]
    tp = current_traceparent()
    if tp:
        out.append((TRACEPARENT_KEY, tp))
    return out


@contextmanager
def start_span_from(
    tracer: Tracer,
    name: str,
    traceparent: str,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[Span]:
    """Start a span whose parent is named by ``traceparent`` (a new trace if blank)."""
    ctx = context_from_traceparent(traceparent)
    with tracer.start_as_current_span(name, context=ctx, attributes=attributes) as span:
        yield span


def configure_tracing(service_name: str, env: Mapping[str, str]) -> bool:
    """Install a TracerProvider with exporters chosen by the standard ``OTEL_*`` variables.

    ``OTEL_TRACES_EXPORTER`` is ``otlp``, ``console``, ``memory`` or ``none``; when unset, OTLP
    is used if ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set, else
    nothing is exported. ``OTEL_SDK_DISABLED=true`` turns tracing off. Returns whether a
    provider was installed. Call once, from an entrypoint.

    ``memory`` is for benchmarks and tests (``orchestrator.tracing_memory``): spans are made,
    sampled and batched as for a real exporter, then kept in this process's memory (the last
    10,000; all are counted, so a long run's memory stays bounded). With
    ``SG_TRACES_MEMORY_REPORT=<directory>`` the process writes there, when it exits,
    ``<service>-<pid>.json``: its sampler and how many spans it recorded.

    The sampler is ``OTEL_TRACES_SAMPLER`` (and ``OTEL_TRACES_SAMPLER_ARG``) as the SDK names
    them: ``always_on``, ``always_off``, ``traceidratio``, ``parentbased_always_on`` (the
    default), ``parentbased_always_off``, ``parentbased_traceidratio``. The SDK's
    ``TracerProvider()`` would read them from ``os.environ`` itself; they are read from ``env``
    here, so that a process given its tracing settings as a mapping (a Ray actor) samples as
    told.
    """
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter_name = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    has_endpoint = bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    if not exporter_name:
        exporter_name = "otlp" if has_endpoint else "none"
    if exporter_name == "none":
        return False

    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    exporter: SpanExporter | None = None
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    elif exporter_name == "otlp":
        protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        if protocol.startswith("http"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpExporter,
            )

            exporter = HttpExporter()
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            exporter = GrpcExporter()
    elif exporter_name != "memory":
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported; tracing is off", exporter_name)
        return False
    name = env.get("OTEL_SERVICE_NAME", service_name)
    sampler = _sampler(env)
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}), sampler=sampler)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    else:
        from orchestrator import tracing_memory

        report = env.get("SG_TRACES_MEMORY_REPORT", "").strip()
        tracing_memory.install(provider, service=name, report_dir=Path(report) if report else None)
    trace.set_tracer_provider(provider)
    log.info(
        "tracing: %s exporter, sampler %s, service %s",
        exporter_name, sampler.get_description(), name,
    )  # fmt: skip
    return True


_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


def _sampler(env: Mapping[str, str]) -> Sampler:
    """The sampler ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG`` name, as the SDK
    reads them (an unknown name: the default, ``parentbased_always_on``; a ratio that is not
    a number in 0..1: 1.0), but from ``env``."""
    from opentelemetry.sdk.trace import sampling

    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    if name not in _SAMPLERS:
        log.warning("OTEL_TRACES_SAMPLER=%s is not known; using parentbased_always_on", name)
        name = "parentbased_always_on"
    rate = 1.0
    if name.endswith("traceidratio"):
        raw = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
        try:
            rate = float(raw) if raw else 1.0
        except ValueError:
            rate = float("nan")
        if not 0.0 <= rate <= 1.0:  # NaN included
            log.warning("OTEL_TRACES_SAMPLER_ARG=%s is not a ratio in 0..1; using 1.0", raw)
            rate = 1.0
    samplers: dict[str, Sampler] = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": sampling.TraceIdRatioBased(rate),
        "parentbased_always_on": sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": sampling.ParentBasedTraceIdRatio(rate),
    }
    return samplers[name]
