"""The agent's bookkeeping of job attempts, free of gRPC: what the servicer calls into.

``AgentRuntime`` decides on each assignment (dedup, stale attempts, residency, GPU capacity),
starts accepted attempts through an ``Executor``, holds their GPU slots, stops them on cancel,
and keeps the outbox of status updates until the control plane acknowledges them. Everything it
must remember across a restart goes through the ``Journal`` first.

Decisions on one assignment, in order:

1. an attempt cancelled here before it was ever dispatched: refused, reason "cancelled";
2. an attempt already seen: accepted, ``duplicate``; nothing new starts;
3. an attempt older than one seen for the job: refused, "stale attempt N < M";
4. residency excluding this site's jurisdiction: refused, naming both;
5. not enough free GPUs: refused, "insufficient capacity: ...";
6. otherwise accepted: slots reserved, journaled, and the process started right after.

A refused assignment leaves no trace but its ack. An accepted one reports RUNNING once started,
then SUCCEEDED, FAILED or CANCELLED; a failure to start is FAILED straight away.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode, Tracer

from agents.config import AgentConfig
from agents.executors.base import AttemptHandle, Executor, ExitResult, LaunchError, LaunchSpec
from agents.gpus import GpuAllocation, GpuInventory, InsufficientGpusError
from agents.journal import AttemptState, Journal, StatusRecord
from agents.logs import OutputStream
from orchestrator.errors import NotFoundError
from orchestrator.tracing import context_from_traceparent, get_tracer, span_traceparent

__all__ = [
    "AckResult",
    "AgentRuntime",
    "AttemptNotFoundError",
    "AttemptOutput",
    "AttemptRequest",
    "CancelRequest",
    "Capacity",
]

log = logging.getLogger(__name__)

NOT_RUNNING_HERE = "not running at this site"


class AttemptNotFoundError(NotFoundError):
    """This agent holds no such attempt."""

    def __init__(self, job_id: str, attempt: int) -> None:
        super().__init__(f"attempt {attempt} of job {job_id!r} is not known at this site")
        self.job_id = job_id
        self.attempt = attempt

    def fields(self) -> dict[str, str]:
        return {"job_id": self.job_id, "attempt": str(self.attempt)}


@dataclass(frozen=True, kw_only=True)
class AttemptRequest:
    """One assignment, as the runtime needs it."""

    job_id: str
    """Job id."""
    attempt: int
    """Attempt number (>= 1)."""
    command: tuple[str, ...]
    """Program and arguments."""
    env: Mapping[str, str] = field(default_factory=dict)
    """The job's environment variables."""
    gpus_per_node: int = 0
    """GPUs per node."""
    nodes: int = 1
    """Nodes of a gang job; the local executor runs it as one process with all the GPUs."""
    gpu_type: str = ""
    """GPU type the job requires; empty for any."""
    assigned_gpu_type: str = ""
    """GPU type the scheduler chose for this attempt; used when the job requires none."""
    allowed_jurisdictions: tuple[str, ...] = ()
    """Where the job's data may be processed; empty for anywhere."""
    max_runtime_seconds: float | None = None
    """Longest the attempt may run; None for no limit."""
    traceparent: str = ""
    """W3C traceparent of the dispatch span."""

    @property
    def gpus_needed(self) -> int:
        """GPUs of the whole attempt: per node times nodes."""
        return self.gpus_per_node * max(self.nodes, 1)


@dataclass(frozen=True)
class AckResult:
    """The answer to one assignment."""

    job_id: str
    """Job id."""
    attempt: int
    """Attempt number."""
    accepted: bool
    """Taken (or taken before, see ``duplicate``)."""
    duplicate: bool = False
    """The attempt was already known; nothing new started."""
    reason: str = ""
    """Why it was refused."""


@dataclass(frozen=True)
class CancelRequest:
    """A request to stop one attempt."""

    job_id: str
    """Job id."""
    attempt: int
    """Attempt number."""
    grace_seconds: float | None = None
    """Seconds between SIGTERM and SIGKILL; None (or <= 0) for the agent's default."""
    reason: str = ""
    """Why, for logs and the status message."""


@dataclass(frozen=True)
class Capacity:
    """What the agent can still take."""

    gpus_free: Mapping[str, int]
    """Free GPUs by type, in the site's order."""
    running: int
    """Attempts accepted and not yet ended."""


@dataclass(frozen=True)
class AttemptOutput:
    """Where one attempt's output is, and whether it can still grow."""

    stdout: Path
    """Captured standard output."""
    stderr: Path
    """Captured standard error."""
    ended: asyncio.Event
    """Set once the attempt has ended (already set for one that ended before)."""

    def files(self, stream: OutputStream | None = None) -> list[tuple[OutputStream, Path]]:
        """The files to read: one stream, or both (stdout first) when ``stream`` is None."""
        both = [(OutputStream.STDOUT, self.stdout), (OutputStream.STDERR, self.stderr)]
        return [item for item in both if stream is None or item[0] is stream]


@dataclass(eq=False)
class _Attempt:
    request: AttemptRequest
    allocation: GpuAllocation
    directory: Path
    accept_span: Span
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    handle: AttemptHandle | None = None
    run_span: Span | None = None
    cancel: CancelRequest | None = None
    shutting_down: bool = False
    task: asyncio.Task[None] | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.request.job_id, self.request.attempt)


class AgentRuntime:
    """Attempt bookkeeping of one agent. Use from one event loop; ``open()`` before anything."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        executor: Executor,
        tracer: Tracer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._site = config.site
        self._executor = executor
        self._tracer = tracer or get_tracer(__name__)
        self._clock = clock
        self._gpus = GpuInventory(config.site.gpus)
        self._journal: Journal | None = None
        self._active: dict[tuple[str, int], _Attempt] = {}
        self._outbox: dict[int, StatusRecord] = {}
        self._outbox_changed = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False

    @property
    def config(self) -> AgentConfig:
        """The agent's config."""
        return self._config

    @property
    def is_open(self) -> bool:
        """Whether ``open()`` has run and ``close()`` has not."""
        return self._journal is not None

    # --- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the journal, reload unacked updates, and settle attempts a previous run left.

        Attempts the journal has as running are stopped if anything of them is left (re-adopting
        them is future work) and reported FAILED "agent restarted; process gone" (or "...; process
        terminated" when something was still running).
        """
        if self._journal is not None:
            return
        self._config.state_dir.mkdir(parents=True, exist_ok=True)
        journal = Journal(self._config.journal_path)
        self._journal = journal
        self._closing = False
        self._outbox = {record.seq: record for record in journal.unacked_status()}
        leftovers = journal.unfinished_attempts()
        still_running = await asyncio.gather(
            *(
                self._executor.stop_orphan(
                    record.identity, grace_seconds=self._config.kill_grace_seconds
                )
                for record in leftovers
                if record.state is AttemptState.RUNNING and record.identity
            )
        )
        was_running = iter(still_running)
        for record in leftovers:
            if record.state is AttemptState.RUNNING and record.identity:
                message = "agent restarted; process " + (
                    "terminated" if next(was_running) else "gone"
                )
            else:
                message = "agent restarted before the process started"
            log.warning("%s attempt %d: %s", record.job_id, record.attempt, message)
            self._emit(
                journal.record_finished(
                    record.job_id,
                    record.attempt,
                    state=AttemptState.FAILED,
                    exit_code=None,
                    message=message,
                    now=self._clock(),
                )
            )

    async def close(self, *, grace_seconds: float | None = None) -> None:
        """Stop every attempt (reported FAILED "agent shutting down"), then close the journal."""
        if self._journal is None:
            return
        self._closing = True
        grace = self._grace(grace_seconds)
        attempts = list(self._active.values())
        for att in attempts:
            att.shutting_down = True
            if att.handle is not None:
                self._spawn(att.handle.terminate(grace))
        tasks = [att.task for att in attempts if att.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self._journal.close()
        self._journal = None

    # --- dispatch and cancel ---------------------------------------------------------------------

    def dispatch(self, requests: Sequence[AttemptRequest]) -> list[AckResult]:
        """Decide on each assignment, in order; accepted ones start right after this returns."""
        return [self._dispatch_one(request) for request in requests]

    def _dispatch_one(self, req: AttemptRequest) -> AckResult:
        journal = self._require_journal()
        attrs: dict[str, str | int | bool] = {
            "job.id": req.job_id,
            "job.attempt": req.attempt,
            "site.id": self._site.id,
        }
        with self._tracer.start_as_current_span(
            "agent.accept", context=context_from_traceparent(req.traceparent), attributes=attrs
        ) as span:
            ack = self._decide(req, journal, span)
            span.set_attribute("agent.accepted", ack.accepted)
            span.set_attribute("agent.duplicate", ack.duplicate)
            if ack.reason:
                span.set_attribute("agent.reason", ack.reason)
        if ack.accepted and not ack.duplicate:
            log.info("accepted %s attempt %d", req.job_id, req.attempt)
        elif not ack.accepted:
            log.info("refused %s attempt %d: %s", req.job_id, req.attempt, ack.reason)
        return ack

    def _decide(self, req: AttemptRequest, journal: Journal, span: Span) -> AckResult:
        def refuse(reason: str) -> AckResult:
            return AckResult(req.job_id, req.attempt, accepted=False, reason=reason)

        if self._closing:
            return refuse("agent shutting down")
        if not req.job_id or req.attempt < 1:
            return refuse("invalid assignment: needs a job id and an attempt >= 1")
        if not req.command:
            return refuse("invalid assignment: command is empty")
        seen = journal.get_attempt(req.job_id, req.attempt)
        if seen is not None:
            if not seen.dispatched:
                return refuse("cancelled")
            return AckResult(req.job_id, req.attempt, accepted=True, duplicate=True)
        latest = journal.latest_attempt(req.job_id)
        if latest is not None and latest > req.attempt:
            return refuse(f"stale attempt {req.attempt} < {latest}")
        allowed = req.allowed_jurisdictions
        if allowed and self._site.jurisdiction not in allowed:
            return refuse(
                f"residency: job allows {', '.join(allowed)}; site {self._site.id} is in "
                f"{self._site.jurisdiction}"
            )
        try:
            gpu_type = self._gpus.choose_type(
                req.gpus_needed, required=req.gpu_type, suggested=req.assigned_gpu_type
            )
            allocation = self._gpus.allocate(gpu_type, req.gpus_needed)
        except InsufficientGpusError as exc:
            return refuse(f"insufficient capacity: {exc}")
        over = self._power_excess(allocation)
        if over:
            self._gpus.release(allocation)
            return refuse(over)
        try:
            journal.record_accepted(
                req.job_id,
                req.attempt,
                gpu_type=allocation.gpu_type,
                gpu_slots=allocation.slots,
                now=self._clock(),
            )
        except BaseException:
            self._gpus.release(allocation)
            raise
        att = _Attempt(
            request=req,
            allocation=allocation,
            directory=self._attempt_dir(req.job_id, req.attempt),
            accept_span=span,
        )
        self._active[att.key] = att
        att.task = asyncio.create_task(self._run(att), name=f"run {req.job_id}/{req.attempt}")
        return AckResult(req.job_id, req.attempt, accepted=True)

    def _draw_watts(self, allocation: GpuAllocation) -> int:
        return len(allocation.slots) * self._site.gpu_watts.get(allocation.gpu_type, 0)

    def _power_excess(self, allocation: GpuAllocation) -> str:
        """Why starting ``allocation`` would take the site over its power cap, or ""."""
        cap = int(self._site.power_cap_mw * 1_000_000)
        new = self._draw_watts(allocation)
        if not new:
            return ""
        in_use = sum(self._draw_watts(a.allocation) for a in self._active.values())
        if in_use + new <= cap:
            return ""
        return (
            f"power: {new / 1000:g} kW more would exceed the {self._site.power_cap_mw:g} MW cap "
            f"with {in_use / 1e6:g} MW in use"
        )

    def cancel(self, requests: Sequence[CancelRequest]) -> None:
        """Stop each attempt; one never seen here is recorded as cancelled and reported so."""
        journal = self._require_journal()
        for req in requests:
            att = self._active.get((req.job_id, req.attempt))
            if att is not None:
                if att.cancel is None:
                    log.info(
                        "cancelling %s attempt %d: %s", req.job_id, req.attempt, req.reason or "-"
                    )
                    att.cancel = req
                    if att.handle is not None:
                        self._spawn(att.handle.terminate(self._grace(req.grace_seconds)))
                continue
            if journal.get_attempt(req.job_id, req.attempt) is not None:
                log.debug("cancel of ended %s attempt %d: nothing to do", req.job_id, req.attempt)
                continue
            log.info("cancel of %s attempt %d, never dispatched here", req.job_id, req.attempt)
            self._emit(
                journal.record_cancelled_unseen(
                    req.job_id, req.attempt, message=NOT_RUNNING_HERE, now=self._clock()
                )
            )

    # --- status outbox ---------------------------------------------------------------------------

    def pending_updates(
        self, *, after_seq: int = 0, limit: int | None = None
    ) -> list[StatusRecord]:
        """Unacknowledged updates with ``seq > after_seq``, in ``seq`` order."""
        out: list[StatusRecord] = []
        for seq, record in self._outbox.items():
            if seq > after_seq:
                out.append(record)
                if limit is not None and len(out) >= limit:
                    break
        return out

    async def wait_for_updates(self, *, after_seq: int = 0) -> None:
        """Return once an unacknowledged update with ``seq > after_seq`` exists."""
        while next(reversed(self._outbox), 0) <= after_seq:
            event = self._outbox_changed
            await event.wait()

    def ack_status(self, seqs: Iterable[int]) -> int:
        """Forget acknowledged updates (unknown seqs are ignored); returns how many were held."""
        held = [seq for seq in seqs if seq in self._outbox]
        if not held:
            return 0
        self._require_journal().ack_status(held)
        for seq in held:
            del self._outbox[seq]
        return len(held)

    # --- queries ---------------------------------------------------------------------------------

    def capacity(self) -> Capacity:
        """Free GPUs by type and attempts not yet ended."""
        return Capacity(gpus_free=self._gpus.free_counts(), running=len(self._active))

    def attempt_output(self, job_id: str, attempt: int) -> AttemptOutput:
        """Where an attempt's output is; ``AttemptNotFoundError`` if it never ran here."""
        att = self._active.get((job_id, attempt))
        if att is not None:
            ended = att.ended
        else:
            record = self._require_journal().get_attempt(job_id, attempt)
            if record is None or not record.dispatched:
                raise AttemptNotFoundError(job_id, attempt)
            ended = asyncio.Event()
            ended.set()
        directory = self._attempt_dir(job_id, attempt)
        return AttemptOutput(directory / "stdout.log", directory / "stderr.log", ended)

    # --- running one attempt ---------------------------------------------------------------------

    async def _run(self, att: _Attempt) -> None:
        req = att.request
        try:
            if att.cancel is not None or att.shutting_down:
                state = AttemptState.CANCELLED if att.cancel else AttemptState.FAILED
                why = "cancelled" if att.cancel else "agent shutting down"
                self._finish(att, state, None, f"{why} before start")
                return
            run_span = self._tracer.start_span(
                "job.run",
                context=trace.set_span_in_context(att.accept_span),
                attributes={
                    "job.id": req.job_id,
                    "job.attempt": req.attempt,
                    "site.id": self._site.id,
                },
            )
            att.run_span = run_span
            spec = self._launch_spec(att, traceparent=span_traceparent(run_span))
            try:
                handle = await self._executor.start(spec)
            except LaunchError as exc:
                self._finish(att, AttemptState.FAILED, exc.exit_code, exc.message)
                return
            att.handle = handle
            self._emit(
                self._require_journal().record_started(
                    req.job_id,
                    req.attempt,
                    identity=handle.identity,
                    pid=handle.pid,
                    now=self._clock(),
                )
            )
            log.info("started %s attempt %d (%s)", req.job_id, req.attempt, handle.identity)
            if att.cancel is not None or att.shutting_down:  # arrived while starting
                grace = att.cancel.grace_seconds if att.cancel else None
                self._spawn(handle.terminate(self._grace(grace)))
            result = await handle.wait()
            self._finish(att, *self._outcome(att, result))
        except Exception as exc:
            log.exception("%s attempt %d: agent error", req.job_id, req.attempt)
            if att.key in self._active and self._journal is not None:
                self._finish(att, AttemptState.FAILED, None, f"agent error: {exc}")

    def _outcome(self, att: _Attempt, result: ExitResult) -> tuple[AttemptState, int | None, str]:
        if att.cancel is not None:
            why = f"cancelled ({att.cancel.reason})" if att.cancel.reason else "cancelled"
            return AttemptState.CANCELLED, result.exit_code, f"{why}; {result.message}"
        if att.shutting_down:
            return AttemptState.FAILED, result.exit_code, f"agent shutting down; {result.message}"
        state = AttemptState.SUCCEEDED if result.succeeded else AttemptState.FAILED
        return state, result.exit_code, result.message

    def _finish(
        self, att: _Attempt, state: AttemptState, exit_code: int | None, message: str
    ) -> None:
        req = att.request
        record = self._require_journal().record_finished(
            req.job_id,
            req.attempt,
            state=state,
            exit_code=exit_code,
            message=message,
            now=self._clock(),
        )
        self._gpus.release(att.allocation)
        del self._active[att.key]
        att.ended.set()
        self._emit(record)
        log.info("%s attempt %d %s: %s", req.job_id, req.attempt, state.value, message)
        span = att.run_span
        if span is not None:
            span.set_attribute("job.state", state.value)
            if exit_code is not None:
                span.set_attribute("job.exit_code", exit_code)
            if state is AttemptState.FAILED:
                span.set_status(StatusCode.ERROR, message)
            span.end()

    def _launch_spec(self, att: _Attempt, *, traceparent: str) -> LaunchSpec:
        req = att.request
        return LaunchSpec(
            job_id=req.job_id,
            attempt=req.attempt,
            argv=req.command,
            env=dict(req.env),
            working_dir=att.directory / "work",
            stdout_path=att.directory / "stdout.log",
            stderr_path=att.directory / "stderr.log",
            max_runtime_seconds=req.max_runtime_seconds,
            kill_grace_seconds=self._config.kill_grace_seconds,
            site_id=self._site.id,
            traceparent=traceparent,
            gpu_type=att.allocation.gpu_type,
            gpu_slots=att.allocation.slots,
            nodes=max(req.nodes, 1),
        )

    # --- helpers ---------------------------------------------------------------------------------

    def _emit(self, record: StatusRecord) -> None:
        self._outbox[record.seq] = record
        event, self._outbox_changed = self._outbox_changed, asyncio.Event()
        event.set()

    def _grace(self, grace_seconds: float | None) -> float:
        if grace_seconds is None or grace_seconds <= 0:
            return self._config.kill_grace_seconds
        return grace_seconds

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def _require_journal(self) -> Journal:
        if self._journal is None:
            raise RuntimeError("AgentRuntime is not open")
        return self._journal

    def _attempt_dir(self, job_id: str, attempt: int) -> Path:
        name = urllib.parse.quote(job_id, safe="")
        if not name.strip("."):
            name = name.replace(".", "%2E")
        return self._config.attempts_dir / name / str(attempt)
