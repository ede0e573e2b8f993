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

The lease (see ``AgentConfig.lease_seconds``) costs an idle agent nothing but its bookkeeping:
the watchdog that stops attempts when it runs out sleeps until the lease would end, and only
while attempts are held; the lease file, which attempts' launch shims read to stop their job if
the agent cannot and which a restarted agent reads, is written only while attempts are held (and
before one starts), off the event loop. An executor whose attempts cannot outlive the agent
(``Executor.needs_lease_file`` False: ``SimExecutor``) has no shim and leaves nothing to
re-adopt, so its agent writes no lease file.

What one attempt costs the agent is kept to its bookkeeping: the accept and run spans are made
only when they could be recorded (``orchestrator.tracing.wants_span``, asked once per dispatch
batch; a tracer given to the runtime counts as recording), and an ``InlineExecutor``'s attempts
(simulated ones) are started a dispatch batch at a time in one loop callback and followed through
their ``on_end`` callback, with no task per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from agents.config import AgentConfig
from agents.executors.base import (
    AttemptHandle,
    Executor,
    ExitResult,
    InlineExecutor,
    LaunchError,
    LaunchSpec,
)
from agents.gpus import GpuAllocation, GpuInventory, InsufficientGpusError
from agents.journal import AttemptJournal, AttemptRecord, AttemptState, Journal, StatusRecord
from agents.logs import OutputStream
from orchestrator.errors import NotFoundError
from orchestrator.states import JobState
from orchestrator.tracing import (
    context_from_traceparent,
    get_tracer,
    recordable_traces,
    span_traceparent,
    tracing_active,
    wants_span,
)

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
_DEVNULL = Path(os.devnull)
_NOT_STARTED = "agent restarted before it started"


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


@dataclass(eq=False, slots=True)
class _Attempt:
    request: AttemptRequest
    allocation: GpuAllocation
    accept_span: Span | None
    """None when no span could be recorded (see ``AgentRuntime.dispatch``)."""
    watts: int = 0
    """What its GPUs draw, counted against the site's power cap while it is held."""
    ended: asyncio.Event | None = None
    """Set once it has ended; made only when someone waits (``_ended_event``)."""
    handle: AttemptHandle | None = None
    run_span: Span | None = None
    cancel: CancelRequest | None = None
    shutting_down: bool = False
    fenced: str = ""
    """Why the agent stopped it on its own (its lease ran out), or ""."""
    task: asyncio.Task[None] | None = None
    """What runs and follows it; None for an inline executor's attempts (callbacks instead)."""

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
        journal: Callable[[], AttemptJournal] | None = None,
    ) -> None:
        """``tracer``: where the accept and run spans go; when given, they are always made,
        else only while tracing is on (``orchestrator.tracing.tracing_active``). ``journal``
        opens the journal; default: the SQLite file at ``config.journal_path``."""
        self._config = config
        self._site = config.site
        self._executor = executor
        self._tracer = tracer or get_tracer(__name__)
        self._tracer_given = tracer is not None
        self._clock = clock
        self._open_journal = journal or functools.partial(Journal, config.journal_path)
        self._gpus = GpuInventory(config.site.gpus)
        self._gpu_watts = dict(config.site.gpu_watts)
        self._power_cap_watts = int(config.site.power_cap_mw * 1_000_000)
        self._watts_in_use = 0
        self._attempts_dir = config.attempts_dir
        self._lease_path = config.lease_path
        self._journal: AttemptJournal | None = None
        self._active: dict[tuple[str, int], _Attempt] = {}
        self._outbox: dict[int, StatusRecord] = {}
        self._outbox_changed = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._lease = _Lease(config.lease_seconds)
        self._lease_file = _LeaseFile(self._lease_path) if executor.needs_lease_file else None
        self._inline: InlineExecutor | None = (
            executor
            if isinstance(executor, InlineExecutor) and not executor.needs_lease_file
            else None
        )
        """Set when attempts start inline (no lease file to write first, so nothing to wait
        for): see ``_start_inline``."""
        self._to_start: list[_Attempt] = []
        """Accepted attempts of an inline executor, started by the next ``_start_inline``."""
        self._watchdog: asyncio.Task[None] | None = None
        self._watchdog_wake = asyncio.Event()
        self._watchdog_idle = False
        """Whether the watchdog waits with no deadline (no attempt held, or lease over)."""

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

        The lease the previous run held still counts (from the lease file). An attempt whose
        process still runs is re-adopted: it goes on as if nothing happened, unless the lease
        has run out (or none is known), in which case it is stopped and reported LOST. One that
        ended while no agent watched is reported as it ended, from the executor's record (LOST
        when there is none, or when it failed after the lease ran out). One the previous run
        accepted but never started is reported LOST. LOST attempts are run again elsewhere and
        do not count against the job's attempts.
        """
        if self._journal is not None:
            return
        self._config.state_dir.mkdir(parents=True, exist_ok=True)
        journal = self._open_journal()
        self._journal = journal
        self._closing = False
        self._lease.load(self._lease_path)
        self._outbox = {record.seq: record for record in journal.unacked_status()}
        for record in journal.unfinished_attempts():
            await self._settle(record)
        self._watchdog = asyncio.create_task(self._watch_lease(), name="lease watchdog")

    async def _settle(self, record: AttemptRecord) -> None:
        """One attempt a previous agent process left unfinished (see ``open``)."""
        grace = self._config.kill_grace_seconds
        if not record.command:  # journaled before commands were: it cannot be re-adopted
            if record.state is not AttemptState.RUNNING or not record.identity:
                self._record_end(record, AttemptState.LOST, None, _NOT_STARTED)
                return
            stopped = await self._executor.stop_orphan(record.identity, grace_seconds=grace)
            how = "terminated" if stopped else "gone"
            self._record_end(record, AttemptState.LOST, None, f"agent restarted; process {how}")
            return
        spec = self._spec_for(
            record.job_id,
            record.attempt,
            command=record.command,
            allocation=GpuAllocation(record.gpu_type, record.gpu_slots),
            max_runtime_seconds=record.max_runtime_seconds,
            traceparent="",
        )
        identity = record.identity or await self._executor.launched_identity(spec)
        if not identity:
            self._record_end(record, AttemptState.LOST, None, _NOT_STARTED)
            return
        handle = await self._executor.adopt(identity, spec, started_at=record.started_at)
        if handle is not None:
            self._readopt(record, handle)
            return
        result = await self._executor.finished_result(identity, spec)
        if result is None:
            self._record_end(
                record, AttemptState.LOST, None, "agent restarted; process gone, no exit status"
            )
            return
        state = AttemptState.SUCCEEDED if result.succeeded else AttemptState.FAILED
        message = f"ended while the agent was down; {result.message}"
        if state is AttemptState.FAILED and self._lease.expired(time.monotonic()):
            state, message = AttemptState.LOST, f"lease expired; {result.message}"
        self._record_end(record, state, result.exit_code, message)

    def _readopt(self, record: AttemptRecord, handle: AttemptHandle) -> None:
        allocation = GpuAllocation(record.gpu_type, record.gpu_slots)
        self._gpus.claim(allocation)
        if record.state is AttemptState.ACCEPTED:  # the last run died before journaling its start
            self._emit(
                self._require_journal().record_started(
                    record.job_id,
                    record.attempt,
                    identity=handle.identity,
                    pid=handle.pid,
                    now=self._clock(),
                )
            )
        req = AttemptRequest(
            job_id=record.job_id,
            attempt=record.attempt,
            command=record.command,
            gpus_per_node=len(record.gpu_slots),
            gpu_type=record.gpu_type,
            max_runtime_seconds=record.max_runtime_seconds,
        )
        span = self._tracer.start_span(
            "agent.readopt",
            attributes={
                "job.id": record.job_id,
                "job.attempt": record.attempt,
                "site.id": self._site.id,
            },
        )
        att = _Attempt(
            request=req,
            allocation=allocation,
            accept_span=span,
            watts=self._draw_watts(allocation),
            handle=handle,
            run_span=span,
        )
        if not self._lease.valid(time.monotonic()):
            att.fenced = "agent restarted after its lease ended; stopped by the agent"
            self._spawn(handle.terminate(self._config.kill_grace_seconds))
        log.warning(
            "%s attempt %d: re-adopted after an agent restart (%s)%s",
            record.job_id, record.attempt, handle.identity, "; stopping it" if att.fenced else "",
        )  # fmt: skip
        self._hold(att)
        att.task = asyncio.create_task(self._follow(att, handle), name=f"follow {att.key}")

    def _record_end(
        self, record: AttemptRecord, state: AttemptState, exit_code: int | None, message: str
    ) -> None:
        log.warning("%s attempt %d: %s", record.job_id, record.attempt, message)
        self._emit(self._journal_end(record.job_id, record.attempt, state, exit_code, message))

    def _journal_end(
        self, job_id: str, attempt: int, state: AttemptState, exit_code: int | None, message: str
    ) -> StatusRecord:
        return self._require_journal().record_finished(
            job_id, attempt, state=state, exit_code=exit_code, message=message, now=self._clock()
        )

    async def close(self, *, grace_seconds: float | None = None) -> None:
        """Stop every attempt (reported FAILED "agent shutting down"), then close the journal."""
        if self._journal is None:
            return
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
            self._watchdog_idle = False
        grace = self._grace(grace_seconds)
        attempts = list(self._active.values())
        for att in attempts:
            att.shutting_down = True
            if att.handle is not None:
                self._spawn(att.handle.terminate(grace))
        # the tasks of attempts that have one; the others (inline) end through their callbacks
        waits = [att.task or self._ended_event(att).wait() for att in attempts]
        if waits:
            await asyncio.gather(*waits, return_exceptions=True)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._lease_file is not None:
            await self._lease_file.flush()
        self._journal.close()
        self._journal = None

    # --- dispatch and cancel ---------------------------------------------------------------------

    def dispatch(self, requests: Sequence[AttemptRequest]) -> list[AckResult]:
        """Decide on each assignment, in order; accepted ones start right after this returns.

        Whether spans could be recorded is asked once for the batch: an assignment gets its
        ``agent.accept`` and ``job.run`` spans only if so and its trace is sampled (the job then
        gets the assignment's own traceparent, as it would under a span that records nothing).
        Assignments of the batch that share a trace (the jobs of one ``SubmitJobs`` call) share
        one ``agent.accept`` span listing them (``job.ids``; counts of accepted and refused);
        each still gets a ``job.run`` span of its own.
        """
        recording = self._tracer_given or tracing_active()
        shared = recordable_traces(requests, lambda r: r.traceparent, active=recording)
        spans = {
            tp: self._tracer.start_span(
                "agent.accept",
                context=context_from_traceparent(tp),
                attributes={
                    "site.id": self._site.id,
                    "job.count": len(group),
                    "job.ids": [r.job_id for r in group],
                },
            )
            for tp, group in shared.items()
            if len(group) > 1
        }
        acks = []
        for req in requests:
            span = spans.get(req.traceparent)
            acks.append(
                self._dispatch_one(req, recording)
                if span is None
                else self._logged(req, self._decide(req, self._require_journal(), span))
            )
        if spans:
            accepted = Counter(
                req.traceparent
                for req, ack in zip(requests, acks, strict=True)
                if req.traceparent in spans and ack.accepted
            )
            for tp, span in spans.items():
                span.set_attribute("agent.accepted", accepted[tp])
                span.set_attribute("agent.refused", len(shared[tp]) - accepted[tp])
                span.end()
        return acks

    def _dispatch_one(self, req: AttemptRequest, recording: bool) -> AckResult:
        journal = self._require_journal()
        if not wants_span(req.traceparent, active=recording):
            ack = self._decide(req, journal, None)
        else:
            attrs: dict[str, str | int | bool] = {
                "job.id": req.job_id,
                "job.attempt": req.attempt,
                "site.id": self._site.id,
            }
            with self._tracer.start_as_current_span(
                "agent.accept",
                context=context_from_traceparent(req.traceparent),
                attributes=attrs,
            ) as span:
                ack = self._decide(req, journal, span)
                span.set_attribute("agent.accepted", ack.accepted)
                span.set_attribute("agent.duplicate", ack.duplicate)
                if ack.reason:
                    span.set_attribute("agent.reason", ack.reason)
        return self._logged(req, ack)

    @staticmethod
    def _logged(req: AttemptRequest, ack: AckResult) -> AckResult:
        if ack.accepted and not ack.duplicate:
            log.info("accepted %s attempt %d", req.job_id, req.attempt)
        elif not ack.accepted:
            log.info("refused %s attempt %d: %s", req.job_id, req.attempt, ack.reason)
        return ack

    def _decide(self, req: AttemptRequest, journal: AttemptJournal, span: Span | None) -> AckResult:
        def refuse(reason: str) -> AckResult:
            return AckResult(req.job_id, req.attempt, accepted=False, reason=reason)

        if self._closing:
            return refuse("agent shutting down")
        if not req.job_id or req.attempt < 1:
            return refuse("invalid assignment: needs a job id and an attempt >= 1")
        if not req.command:
            return refuse("invalid assignment: command is empty")
        now = time.monotonic()
        if self._lease.expired(now):
            return refuse("lease expired: waiting for the control plane to renew it")
        started = self._lease.start(now)
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
            gpus = req.gpus_needed
            gpu_type = self._gpus.choose_type(
                gpus, required=req.gpu_type, suggested=req.assigned_gpu_type
            )
            allocation = self._gpus.allocate(gpu_type, gpus)
        except InsufficientGpusError as exc:
            return refuse(f"insufficient capacity: {exc}")
        watts = self._draw_watts(allocation)
        over = self._power_excess(watts)
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
                command=req.command,
                max_runtime_seconds=req.max_runtime_seconds,
            )
        except BaseException:
            self._gpus.release(allocation)
            raise
        att = _Attempt(request=req, allocation=allocation, accept_span=span, watts=watts)
        self._hold(att)
        if started or len(self._active) == 1:  # the file may be stale: bring it up to date
            self._lease_moved()
        if self._watchdog_idle:
            self._watchdog_wake.set()
        if self._inline is not None:
            if not self._to_start:
                asyncio.get_running_loop().call_soon(self._start_inline, self._inline)
            self._to_start.append(att)
        else:
            att.task = asyncio.create_task(self._run(att), name=f"run {req.job_id}/{req.attempt}")
        return AckResult(req.job_id, req.attempt, accepted=True)

    def _hold(self, att: _Attempt) -> None:
        self._active[att.key] = att
        self._watts_in_use += att.watts

    def _draw_watts(self, allocation: GpuAllocation) -> int:
        if not allocation.slots:
            return 0
        return len(allocation.slots) * self._gpu_watts.get(allocation.gpu_type, 0)

    def _power_excess(self, new: int) -> str:
        """Why starting an attempt drawing ``new`` watts would take the site over its power cap,
        or "". What the held attempts draw is kept as they come and go (``_watts_in_use``)."""
        if not new:
            return ""
        in_use = self._watts_in_use
        if in_use + new <= self._power_cap_watts:
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

    # --- lease and reconcile ---------------------------------------------------------------------

    def set_lease_seconds(self, seconds: float | None) -> None:
        """The lease period the control plane asks for (a new stream's hello); None or <= 0
        keeps the config's."""
        self._lease.seconds = seconds if seconds and seconds > 0 else self._config.lease_seconds

    def next_heartbeat(self) -> int:
        """A sequence number for a heartbeat (or hello) about to be sent, its send time noted."""
        return self._lease.sent(time.monotonic())

    def renew_lease(self, heartbeat_seq: int) -> None:
        """The control plane recorded heartbeat ``heartbeat_seq``: the lease runs the lease
        period from when that heartbeat was sent."""
        if self._lease.renewed(heartbeat_seq):
            self._lease_moved()

    def _lease_moved(self) -> None:
        """The lease's end moved: while attempts are held, have the lease file follow."""
        if self._lease_file is not None and self._active and self._lease.expiry is not None:
            self._lease_file.write(self._lease.expiry)

    def lease_remaining(self) -> float | None:
        """Seconds left on the lease (negative once expired), or None before the first one."""
        return self._lease.remaining(time.monotonic())

    def held(self) -> list[tuple[str, int, JobState]]:
        """Every attempt this agent holds, for a new stream's hello, as the control plane names
        its state: DISPATCHED (accepted, not started) or RUNNING, and for an ended one whose
        status update is not acknowledged yet, the state that update reports."""
        out = {  # an attempt leaves ``_active`` as it ends
            att.key: JobState.RUNNING if att.handle is not None else JobState.DISPATCHED
            for att in self._active.values()
        }
        for record in self._outbox.values():
            key = (record.job_id, record.attempt)
            if key not in self._active:
                out[key] = record.state
        return [(job_id, attempt, state) for (job_id, attempt), state in sorted(out.items())]

    def reconcile(
        self, *, stop: Iterable[tuple[str, int]], forget: Iterable[tuple[str, int]]
    ) -> None:
        """Apply the control plane's answer to ``held()``: stop the attempts it no longer
        wants here (their reports will be rejected), drop the unacknowledged updates of ended
        attempts it no longer needs."""
        stale = "the control plane moved this attempt on"
        self.cancel([CancelRequest(job_id, attempt, None, stale) for job_id, attempt in stop])
        gone = set(forget)
        if gone:
            seqs = [seq for seq, r in self._outbox.items() if (r.job_id, r.attempt) in gone]
            self.ack_status(seqs)

    async def _watch_lease(self) -> None:
        """Stop every attempt once the lease runs out (self-fencing): past it the control plane
        may declare this site lost and run the attempts elsewhere.

        Sleeps until the lease would end while attempts are held; a renewal only moves the end
        later, so waking at the old end and looking again is never late. With no attempt held
        (or the lease over, its attempts stopped) it waits, with no deadline, for an accepted
        attempt: none is accepted while the lease is over, so one means a lease that runs."""
        while True:
            self._watchdog_wake.clear()
            delay: float | None = None
            if self._active:
                remaining = self._lease.remaining(time.monotonic())
                if remaining is not None and remaining <= 0:
                    self._fence()
                elif remaining is not None:
                    delay = remaining
            self._watchdog_idle = delay is None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._watchdog_wake.wait()

    def _fence(self) -> None:
        why = (
            f"lease expired: the control plane confirmed no heartbeat for "
            f"{self._lease.seconds:g}s; stopped by the agent"
        )
        for att in list(self._active.values()):
            if att.fenced or att.cancel is not None:
                continue
            log.warning("%s attempt %d: %s", *att.key, why)
            att.fenced = why
            if att.handle is not None:
                self._spawn(att.handle.terminate(self._config.kill_grace_seconds))

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
            self._outbox_changed.clear()  # set by the next ``_emit``
            await self._outbox_changed.wait()

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
            ended = self._ended_event(att)
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
            if self._lease_file is not None:
                await self._lease_file.flush()  # its launch shim reads the lease's end there
            if self._stopped_before_start(att):
                return
            spec = self._launch_spec(att, traceparent=self._run_traceparent(att))
            try:
                handle = await self._executor.start(spec)
            except LaunchError as exc:
                self._finish(att, AttemptState.FAILED, exc.exit_code, exc.message)
                return
            self._started(att, handle)
            if att.cancel is not None or att.shutting_down or att.fenced:  # came while starting
                grace = att.cancel.grace_seconds if att.cancel else None
                self._spawn(handle.terminate(self._grace(grace)))
        except Exception as exc:
            log.exception("%s attempt %d: agent error", req.job_id, req.attempt)
            if att.key in self._active and self._journal is not None:
                self._finish(att, AttemptState.FAILED, None, f"agent error: {exc}")
            return
        await self._follow(att, handle)

    def _start_inline(self, inline: InlineExecutor) -> None:
        """Start the attempts accepted since the last call (one loop callback per dispatch
        batch, scheduled by ``_decide``), as ``_run`` starts one."""
        starting, self._to_start = self._to_start, []
        for att in starting:
            try:
                if self._stopped_before_start(att):
                    continue
                spec = self._launch_spec(att, traceparent=self._run_traceparent(att))
                try:
                    handle = inline.start_inline(spec, functools.partial(self._inline_ended, att))
                except LaunchError as exc:
                    self._finish(att, AttemptState.FAILED, exc.exit_code, exc.message)
                    continue
                self._started(att, handle)
            except Exception as exc:
                log.exception("%s attempt %d: agent error", *att.key)
                self._fail_held(att, exc)

    def _inline_ended(self, att: _Attempt, result: ExitResult) -> None:
        """An inline executor's attempt ended: ``_follow`` without the waiting."""
        try:
            self._finish(att, *self._outcome(att, result))
        except Exception as exc:
            log.exception("%s attempt %d: agent error", *att.key)
            self._fail_held(att, exc)

    def _fail_held(self, att: _Attempt, exc: Exception) -> None:
        if att.key in self._active and self._journal is not None:
            self._finish(att, AttemptState.FAILED, None, f"agent error: {exc}")

    def _stopped_before_start(self, att: _Attempt) -> bool:
        """End an attempt stopped before it started (cancelled, fenced, agent closing); whether
        it was."""
        if att.cancel is None and not att.shutting_down and not att.fenced:
            return False
        if att.fenced:
            state, why = AttemptState.LOST, att.fenced
        elif att.cancel is not None:
            state, why = AttemptState.CANCELLED, "cancelled"
        else:
            state, why = AttemptState.FAILED, "agent shutting down"
        self._finish(att, state, None, f"{why} before start")
        return True

    def _run_traceparent(self, att: _Attempt) -> str:
        """Open the attempt's ``job.run`` span if it has an accept span; the traceparent its
        job gets: the run span's, else the assignment's own (what a span that records nothing
        would pass on)."""
        if att.accept_span is None:
            return att.request.traceparent
        req = att.request
        att.run_span = self._tracer.start_span(
            "job.run",
            context=trace.set_span_in_context(att.accept_span),
            attributes={"job.id": req.job_id, "job.attempt": req.attempt, "site.id": self._site.id},
        )
        return span_traceparent(att.run_span)

    def _started(self, att: _Attempt, handle: AttemptHandle) -> None:
        req = att.request
        att.handle = handle
        self._emit(
            self._require_journal().record_started(
                req.job_id, req.attempt, identity=handle.identity, pid=handle.pid, now=self._clock()
            )
        )
        log.info("started %s attempt %d (%s)", req.job_id, req.attempt, handle.identity)

    async def _follow(self, att: _Attempt, handle: AttemptHandle) -> None:
        """Wait for a started (or re-adopted) attempt to end, and record how."""
        try:
            result = await handle.wait()
            self._finish(att, *self._outcome(att, result))
        except Exception as exc:
            log.exception("%s attempt %d: agent error", *att.key)
            if att.key in self._active and self._journal is not None:
                self._finish(att, AttemptState.FAILED, None, f"agent error: {exc}")

    def _outcome(self, att: _Attempt, result: ExitResult) -> tuple[AttemptState, int | None, str]:
        if att.fenced:
            return AttemptState.LOST, result.exit_code, f"{att.fenced}; {result.message}"
        if not result.succeeded and att.cancel is None and self._lease.expired(time.monotonic()):
            # stopped by its launch shim while this agent could not act (frozen, say)
            why = "lease expired; stopped before the agent could stop it"
            return AttemptState.LOST, result.exit_code, f"{why}; {result.message}"
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
        record = self._journal_end(req.job_id, req.attempt, state, exit_code, message)
        self._gpus.release(att.allocation)
        del self._active[att.key]
        self._watts_in_use -= att.watts
        if att.ended is not None:
            att.ended.set()
        self._emit(record)
        log.info("%s attempt %d %s: %s", req.job_id, req.attempt, state, message)
        span = att.run_span
        if span is not None:
            ended: dict[str, AttributeValue] = {"job.state": state.value}
            if exit_code is not None:
                ended["job.exit_code"] = exit_code
            span.set_attributes(ended)  # one call: each takes the span's lock
            if state is AttemptState.FAILED:
                span.set_status(StatusCode.ERROR, message)
            span.end()

    def _launch_spec(self, att: _Attempt, *, traceparent: str) -> LaunchSpec:
        req = att.request
        return self._spec_for(
            req.job_id,
            req.attempt,
            command=req.command,
            env=req.env,
            allocation=att.allocation,
            max_runtime_seconds=req.max_runtime_seconds,
            traceparent=traceparent,
            nodes=max(req.nodes, 1),
            files=self._inline is None,
        )

    def _spec_for(
        self,
        job_id: str,
        attempt: int,
        *,
        command: Sequence[str],
        allocation: GpuAllocation,
        max_runtime_seconds: float | None,
        traceparent: str,
        env: Mapping[str, str] | None = None,
        nodes: int = 1,
        files: bool = True,
    ) -> LaunchSpec:
        """``files``: the attempt's own directory and output files; False for an inline
        executor's attempt, which writes none (``InlineExecutor``): it gets ``os.devnull`` and
        the state directory instead, and no path is built for it."""
        if files:
            directory = self._attempt_dir(job_id, attempt)
            work, out, err = directory / "work", directory / "stdout.log", directory / "stderr.log"
        else:
            work, out, err = self._config.state_dir, _DEVNULL, _DEVNULL
        return LaunchSpec(
            job_id=job_id,
            attempt=attempt,
            argv=tuple(command),
            env=dict(env or {}),
            working_dir=work,
            stdout_path=out,
            stderr_path=err,
            max_runtime_seconds=max_runtime_seconds,
            kill_grace_seconds=self._config.kill_grace_seconds,
            site_id=self._site.id,
            traceparent=traceparent,
            gpu_type=allocation.gpu_type,
            gpu_slots=allocation.slots,
            nodes=nodes,
            lease_file=None if self._lease_file is None else self._lease_path,
        )

    # --- helpers ---------------------------------------------------------------------------------

    def _emit(self, record: StatusRecord) -> None:
        self._outbox[record.seq] = record
        self._outbox_changed.set()

    def _ended_event(self, att: _Attempt) -> asyncio.Event:
        """Set once ``att`` has ended; only for an attempt still held (``_finish`` sets it)."""
        if att.ended is None:
            att.ended = asyncio.Event()
        return att.ended

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

    def _require_journal(self) -> AttemptJournal:
        if self._journal is None:
            raise RuntimeError("AgentRuntime is not open")
        return self._journal

    def _attempt_dir(self, job_id: str, attempt: int) -> Path:
        name = urllib.parse.quote(job_id, safe="")
        if not name.strip("."):
            name = name.replace(".", "%2E")
        return self._attempts_dir / name / str(attempt)


class _Lease:
    """The agent's lease: how long it may keep running attempts without the control plane
    confirming it heard a heartbeat. Times are ``time.monotonic()``. The end only ever moves
    later (a renewal that would shorten it is ignored)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expiry: float | None = None
        self._seq = 0
        self._sent: dict[int, float] = {}

    def sent(self, now: float) -> int:
        self._seq += 1
        self._sent[self._seq] = now
        if len(self._sent) > 1024:  # renewals that never came: keep the newest
            for seq in sorted(self._sent)[:-512]:
                del self._sent[seq]
        return self._seq

    def renewed(self, seq: int) -> bool:
        """Renew from when heartbeat ``seq`` was sent; whether the end moved."""
        sent = self._sent.get(seq)
        if sent is None:
            return False  # unknown or superseded: a later renewal counts
        for old in [s for s in self._sent if s <= seq]:
            del self._sent[old]
        expiry = sent + self.seconds
        if self.expiry is not None and expiry <= self.expiry:
            return False
        self.expiry = expiry
        return True

    def start(self, now: float) -> bool:
        """A lease from ``now`` if there is none yet (work arrived before any renewal); whether
        one was started."""
        if self.expiry is not None:
            return False
        self.expiry = now + self.seconds
        return True

    def load(self, path: Path) -> None:
        """The lease a previous agent process held, from its file (none if there is none). The
        file may lag the lease it held (it is written only while attempts are held), never lead
        it: the lease read is at most as long as the one that was held."""
        try:
            until = float(path.read_text(encoding="ascii"))
        except (OSError, ValueError):
            return
        self.expiry = time.monotonic() + (until - time.time())

    def remaining(self, now: float) -> float | None:
        return None if self.expiry is None else self.expiry - now

    def expired(self, now: float) -> bool:
        return self.expiry is not None and now >= self.expiry

    def valid(self, now: float) -> bool:
        return self.expiry is not None and now < self.expiry


class _LeaseFile:
    """The lease's end as epoch seconds in the agent's lease file, for a restarted agent and for
    the attempts' launch shims, which stop their job if the agent cannot when the lease ends.

    Written off the event loop (a temporary file renamed over it), one write at a time, the
    newest end asked for winning; ``flush`` waits until the file says it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._wanted: float | None = None
        self._written: float | None = None
        self._writer: asyncio.Task[None] | None = None

    def write(self, expiry: float) -> None:
        """Have the file say ``expiry`` (``time.monotonic()``) soon; returns at once."""
        self._wanted = expiry
        if self._wanted != self._written and (self._writer is None or self._writer.done()):
            self._writer = asyncio.create_task(self._drain(), name=f"write {self.path}")

    async def flush(self) -> None:
        """Return once the newest end asked for is in the file (or could not be written)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)  # a cancelled caller leaves the write running

    async def _drain(self) -> None:
        while self._wanted is not None and self._wanted != self._written:
            expiry = self._wanted
            until = time.time() + (expiry - time.monotonic())
            try:
                await asyncio.to_thread(_write_lease_file, self.path, until)
            except OSError as exc:  # the state dir went away under us: the watchdog still acts
                log.error("cannot write the lease file %s: %s", self.path, exc)
            self._written = expiry  # written or failed: the next move of the lease tries again


def _write_lease_file(path: Path, until: float) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{until:.3f}\n", encoding="ascii")
    os.replace(tmp, path)
