"""AgentRuntime with the simulated executor and the in-memory journal, as a fleet's sites run:
attempts start a dispatch batch at a time with no task per attempt, yet end, fail, time out and
stop exactly as attempts with a task do; spans are made only when they could be recorded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

import agents.runtime
from agents import AgentConfig, AgentRuntime, AttemptRequest, CancelRequest
from agents.executors import ExitResult, LaunchSpec, SimAttempt, SimExecutor
from agents.journal import MemoryJournal, StatusRecord
from orchestrator.states import JobState

SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


class RecordingSim(SimExecutor):
    """The simulated executor, noting each spec it starts."""

    def __init__(self) -> None:
        super().__init__()
        self.specs: list[LaunchSpec] = []

    def start_inline(
        self, spec: LaunchSpec, on_end: Callable[[ExitResult], None] | None
    ) -> SimAttempt:
        self.specs.append(spec)
        return super().start_inline(spec, on_end)


class NoSpans:
    """A tracer that fails the test if a span is made."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a span was made (tracer.{name}) while none could be recorded")


OpenRuntime = Callable[..., Any]


@pytest.fixture
async def open_runtime(config: AgentConfig) -> AsyncIterator[OpenRuntime]:
    """Factory: an open runtime of simulated attempts, its lease renewed; closed after."""
    opened: list[AgentRuntime] = []

    async def open_(*, tracer: Tracer | None = None) -> tuple[AgentRuntime, RecordingSim]:
        executor = RecordingSim()
        runtime = AgentRuntime(config, executor=executor, tracer=tracer, journal=MemoryJournal)
        await runtime.open()
        runtime.renew_lease(runtime.next_heartbeat())
        opened.append(runtime)
        return runtime, executor

    yield open_
    for runtime in opened:
        await runtime.close(grace_seconds=0.1)


def sim(job_id: str, seconds: str = "0", **kwargs: Any) -> AttemptRequest:
    env = {"SG_SIM_SECONDS": seconds, **kwargs.pop("env", {})}
    return AttemptRequest(job_id=job_id, attempt=1, command=("train",), env=env, **kwargs)


def updates_of(runtime: AgentRuntime, job_id: str) -> list[StatusRecord]:
    return [u for u in runtime.pending_updates() if u.job_id == job_id]


async def test_a_batch_starts_in_one_step_with_no_task_per_attempt(
    open_runtime: OpenRuntime, config: AgentConfig
) -> None:
    runtime, executor = await open_runtime()
    tasks = len(asyncio.all_tasks())
    jobs = [f"j-{n}" for n in range(300)]
    gpu_jobs = [f"g-{n}" for n in range(4)]  # the site has 4 H100s
    acks = runtime.dispatch(
        [sim(j, "0.2") for j in jobs] + [sim(j, "0.2", gpus_per_node=1) for j in gpu_jobs]
    )
    assert all(a.accepted and not a.duplicate for a in acks)
    assert runtime.pending_updates() == []  # started right after dispatch returns, not in it
    await asyncio.sleep(0)
    running = runtime.pending_updates()
    assert [(u.job_id, u.state) for u in running] == [
        (j, JobState.RUNNING) for j in jobs + gpu_jobs
    ]
    assert len(asyncio.all_tasks()) == tasks
    assert runtime.capacity().running == 304
    assert runtime.capacity().gpus_free == {"H100": 0, "GB200": 2}
    for spec in executor.specs:  # nothing of a simulated attempt is a file
        assert (spec.stdout_path, spec.stderr_path) == (Path("/dev/null"), Path("/dev/null"))
        assert spec.working_dir == config.state_dir and spec.lease_file is None
    async with asyncio.timeout(5):
        while runtime.capacity().running:
            await asyncio.sleep(0.02)
    assert runtime.capacity().gpus_free == {"H100": 4, "GB200": 2}
    for job_id in jobs + gpu_jobs:
        start, end = updates_of(runtime, job_id)
        assert (start.state, end.state, end.exit_code) == (JobState.RUNNING, JobState.SUCCEEDED, 0)
        assert start.seq < end.seq and end.time - start.time >= 0.15
    assert not config.attempts_dir.exists()
    (again,) = runtime.dispatch([sim("j-0")])
    assert again.accepted and again.duplicate


async def test_simulated_attempts_end_and_stop_as_attempts_with_a_task_do(
    open_runtime: OpenRuntime,
) -> None:
    runtime, _ = await open_runtime()
    runtime.dispatch(
        [
            sim("ok"),
            sim("fails", env={"SG_SIM_EXIT": "3"}),
            sim("bad", env={"SG_SIM_EXIT": "300"}),
            sim("slow", "600", max_runtime_seconds=0.1),
            sim("forever", "inf"),
            sim("unstarted", "inf"),
        ]
    )
    runtime.cancel([CancelRequest("unstarted", 1, reason="no")])  # the same step: never started
    output = runtime.attempt_output("forever", 1)
    await asyncio.sleep(0.3)
    runtime.cancel([CancelRequest("forever", 1, reason="enough")])
    await asyncio.wait_for(output.ended.wait(), 5)

    def final(job_id: str) -> tuple[JobState, int | None, str]:
        last = updates_of(runtime, job_id)[-1]
        return last.state, last.exit_code, last.message

    assert final("ok") == (JobState.SUCCEEDED, 0, "exit code 0")
    assert final("fails") == (JobState.FAILED, 3, "exit code 3")
    state, code, message = final("bad")
    assert (state, code) == (JobState.FAILED, 2) and "SG_SIM_EXIT='300'" in message
    assert final("slow") == (JobState.FAILED, None, "exceeded max runtime 0.1s")
    assert final("forever") == (
        JobState.CANCELLED, None, "cancelled (enough); killed by signal SIGTERM",
    )  # fmt: skip
    assert final("unstarted") == (JobState.CANCELLED, None, "cancelled before start")
    assert [u.state for u in updates_of(runtime, "unstarted")] == [JobState.CANCELLED]
    assert runtime.capacity().running == 0
    assert runtime.attempt_output("ok", 1).ended.is_set()


async def test_closing_stops_every_simulated_attempt(
    open_runtime: OpenRuntime,
) -> None:
    runtime, _ = await open_runtime()
    runtime.dispatch([sim("running", "inf")])
    await asyncio.sleep(0)
    runtime.dispatch([sim("just-accepted", "inf")])  # starts while close stops the watchdog
    await asyncio.wait_for(runtime.close(grace_seconds=30), 5)  # no grace needed: no process
    assert not runtime.is_open and runtime.capacity().running == 0
    finals = {u.job_id: (u.state, u.message) for u in runtime.pending_updates()[-2:]}
    stopped = (JobState.FAILED, "agent shutting down; killed by signal SIGTERM")
    assert finals == {"running": stopped, "just-accepted": stopped}


async def test_without_a_recording_tracer_no_span_is_made(
    open_runtime: OpenRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tracing off (no TracerProvider installed): the job gets the assignment's traceparent, as
    it would through spans that record nothing."""
    monkeypatch.setattr(agents.runtime, "tracing_active", lambda: False)
    runtime, executor = await open_runtime()
    monkeypatch.setattr(runtime, "_tracer", NoSpans())
    runtime.dispatch([sim("sampled", traceparent=SAMPLED), sim("blank")])
    async with asyncio.timeout(5):
        while len(runtime.pending_updates()) < 4:
            await asyncio.sleep(0.01)
    assert [s.traceparent for s in executor.specs] == [SAMPLED, ""]


async def test_with_a_recording_tracer_sampled_jobs_get_their_spans(
    open_runtime: OpenRuntime, tracer: Tracer, span_exporter: InMemorySpanExporter
) -> None:
    runtime, executor = await open_runtime(tracer=tracer)
    runtime.dispatch(
        [
            sim("sampled", traceparent=SAMPLED, env={"SG_SIM_EXIT": "5"}),
            sim("unsampled", traceparent=UNSAMPLED),
        ]
    )
    async with asyncio.timeout(5):
        while len(runtime.pending_updates()) < 4:
            await asyncio.sleep(0.01)
    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    assert sorted(spans) == ["agent.accept", "job.run"]  # none for the unsampled job
    accept, run = spans["agent.accept"], spans["job.run"]
    assert accept.attributes is not None and run.attributes is not None
    assert accept.attributes["job.id"] == run.attributes["job.id"] == "sampled"
    assert accept.attributes["agent.accepted"] is True
    assert accept.parent is not None and f"{accept.parent.span_id:016x}" == "b7ad6b7169203331"
    assert run.parent is not None and run.parent.span_id == accept.context.span_id
    assert (run.attributes["job.state"], run.attributes["job.exit_code"]) == ("failed", 5)
    sampled, unsampled = executor.specs
    assert sampled.traceparent == f"00-{run.context.trace_id:032x}-{run.context.span_id:016x}-01"
    assert unsampled.traceparent == UNSAMPLED
