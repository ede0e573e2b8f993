"""The local executor: each attempt is a process group on this machine.

Each attempt runs under a small launch shim (``agents/executors/shim.py``) started as the leader
of a new session. The shim starts the job's argv (exec'd directly, never through a shell) as its
child in the same process group, waits for it, and records its exit status in ``exit.json`` beside
the attempt's stdout file (``exit_status_path``). The status being on disk is what lets an agent
that restarted, and so is no longer the shim's parent, re-adopt an attempt that is still running
(``LocalExecutor.adopt``) or learn how one that ended while it was down ended
(``LocalExecutor.finished_result``).

Stopping an attempt signals the group: SIGTERM (and SIGCONT, so stopped processes see it), then
SIGKILL after the grace period; the shim survives the SIGTERM to record how the job took it. When
the shim exits, anything the job left behind in its group is stopped the same way before the
attempt counts as ended, so a finished attempt never leaves processes holding its GPU slots.

Processes are "alive" unless they are gone or zombies (a zombie has released everything and
only waits for its parent, which may not be us, to reap it). On Linux this is read from /proc.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from agents.executors.base import ExitResult, LaunchError, LaunchSpec, job_environment

__all__ = [
    "LocalAttempt",
    "LocalExecutor",
    "exit_status_path",
    "process_group_alive",
    "stop_process_group",
]

log = logging.getLogger(__name__)

_PROC = Path("/proc")
_FORCE_WAIT_SECONDS = 5.0
_SHIM = Path(__file__).resolve().with_name("shim.py")
# -I: no PYTHON* variables, no script or user directories on sys.path; -S: no site-packages.
_SHIM_FLAGS = ("-I", "-S")


def _lease_flags(spec: LaunchSpec) -> tuple[str, ...]:
    if spec.lease_file is None:
        return ()
    return ("--lease-file", str(spec.lease_file), "--lease-grace", f"{spec.kill_grace_seconds:g}")


def exit_status_path(spec: LaunchSpec) -> Path:
    """Where the shim records how ``spec``'s attempt ended: ``exit.json`` beside its stdout file."""
    return spec.stdout_path.parent / "exit.json"


def _identity_path(spec: LaunchSpec) -> Path:
    """Where the shim writes its own identity as it starts, before the job exists."""
    return spec.stdout_path.parent / "shim.identity"


class LocalExecutor:
    """Runs attempts as local process groups. See ``agents.executors.base`` for the contract."""

    def __init__(
        self,
        *,
        base_env: Mapping[str, str] | None = None,
        poll_interval_seconds: float = 0.05,
    ) -> None:
        """
        ``base_env`` is the environment every job starts from (the entrypoint passes the agent's
        own environment, so ``PATH`` and friends carry over); the job's ``env`` and the agent's
        variables are layered on top. ``poll_interval_seconds`` is how often a stopping process
        group, or an adopted attempt, is checked.
        """
        self._base_env = dict(base_env or {})
        self._poll = poll_interval_seconds

    @property
    def needs_lease_file(self) -> bool:
        """True: each attempt's launch shim stops its job when the lease in the file ends, and a
        restarted agent re-adopts attempts under the lease it finds there."""
        return True

    async def start(self, spec: LaunchSpec) -> LocalAttempt:
        """Start the attempt's process group; ``LaunchError`` (127/126) if it cannot be exec'd.

        Returns once the shim has started the job. The shim runs on this interpreter
        (``sys.executable``), which adds its start-up time (about 15 ms) to every start.
        """
        env = {**self._base_env, **spec.env, **job_environment(spec)}
        status_path = exit_status_path(spec)
        out, err = _open_outputs(spec)
        with out, err:
            status_path.unlink(missing_ok=True)
            _identity_path(spec).unlink(missing_ok=True)
            report_fd, shim_end = os.pipe()
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    *_SHIM_FLAGS,
                    str(_SHIM),
                    "--report-fd",
                    str(shim_end),
                    *_lease_flags(spec),
                    str(status_path),
                    "--",
                    *spec.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=spec.working_dir,
                    env=env,
                    start_new_session=True,
                    pass_fds=(shim_end,),
                )
            except BaseException:
                os.close(report_fd)
                raise
            finally:
                os.close(shim_end)  # the shim holds the only write end: EOF once it reported
            try:
                report = (await _read_to_end(report_fd)).decode("ascii", "replace").split()
            except BaseException:
                _signal_group(proc.pid, signal.SIGKILL)
                raise
            if report[:1] == ["exec"] and len(report) == 3 and report[1].isdigit():
                await proc.wait()
                exit_code, error = int(report[1]), int(report[2])
                problem = f"cannot execute {spec.argv[0]!r}: {os.strerror(error)}"
                err.write(f"sg-agent: {problem}\n".encode())
                raise LaunchError(spec.job_id, spec.attempt, problem, exit_code=exit_code)
        if report != ["ok"]:
            result = ExitResult.from_returncode(await proc.wait())
            raise RuntimeError(
                f"the launch shim of {spec.job_id} attempt {spec.attempt} ended before starting "
                f"the job ({result.message}; its stderr is in {spec.stderr_path})"
            )
        log.debug("started %s attempt %d under shim pid %d", spec.job_id, spec.attempt, proc.pid)
        return LocalAttempt(
            spec,
            identity=f"local:{proc.pid}:{_start_time(proc.pid) or 0}",
            proc=proc,
            run_for=spec.max_runtime_seconds,
            poll_interval_seconds=self._poll,
        )

    async def adopt(
        self, identity: str, spec: LaunchSpec, *, started_at: float | None = None
    ) -> LocalAttempt | None:
        """Watch an attempt an earlier agent process started; None if its process group is gone.

        The handle polls the group every poll interval (this process is not the shim's parent, so
        it cannot wait for it) and takes the result from the shim's status file. Without one (the
        shim was killed, or the attempt predates the shim) the result says SIGKILL if this
        handle had to kill the group, else that it ended without an exit status. The max runtime
        counts from ``started_at`` (epoch seconds, ``time.time()``), or from now if None.
        """
        parsed = _parse_identity(identity)
        if parsed is None:
            return None
        pgid, start_time = parsed
        current = _start_time(pgid)
        if current is not None and start_time and current != start_time:
            return None  # the pid names another process now, so the group is long gone
        if not process_group_alive(pgid):
            return None
        run_for = spec.max_runtime_seconds
        if run_for is not None and started_at is not None:
            run_for = max(run_for - (time.time() - started_at), 0.0)
        log.info("adopted %s attempt %d (%s)", spec.job_id, spec.attempt, identity)
        return LocalAttempt(
            spec, identity=identity, proc=None, run_for=run_for, poll_interval_seconds=self._poll
        )

    async def finished_result(self, identity: str, spec: LaunchSpec) -> ExitResult | None:
        """How an attempt ended, as its shim recorded it; None if there is no record.

        For an attempt whose process group is gone (``adopt`` returned None). ``identity`` is not
        needed here (it may be empty): the record is found from ``spec``'s output directory.
        """
        returncode = _read_status(exit_status_path(spec))
        return None if returncode is None else ExitResult.from_returncode(returncode)

    async def launched_identity(self, spec: LaunchSpec) -> str | None:
        """The identity of an attempt started for ``spec`` that its agent never journaled (the
        shim writes it before the job starts), or None if none was started."""
        try:
            text = _identity_path(spec).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return text if _parse_identity(text) is not None else None

    async def stop_orphan(self, identity: str, *, grace_seconds: float) -> bool:
        """Stop the process group of an attempt a previous agent process started."""
        parsed = _parse_identity(identity)
        if parsed is None:
            return False
        pid, start_time = parsed
        current = _start_time(pid)
        if current is not None and start_time and current != start_time:
            # The pid now names another process (and group): nothing of ours is left.
            return False
        return await stop_process_group(pid, grace_seconds, poll_interval_seconds=self._poll)


class LocalAttempt:
    """A local attempt: its shim (the leader of its process group) and the group.

    Started here (``proc`` is the shim, our child) or adopted after an agent restart (``proc`` is
    None: the shim's liveness is polled).
    """

    def __init__(
        self,
        spec: LaunchSpec,
        *,
        identity: str,
        proc: asyncio.subprocess.Process | None,
        run_for: float | None,
        poll_interval_seconds: float = 0.05,
    ) -> None:
        """``run_for``: seconds until the max runtime is up (None for no limit)."""
        parsed = _parse_identity(identity)
        if parsed is None:
            raise ValueError(f"not a local attempt identity: {identity!r}")
        self._spec = spec
        self._identity = identity
        self._pgid, self._start_time = parsed  # start_new_session: the shim's pid is the group id
        self._proc = proc
        self._run_for = run_for
        self._poll = poll_interval_seconds
        self._timed_out_after: float | None = None
        self._stopping: asyncio.Task[signal.Signals | None] | None = None
        self._supervisor = asyncio.create_task(
            self._supervise(), name=f"attempt {spec.job_id}/{spec.attempt}"
        )

    @property
    def identity(self) -> str:
        """``local:<shim pid>:<its start time in clock ticks>``."""
        return self._identity

    @property
    def pid(self) -> int:
        """Pid of the shim, the group's leader (also the process group id)."""
        return self._pgid

    async def wait(self) -> ExitResult:
        """Wait until the shim has exited and the group is gone."""
        return await asyncio.shield(self._supervisor)

    async def terminate(self, grace_seconds: float) -> ExitResult:
        """SIGTERM the group, SIGKILL it after ``grace_seconds``, and wait for the end."""
        self._begin_stop(grace_seconds)
        return await self.wait()

    def _begin_stop(self, grace_seconds: float) -> None:
        if self._stopping is None:
            self._stopping = asyncio.create_task(
                _stop_group(self._pgid, grace_seconds, poll_interval_seconds=self._poll)
            )

    async def _supervise(self) -> ExitResult:
        leader = asyncio.ensure_future(self._leader_exit())
        if self._run_for is not None:
            try:
                await asyncio.wait_for(asyncio.shield(leader), timeout=self._run_for)
            except TimeoutError:
                limit = self._spec.max_runtime_seconds
                if self._stopping is None and limit is not None:
                    self._timed_out_after = limit
                    log.info(
                        "%s attempt %d exceeded its max runtime of %gs; stopping it",
                        self._spec.job_id,
                        self._spec.attempt,
                        limit,
                    )
                self._begin_stop(self._spec.kill_grace_seconds)
        returncode = await leader
        if self._stopping is None and process_group_alive(self._pgid):
            log.info(
                "%s attempt %d: its shim exited; stopping what is left in its process group",
                self._spec.job_id,
                self._spec.attempt,
            )
            self._begin_stop(self._spec.kill_grace_seconds)
        last_signal = None if self._stopping is None else await self._stopping
        recorded = _read_status(exit_status_path(self._spec))
        if recorded is not None:
            returncode = recorded
        elif returncode is None and last_signal == signal.SIGKILL:
            returncode = -signal.SIGKILL  # the shim could not record it: it was running till then
        if returncode is None:
            return ExitResult(None, timed_out_after=self._timed_out_after)
        return ExitResult.from_returncode(returncode, timed_out_after=self._timed_out_after)

    async def _leader_exit(self) -> int | None:
        """The shim's return code once it has exited; None for an adopted one (not our child)."""
        if self._proc is not None:
            return await self._proc.wait()
        # Polling /proc: a process that is not our child offers nothing to await.
        while _process_alive(self._pgid, self._start_time):  # noqa: ASYNC110
            await asyncio.sleep(self._poll)
        return None


async def stop_process_group(
    pgid: int, grace_seconds: float, *, poll_interval_seconds: float = 0.05
) -> bool:
    """SIGTERM process group ``pgid``, SIGKILL it after ``grace_seconds``, wait until it is gone.

    Returns whether anything in the group was alive to begin with.
    """
    last = await _stop_group(pgid, grace_seconds, poll_interval_seconds=poll_interval_seconds)
    return last is not None


async def _stop_group(
    pgid: int, grace_seconds: float, *, poll_interval_seconds: float
) -> signal.Signals | None:
    """``stop_process_group``, returning the last signal it sent (None: nothing was alive)."""
    if not process_group_alive(pgid):
        return None
    _signal_group(pgid, signal.SIGTERM)
    _signal_group(pgid, signal.SIGCONT)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_seconds
    while loop.time() < deadline:
        await asyncio.sleep(min(poll_interval_seconds, max(deadline - loop.time(), 0.0)))
        if not process_group_alive(pgid):
            return signal.SIGTERM
    _signal_group(pgid, signal.SIGKILL)
    deadline = loop.time() + _FORCE_WAIT_SECONDS
    while process_group_alive(pgid):
        if loop.time() >= deadline:
            log.warning("process group %d still alive %gs after SIGKILL", pgid, _FORCE_WAIT_SECONDS)
            break
        await asyncio.sleep(poll_interval_seconds)
    return signal.SIGKILL


def process_group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is alive (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, but not ours to signal
    if not _PROC.is_dir():
        return True
    return _has_live_member(pgid)


def _has_live_member(pgid: int) -> bool:
    with os.scandir(_PROC) as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            fields = _stat_fields(int(entry.name))
            # fields[0] is the state (field 3 of /proc/PID/stat), fields[2] the process group.
            if fields is not None and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
    return False


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (after the parenthesised command name), or None if gone."""
    try:
        data = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].decode("ascii", "replace").split()


def _process_alive(pid: int, start_time: int) -> bool:
    """Whether ``pid`` is alive, not a zombie, and (if ``start_time`` is known) the same process."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return not start_time or len(fields) < 20 or int(fields[19]) == start_time


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22), or None if unknown."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[19])


def _open_outputs(spec: LaunchSpec) -> tuple[BinaryIO, BinaryIO]:
    """Create the attempt's directories and open its output files for appending."""
    spec.working_dir.mkdir(parents=True, exist_ok=True)
    spec.stdout_path.parent.mkdir(parents=True, exist_ok=True)
    spec.stderr_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(spec.stdout_path, "ab")  # noqa: SIM115 - the caller closes both
    try:
        err = open(spec.stderr_path, "ab")  # noqa: SIM115
    except BaseException:
        out.close()
        raise
    return out, err


async def _read_to_end(fd: int) -> bytes:
    """Read the pipe ``fd`` until EOF without blocking the loop; closes it."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb", buffering=0)  # the transport closes it
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
    except BaseException:
        pipe.close()
        raise
    try:
        return await reader.read()
    finally:
        transport.close()


def _read_status(path: Path) -> int | None:
    """The return code a shim recorded in ``path``, or None if there is none (or it is garbled)."""
    try:
        returncode = json.loads(path.read_bytes())["returncode"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("cannot read the exit status in %s: %s", path, exc)
        return None
    if type(returncode) is not int:
        log.warning("cannot read the exit status in %s: returncode %r", path, returncode)
        return None
    return returncode


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        log.warning("not permitted to send %s to process group %d", sig.name, pgid)


def _parse_identity(identity: str) -> tuple[int, int] | None:
    kind, _, rest = identity.partition(":")
    pid_text, _, start_text = rest.partition(":")
    if kind != "local" or not pid_text.isdigit() or not (start_text or "0").isdigit():
        return None
    return int(pid_text), int(start_text or "0")
