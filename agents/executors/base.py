"""The executor interface: how the agent starts, watches and stops one job attempt.

An executor turns a ``LaunchSpec`` into a running attempt and hands back an ``AttemptHandle``.
The agent's runtime does all bookkeeping (dedup, GPU slots, status updates, the journal); an
executor only runs things. Implementations: ``LocalExecutor`` (local processes) and
``SimExecutor`` (starts nothing: a declared duration, then an exit code, for benchmarks); Ray,
Slurm and Kubernetes executors implement the same protocol, and
``tests/agents/test_agent_executor_contract.py`` is the one contract test every implementation
must pass.

The contract:

- ``start(spec)`` returns once the attempt has started (for the local executor: the job's program
  was exec'd). If it cannot be started for reasons of the job's own making (command not found, not
  executable) it raises ``LaunchError`` with a clear message and a shell-style exit code (127 not
  found, 126 cannot execute); the agent reports that as a failed attempt, never crashes.
- The attempt sees the job's ``env`` plus the variables of ``job_environment(spec)``; those win
  over the job's own values.
- Output goes to ``spec.stdout_path`` and ``spec.stderr_path`` (appended).
- ``handle.wait()`` returns the ``ExitResult`` once the attempt and everything it started have
  ended; it may be awaited many times and by many tasks.
- ``handle.terminate(grace)`` asks the attempt to stop (SIGTERM for processes), forces it after
  ``grace`` seconds (SIGKILL), and returns the ``ExitResult``. Terminating an ended attempt just
  returns its result.
- ``spec.max_runtime_seconds`` is enforced by the executor: the attempt is terminated and its
  result has ``timed_out`` set.
- ``handle.identity`` is an opaque string the agent journals. After an agent restart, a fresh
  executor can take the attempt over: ``executor.adopt(identity, spec, started_at=...)`` returns a
  handle with the same ``wait``/``terminate``/max-runtime behaviour (the max runtime still counts
  from ``started_at``), or None once the attempt is gone; then
  ``executor.finished_result(identity, spec)`` says how it ended, if the executor recorded that.
  ``executor.stop_orphan(identity, grace_seconds=...)`` instead just stops what is left of it.
- ``executor.needs_lease_file`` says whether the agent must keep its lease file up to date before
  an attempt starts and while attempts run: True when an attempt can outlive the agent's control
  (the local executor's launch shim reads the file and stops its job when the lease ends, and a
  restarted agent re-adopts attempts under the lease it finds there); False when nothing of an
  attempt survives the agent process (``SimExecutor``), so the file would be written for no one.

An executor whose attempts start without waiting for anything (no process, no I/O) may also be an
``InlineExecutor``: ``start_inline(spec, on_end)`` starts an attempt within the call and reports
its end through ``on_end`` instead of a waiting task, so the agent starts a whole dispatch batch
in one step of the event loop with no task per attempt. Its handles keep the whole
``AttemptHandle`` contract (``wait``, ``terminate``, the max runtime). Its attempts write no
files: the agent names ``os.devnull`` as their ``stdout_path`` and ``stderr_path`` and its own
state directory as their ``working_dir``, the same for every attempt, so that starting one builds
no path.
"""

from __future__ import annotations

import signal as signal_module
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from orchestrator.errors import OrchestratorError

__all__ = [
    "AttemptHandle",
    "Executor",
    "ExitResult",
    "InlineExecutor",
    "LaunchError",
    "LaunchSpec",
    "job_environment",
    "signal_name",
]


@dataclass(frozen=True, kw_only=True)
class LaunchSpec:
    """What to run for one attempt and where its output goes."""

    job_id: str
    """Job id."""
    attempt: int
    """Attempt number."""
    argv: tuple[str, ...]
    """Program and arguments, exec'd directly (never through a shell)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """The job's own environment variables (from its spec)."""
    working_dir: Path
    """Directory the attempt runs in; the executor creates it if missing."""
    stdout_path: Path
    """File the attempt's standard output is appended to."""
    stderr_path: Path
    """File the attempt's standard error is appended to."""
    max_runtime_seconds: float | None = None
    """Longest the attempt may run; ``None`` for no limit."""
    kill_grace_seconds: float = 3.0
    """Seconds between SIGTERM and SIGKILL when the executor itself stops the attempt."""
    site_id: str = ""
    """Site id, exported as ``SG_SITE``."""
    traceparent: str = ""
    """W3C traceparent of the attempt's ``job.run`` span, exported as ``TRACEPARENT``."""
    gpu_type: str = ""
    """GPU type of ``gpu_slots``; empty for none."""
    gpu_slots: tuple[int, ...] = ()
    """GPU slot indices the attempt may use, exported as ``CUDA_VISIBLE_DEVICES``."""
    nodes: int = 1
    """Nodes of a gang job, exported as ``SG_NODES``."""
    lease_file: Path | None = None
    """The agent's lease file (its lease's end, epoch seconds). When set, the executor stops the
    attempt shortly after the lease ends even if the agent cannot (frozen, say)."""

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError("argv must not be empty")


def job_environment(spec: LaunchSpec) -> dict[str, str]:
    """The variables every executor sets for an attempt (they override the job's own).

    ``JOB_ID``, ``JOB_ATTEMPT``, ``SG_SITE``, ``SG_NODES``, ``SG_GPU_TYPE``,
    ``CUDA_VISIBLE_DEVICES`` (slot indices, comma-separated; empty for no GPUs) and
    ``TRACEPARENT`` (only when there is a trace to join).
    """
    env = {
        "JOB_ID": spec.job_id,
        "JOB_ATTEMPT": str(spec.attempt),
        "SG_SITE": spec.site_id,
        "SG_NODES": str(spec.nodes),
        "SG_GPU_TYPE": spec.gpu_type,
        "CUDA_VISIBLE_DEVICES": ",".join(str(slot) for slot in spec.gpu_slots),
    }
    if spec.traceparent:
        env["TRACEPARENT"] = spec.traceparent
    return env


@dataclass(frozen=True)
class ExitResult:
    """How an attempt ended."""

    exit_code: int | None
    """Exit code, when the attempt exited by itself (even after being asked to stop)."""
    signal: int | None = None
    """Number of the signal that killed it, when it did not exit by itself."""
    timed_out_after: float | None = None
    """Set (to the limit in seconds) when the executor stopped it for exceeding its max runtime."""

    @property
    def timed_out(self) -> bool:
        """Whether the attempt was stopped for exceeding its max runtime."""
        return self.timed_out_after is not None

    @property
    def succeeded(self) -> bool:
        """Exited 0 within its max runtime."""
        return self.exit_code == 0 and not self.timed_out

    @property
    def message(self) -> str:
        """Human-readable summary: "exit code 3", "killed by signal SIGKILL", ..."""
        if self.timed_out_after is not None:
            return f"exceeded max runtime {self.timed_out_after:g}s"
        if self.exit_code is not None:
            return f"exit code {self.exit_code}"
        if self.signal is not None:
            return f"killed by signal {signal_name(self.signal)}"
        return "ended without an exit status"

    @classmethod
    def from_returncode(
        cls, returncode: int, *, timed_out_after: float | None = None
    ) -> ExitResult:
        """From a ``subprocess`` return code (negative: killed by that signal)."""
        if returncode < 0:
            return cls(None, -returncode, timed_out_after)
        return cls(returncode, None, timed_out_after)


def signal_name(number: int) -> str:
    """``9`` -> ``"SIGKILL"``; unknown numbers as ``"signal 42"``."""
    try:
        return signal_module.Signals(number).name
    except ValueError:
        return f"signal {number}"


class LaunchError(OrchestratorError):
    """An attempt could not be started for reasons of the job's own (bad command, ...)."""

    def __init__(self, job_id: str, attempt: int, problem: str, *, exit_code: int) -> None:
        super().__init__(problem)
        self.job_id = job_id
        self.attempt = attempt
        self.exit_code = exit_code
        """Shell-style code: 127 command not found, 126 found but cannot be executed."""

    def fields(self) -> dict[str, str]:
        return {"job_id": self.job_id, "attempt": str(self.attempt)}


@runtime_checkable
class AttemptHandle(Protocol):
    """A started attempt."""

    @property
    def identity(self) -> str:
        """Opaque id the agent journals, for ``Executor.adopt`` after a restart."""
        ...

    @property
    def pid(self) -> int | None:
        """Local process id of the attempt's leader, when there is one (for logs)."""
        ...

    async def wait(self) -> ExitResult:
        """Wait until the attempt (and everything it started) has ended."""
        ...

    async def terminate(self, grace_seconds: float) -> ExitResult:
        """Stop the attempt: ask, force after ``grace_seconds``; returns once it has ended."""
        ...


@runtime_checkable
class Executor(Protocol):
    """Runs job attempts. See the module docstring for the contract."""

    @property
    def needs_lease_file(self) -> bool:
        """Whether attempts rely on the agent's lease file (``LaunchSpec.lease_file``): the agent
        then writes it before an attempt starts and whenever the lease moves while attempts run.
        False only when nothing of an attempt can outlive the agent process."""
        ...

    async def start(self, spec: LaunchSpec) -> AttemptHandle:
        """Start one attempt; raises ``LaunchError`` if the job's command cannot be started."""
        ...

    async def adopt(
        self, identity: str, spec: LaunchSpec, *, started_at: float | None = None
    ) -> AttemptHandle | None:
        """Take over an attempt an earlier agent process started, if it is still running.

        ``identity`` is the one its ``start()`` handle had, ``spec`` the one it was started with
        (rebuilt from the journal; ``argv`` and ``env`` are not used again) and ``started_at``
        when it started, epoch seconds (``time.time()``): its max runtime counts from then (from
        now if None). Returns a handle that behaves like ``start()``'s, or None if nothing of the
        attempt is left or ``identity`` is not this executor's.
        """
        ...

    async def finished_result(self, identity: str, spec: LaunchSpec) -> ExitResult | None:
        """How an attempt that ended while no agent watched it ended, if the executor knows.

        For an attempt ``adopt`` found gone. None when nothing was recorded (the agent then
        knows only that the attempt is gone).
        """
        ...

    async def launched_identity(self, spec: LaunchSpec) -> str | None:
        """The identity of an attempt started for ``spec`` whose start an earlier agent process
        never journaled (it died right after starting it), or None if it was never started."""
        ...

    async def stop_orphan(self, identity: str, *, grace_seconds: float) -> bool:
        """Stop what is left of an attempt started by an earlier agent process.

        Returns True if something was still running (and has now been stopped), False if it was
        already gone or ``identity`` is not this executor's.
        """
        ...


@runtime_checkable
class InlineExecutor(Executor, Protocol):
    """An executor whose attempts start within the call, waiting for nothing (see the module
    docstring): the agent starts a batch of them in one step of the event loop and hears of each
    end through a callback, with no task per attempt (which is most of what a simulated attempt
    would otherwise cost)."""

    def start_inline(self, spec: LaunchSpec, on_end: Callable[[ExitResult], None]) -> AttemptHandle:
        """Start one attempt now, as ``start`` would; ``LaunchError`` as ``start`` raises it.

        ``on_end(result)`` is called exactly once, from the event loop's thread, when the attempt
        ends (by itself, by its max runtime or by ``terminate``), never from within this call.
        """
        ...
