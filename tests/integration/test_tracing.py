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


async def test_a_batch_is_one_trace_with_one_span_per_hop_and_cycle(
    spans: InMemorySpanExporter, redis_config: RedisConfig, tmp_path: Path
) -> None:
    async with federation(redis_config, tmp_path) as fed:
        api = ApiServer(fed.store, listen="127.0.0.1:0")
        address = await api.start()
        try:
            async with await AsyncClient.connect(address) as client:
                specs = [
                    types_pb2.JobSpec(name=f"b{n}", tenant="acme", command=["true"])
                    for n in range(12)
                ]
                jobs = await client.submit_many(specs)
                finals = await fed.wait_terminal([j.id for j in jobs])
        finally:
            await api.stop(grace=1)
    assert {f.state for f in finals} == {types_pb2.JOB_STATE_SUCCEEDED}
    ids = {j.id for j in jobs}

    finished = spans.get_finished_spans()
    [batch] = [s for s in finished if s.name == "api.submit_batch"]
    in_trace = [s for s in finished if s.context.trace_id == batch.context.trace_id]
    for hop in ("scheduler.place", "dispatcher.dispatch", "agent.accept"):
        hop_spans = [s for s in in_trace if s.name == hop]
        listed: list[str] = []
        for s in hop_spans:
            assert s.attributes is not None
            listed += list(s.attributes.get("job.ids", [s.attributes.get("job.id")]))
        # every job of the batch exactly once, in fewer spans than jobs
        assert sorted(listed) == sorted(ids), hop
        assert len(hop_spans) < len(ids), hop
