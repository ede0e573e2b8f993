"""An in-memory span exporter, for benchmarks and tests: ``OTEL_TRACES_EXPORTER=memory``.

Measuring what tracing costs needs spans that are really made, sampled, batched and handed to
an exporter, without a collector whose own speed (and the network to it) would be measured
too. ``MemorySpanExporter`` is that exporter: it keeps the last ``limit`` finished spans (so a
long benchmark's memory stays bounded however many spans it makes) and counts every span it
was given. It is installed behind a ``BatchSpanProcessor``, as a real exporter is.

A benchmark that runs the traced processes as children cannot look into their memory, so
``install`` can also write, when the process exits, a JSON report of what was recorded
(``report_path``): the service, the process id, the sampler and the count of spans. That is how
the benchmark knows its traced processes really recorded spans, and how many.

Imported only by ``orchestrator.tracing.configure_tracing`` (that is, by entrypoints): it needs
the OpenTelemetry SDK, which library code never imports.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

__all__ = ["DEFAULT_LIMIT", "MemorySpanExporter", "install", "report_path"]

DEFAULT_LIMIT = 10_000
"""Finished spans kept (the most recent); older ones are only counted."""


class MemorySpanExporter(SpanExporter):
    """Keeps the last ``limit`` spans exported to it and counts them all. Thread-safe: the
    batch processor exports from its own thread while others read."""

    def __init__(self, *, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self.limit = limit
        self._spans: collections.deque[ReadableSpan] = collections.deque(maxlen=limit)
        self._exported = 0
        self._lock = threading.Lock()
        self._shut_down = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shut_down:
            return SpanExportResult.FAILURE
        with self._lock:
            self._spans.extend(spans)
            self._exported += len(spans)
        return SpanExportResult.SUCCESS

    @property
    def exported(self) -> int:
        """Every span exported so far (kept or not)."""
        with self._lock:
            return self._exported

    def spans(self) -> list[ReadableSpan]:
        """The spans kept: the last ``limit`` exported, oldest first."""
        with self._lock:
            return list(self._spans)

    def clear(self) -> None:
        """Forget the spans kept and the count."""
        with self._lock:
            self._spans.clear()
            self._exported = 0

    def shutdown(self) -> None:
        self._shut_down = True

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True  # nothing is buffered here (the batch processor's queue is flushed by it)


def report_path(directory: Path, service: str, pid: int | None = None) -> Path:
    """Where the process ``pid`` (default: this one) of ``service`` writes its report."""
    return Path(directory) / f"{service}-{os.getpid() if pid is None else pid}.json"


def install(
    provider: TracerProvider,
    *,
    service: str,
    limit: int = DEFAULT_LIMIT,
    report_dir: Path | None = None,
) -> MemorySpanExporter:
    """A ``MemorySpanExporter`` behind a ``BatchSpanProcessor`` of ``provider``; with
    ``report_dir``, its report is written there when the process exits (see the module
    docstring)."""
    exporter = MemorySpanExporter(limit=limit)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    if report_dir is not None:
        # Registered after the provider's own exit hook, so it runs first (atexit runs in
        # reverse): the provider still flushes the spans its processor holds.
        atexit.register(_write_report, provider, exporter, service, Path(report_dir))
    return exporter


def _write_report(
    provider: TracerProvider, exporter: MemorySpanExporter, service: str, directory: Path
) -> None:
    provider.force_flush()
    doc = {
        "service": service,
        "pid": os.getpid(),
        "sampler": provider.sampler.get_description(),
        "spans": exporter.exported,
        "kept": len(exporter.spans()),
        "limit": exporter.limit,
    }
    path = report_path(directory, service)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(doc) + "\n")
    partial.replace(path)  # whole or absent: a reader never sees half a report
