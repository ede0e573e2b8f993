"""The simulated executor: attempts that start nothing and only take their declared time.

For benchmarks and simulated fleets (``agents.fleet``): an attempt costs a timer on the event
loop, not a process or a thread, so thousands of sites can run thousands of jobs in one
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
import itertools
import math
import os
import signal

from agents.executors.base import ExitResult, LaunchError, LaunchSpec

__all__ = ["SIM_EXIT_VAR", "SIM_SECONDS_VAR", "SimAttempt", "SimExecutor"]

SIM_SECONDS_VAR = "SG_SIM_SECONDS"
"""Job env variable: how long a simulated attempt runs, in seconds (``inf``: until stopped)."""
SIM_EXIT_VAR = "SG_SIM_EXIT"
"""Job env variable: the exit code of a simulated attempt (0-255)."""

_BAD_SIM_VALUE = 2  # shell convention for a misused command
_SLEEP_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ids = itertools.count(1)


class SimExecutor:
    """Runs simulated attempts. See the module docstring and ``agents.executors.base``.

    Holds no state of its own: one instance may serve every site of a fleet.
    """

    async def start(self, spec: LaunchSpec) -> SimAttempt:
        """Start a simulated attempt; returns at once. ``LaunchError`` (exit code 2) for a bad
        ``SG_SIM_SECONDS`` or ``SG_SIM_EXIT``."""
        seconds = _duration(spec)
        exit_code = _exit_code(spec)
        return SimAttempt(spec, run_for=seconds, exit_code=exit_code)

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
    """One simulated attempt: a future resolved by a loop timer (or by ``terminate``)."""

    def __init__(self, spec: LaunchSpec, *, run_for: float, exit_code: int) -> None:
        """Ends with ``exit_code`` after ``run_for`` seconds (``inf``: only when stopped),
        unless the spec's max runtime comes first."""
        loop = asyncio.get_running_loop()
        self._identity = f"sim:{os.getpid()}:{next(_ids)}"
        self._result: asyncio.Future[ExitResult] = loop.create_future()
        limit = spec.max_runtime_seconds
        outcome = ExitResult(exit_code)
        if limit is not None and limit < run_for:
            run_for, outcome = limit, ExitResult(None, signal.SIGTERM, timed_out_after=limit)
        self._timer = None if math.isinf(run_for) else loop.call_later(run_for, self._end, outcome)

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
        return await asyncio.shield(self._result)

    async def terminate(self, grace_seconds: float) -> ExitResult:
        """End the attempt now, as a SIGTERM would; an ended one keeps its result."""
        self._end(ExitResult(None, signal.SIGTERM))
        return await self.wait()

    def _end(self, result: ExitResult) -> None:
        if self._result.done():
            return
        if self._timer is not None:
            self._timer.cancel()
        self._result.set_result(result)


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
