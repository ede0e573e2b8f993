"""The simulated executor: attempts that start nothing and only take their declared time.

For benchmarks and simulated fleets (``agents.fleet``): an attempt costs an entry in its event
loop's shared timer heap (or, for 0 s, in the list of attempts ending on the next loop step), not
a process, a thread or a timer of its own, so thousands of sites can run thousands of jobs in one
process. What an attempt does is read from its spec, never run:

- how long it runs: ``SG_SIM_SECONDS`` in the job's env (seconds, ``inf`` for until stopped),
  else ``N`` when the command is ``sleep N`` (GNU suffixes ``s``, ``m``, ``h``, ``d`` and
  ``infinity`` accepted), else 0;
- how it exits: ``SG_SIM_EXIT`` in the job's env (0-255), else 0.

Everything else of the ``Executor`` contract holds as for processes: ``terminate`` ends an
attempt at once as a SIGTERM would (``ExitResult(None, SIGTERM)``) and the max runtime is
enforced (``timed_out``). The attempt writes no output: its output files are never created,
which the agent's log reading takes as empty. Nothing survives the agent process: after a
restart ``adopt`` and ``finished_result`` find nothing (the agent reports such attempts LOST)
and ``stop_orphan`` has nothing to stop. A bad ``SG_SIM_*`` value is the job's own mistake:
``start`` raises ``LaunchError`` with exit code 2.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import os
import signal
import time
from collections.abc import Callable

from agents.executors.base import ExitResult, LaunchError, LaunchSpec

__all__ = ["SIM_EXIT_VAR", "SIM_SECONDS_VAR", "SimAttempt", "SimExecutor"]

SIM_SECONDS_VAR = "SG_SIM_SECONDS"
"""Job env variable: how long a simulated attempt runs, in seconds (``inf``: until stopped)."""
SIM_EXIT_VAR = "SG_SIM_EXIT"
"""Job env variable: the exit code of a simulated attempt (0-255)."""

log = logging.getLogger(__name__)

_BAD_SIM_VALUE = 2  # shell convention for a misused command
_SLEEP_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SUCCESS = ExitResult(0)
_ids = itertools.count(1)

OnEnd = Callable[[ExitResult], None]


class SimExecutor:
    """Runs simulated attempts. See the module docstring and ``agents.executors.base``.

    Its only state is when its running attempts end (one timer heap for the event loop it runs
    on): one instance may serve every site of a fleet, and then all of their attempts share one
    loop timer. An ``InlineExecutor``: the agent starts its attempts with ``start_inline``, a
    whole dispatch batch in one step, with no task per attempt.
    """

    def __init__(self) -> None:
        self._timers: _Timers | None = None

    @property
    def needs_lease_file(self) -> bool:
        """False: no launch shim reads it, and nothing survives the agent process to re-adopt."""
        return False

    async def start(self, spec: LaunchSpec) -> SimAttempt:
        """Start a simulated attempt; returns at once. ``LaunchError`` (exit code 2) for a bad
        ``SG_SIM_SECONDS`` or ``SG_SIM_EXIT``."""
        return self.start_inline(spec, None)

    def start_inline(self, spec: LaunchSpec, on_end: OnEnd | None) -> SimAttempt:
        """``start`` without a coroutine; ``on_end(result)`` is called once when the attempt
        ends, from the event loop (never from within this call)."""
        seconds = _duration(spec)
        exit_code = _exit_code(spec)
        loop = asyncio.get_running_loop()
        timers = self._timers
        if timers is None or timers.loop is not loop:  # first use, or a new event loop
            timers = self._timers = _Timers(loop)
        return SimAttempt(spec, run_for=seconds, exit_code=exit_code, on_end=on_end, timers=timers)

    async def adopt(
        self, identity: str, spec: LaunchSpec, *, started_at: float | None = None
    ) -> SimAttempt | None:
        """None: a simulated attempt ends with the process that ran it."""
        return None

    async def finished_result(self, identity: str, spec: LaunchSpec) -> ExitResult | None:
        """None: nothing is recorded of simulated attempts."""
        return None

    async def launched_identity(self, spec: LaunchSpec) -> str | None:
        """None: an attempt the last agent process never journaled is gone with it."""
        return None

    async def stop_orphan(self, identity: str, *, grace_seconds: float) -> bool:
        """False: nothing of an earlier agent process's simulated attempts is left."""
        return False


class SimAttempt:
    """One simulated attempt: ended by its event loop's ``_Timers`` (or by ``terminate``)."""

    __slots__ = ("_identity", "_on_end", "_result", "_waiters")

    def __init__(
        self,
        spec: LaunchSpec,
        *,
        run_for: float,
        exit_code: int,
        on_end: OnEnd | None = None,
        timers: _Timers | None = None,
    ) -> None:
        """Ends with ``exit_code`` after ``run_for`` seconds (``inf``: only when stopped),
        unless the spec's max runtime comes first; then ``on_end(result)`` is called, if given.
        ``timers``: where its end waits (default: a ``_Timers`` of its own, for the running
        event loop)."""
        if timers is None:
            timers = _Timers(asyncio.get_running_loop())
        self._identity = f"{timers.identity_prefix}{next(_ids)}"
        self._result: ExitResult | None = None
        self._waiters: asyncio.Future[ExitResult] | None = None
        self._on_end = on_end
        limit = spec.max_runtime_seconds
        outcome = _SUCCESS if exit_code == 0 else ExitResult(exit_code)
        if limit is not None and limit < run_for:
            run_for, outcome = limit, ExitResult(None, signal.SIGTERM, timed_out_after=limit)
        if not math.isinf(run_for):
            timers.add(self, run_for, outcome)

    @property
    def identity(self) -> str:
        """``sim:<agent pid>:<n>``."""
        return self._identity

    @property
    def pid(self) -> None:
        """None: there is no process."""
        return None

    async def wait(self) -> ExitResult:
        """Wait until the attempt has ended."""
        if self._result is not None:
            return self._result
        if self._waiters is None:
            self._waiters = asyncio.get_running_loop().create_future()
        # shielded: a waiter that gives up must not end the attempt for the others
        return await asyncio.shield(self._waiters)

    async def terminate(self, grace_seconds: float) -> ExitResult:
        """End the attempt now, as a SIGTERM would; an ended one keeps its result."""
        self._end(ExitResult(None, signal.SIGTERM))
        return await self.wait()

    def _end(self, result: ExitResult) -> None:
        if self._result is not None:
            return
        self._result = result
        if self._waiters is not None and not self._waiters.done():
            self._waiters.set_result(result)
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            try:
                on_end(result)
            except Exception:  # the attempts ending with it must still end
                log.exception("simulated attempt %s: its end could not be reported", self._identity)


_RESOLUTION = time.get_clock_info("monotonic").resolution


class _Timers:
    """When the simulated attempts of one executor on one event loop end, on as few loop
    callbacks as possible.

    A timer handle per attempt would cost more than the rest of a simulated attempt: instead,
    attempts due now (0 s, the usual benchmark job) end together in one ``call_soon`` callback,
    and the others wait in one heap with one loop timer, set for the earliest of them. An
    attempt never ends before its time; a terminated one is skipped when its time comes.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.identity_prefix = f"sim:{os.getpid()}:"
        """Of its attempts' identities: ``sim:<agent pid>:``."""
        self._now: list[tuple[SimAttempt, ExitResult]] = []
        self._heap: list[tuple[float, int, SimAttempt, ExitResult]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def add(self, attempt: SimAttempt, seconds: float, outcome: ExitResult) -> None:
        """End ``attempt`` with ``outcome`` ``seconds`` from now."""
        if seconds <= 0:
            if not self._now:
                self.loop.call_soon(self._end_now)
            self._now.append((attempt, outcome))
            return
        when = self.loop.time() + seconds
        heapq.heappush(self._heap, (when, next(self._seq), attempt, outcome))
        if when < self._timer_at:
            self._arm(when)

    def _end_now(self) -> None:
        due, self._now = self._now, []
        for attempt, outcome in due:
            attempt._end(outcome)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._fire)
        self._timer_at = when

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        heap = self._heap
        limit = self.loop.time() + _RESOLUTION  # what the loop itself counts as due
        due: list[tuple[SimAttempt, ExitResult]] = []
        while heap and heap[0][0] <= limit:
            _, _, attempt, outcome = heapq.heappop(heap)
            due.append((attempt, outcome))
        if heap:
            self._arm(heap[0][0])
        for attempt, outcome in due:  # after re-arming: an ``on_end`` may add attempts
            attempt._end(outcome)


def _duration(spec: LaunchSpec) -> float:
    text = spec.env.get(SIM_SECONDS_VAR)
    if text is not None:
        seconds = _seconds(text)
        if seconds is None:
            raise _bad(spec, f"{SIM_SECONDS_VAR}={text!r} is not a number of seconds >= 0")
        return seconds
    if len(spec.argv) == 2 and os.path.basename(spec.argv[0]) == "sleep":
        return _sleep_seconds(spec.argv[1]) or 0.0
    return 0.0


def _exit_code(spec: LaunchSpec) -> int:
    text = spec.env.get(SIM_EXIT_VAR)
    if text is None:
        return 0
    try:
        code = int(text)
    except ValueError:
        code = -1
    if not 0 <= code <= 255:
        raise _bad(spec, f"{SIM_EXIT_VAR}={text!r} is not an exit code 0-255")
    return code


def _seconds(text: str) -> float | None:
    try:
        seconds = float(text)
    except ValueError:
        return None
    return None if math.isnan(seconds) or seconds < 0 else seconds


def _sleep_seconds(arg: str) -> float | None:
    """``sleep``'s argument in seconds (``1.5``, ``2m``, ``infinity``); None if it is none."""
    unit = _SLEEP_UNITS.get(arg[-1:])
    seconds = _seconds(arg[:-1] if unit is not None else arg)
    return None if seconds is None else seconds * (unit or 1.0)


def _bad(spec: LaunchSpec, problem: str) -> LaunchError:
    return LaunchError(
        spec.job_id, spec.attempt, f"simulated job: {problem}", exit_code=_BAD_SIM_VALUE
    )
