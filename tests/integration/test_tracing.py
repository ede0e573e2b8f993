"""One trace per job: SDK -> API -> scheduler -> dispatcher -> agent -> the job's TRACEPARENT."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import federation
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.api.server import ApiServer
from orchestrator.config import RedisConfig
from orchestrator.sdk import AsyncClient

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans of this process, in memory (the global provider can be set once per process)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


async def test_one_trace_covers_every_hop_of_a_job(
    spans: InMemorySpanExporter, redis_config: RedisConfig, tmp_path: Path
) -> None:
    out = tmp_path / "traceparent"
    async with federation(redis_config, tmp_path) as fed:
        api = ApiServer(fed.store, listen="127.0.0.1:0")
        address = await api.start()
        try:
            async with await AsyncClient.connect(address) as client:
                spec = types_pb2.JobSpec(
                    name="traced", tenant="acme", command=["sh", "-c", f"echo $TRACEPARENT > {out}"]
                )
                job = await client.submit(spec)
                [final] = await fed.wait_terminal([job.id])
        finally:
            await api.stop(grace=1)
    assert final.state == types_pb2.JOB_STATE_SUCCEEDED

    finished = spans.get_finished_spans()
    [submit] = [s for s in finished if s.name == "sdk.submit"]
    trace_id = submit.context.trace_id
    in_trace = {s.name for s in finished if s.context.trace_id == trace_id}
    for hop in ("sdk.submit", "api.submit", "scheduler.place", "dispatcher.dispatch",
                "agent.accept", "job.run"):  # fmt: skip
        assert hop in in_trace, f"{hop} is not in the job's trace: {sorted(in_trace)}"
    # the placement span carries its decision
    [place] = [s for s in finished if s.name == "scheduler.place"]
    assert place.attributes is not None and place.attributes["job.id"] == job.id
    assert place.attributes["site.id"] == final.site
    # and the job's own process got a TRACEPARENT in the same trace
    traceparent = out.read_text().strip()
    assert traceparent.split("-")[1] == f"{trace_id:032x}"
