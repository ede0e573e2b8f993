"""The local executor: each attempt is a process group on this machine.

The job's argv is exec'd directly (never through a shell) as the leader of a new session, so
the whole tree it starts shares one process group. Stopping an attempt signals the group:
SIGTERM (and SIGCONT, so stopped processes see it), then SIGKILL after the grace period. When the
leader exits by itself, anything it left behind in its group is stopped the same way before the
attempt counts as ended, so a finished attempt never leaves processes holding its GPU slots.

Processes are "alive" unless they are gone or zombies (a zombie has released everything and
only waits for its parent, which may not be us, to reap it). On Linux this is read from /proc.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from agents.executors.base import ExitResult, LaunchError, LaunchSpec, job_environment

__all__ = ["LocalAttempt", "LocalExecutor", "process_group_alive", "stop_process_group"]

log = logging.getLogger(__name__)

_PROC = Path("/proc")
_FORCE_WAIT_SECONDS = 5.0


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
        group is checked.
        """
        self._base_env = dict(base_env or {})
        self._poll = poll_interval_seconds

    async def start(self, spec: LaunchSpec) -> LocalAttempt:
        """Start the attempt's process group; ``LaunchError`` (127/126) if it cannot be exec'd."""
        env = {**self._base_env, **spec.env, **job_environment(spec)}
        out, err = _open_outputs(spec)
        with out, err:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *spec.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=spec.working_dir,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                exit_code = 127 if exc.errno == errno.ENOENT else 126
                problem = f"cannot execute {spec.argv[0]!r}: {exc.strerror or exc}"
                err.write(f"sg-agent: {problem}\n".encode())
                raise LaunchError(spec.job_id, spec.attempt, problem, exit_code=exit_code) from exc
        log.debug("started %s attempt %d as pid %d", spec.job_id, spec.attempt, proc.pid)
        return LocalAttempt(proc, spec, poll_interval_seconds=self._poll)

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
    """A running local attempt: the leader process and its process group."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        spec: LaunchSpec,
        *,
        poll_interval_seconds: float = 0.05,
    ) -> None:
        self._proc = proc
        self._spec = spec
        self._poll = poll_interval_seconds
        self._pgid = proc.pid  # start_new_session: the leader's pid is the group id
        self._identity = f"local:{proc.pid}:{_start_time(proc.pid) or 0}"
        self._timed_out_after: float | None = None
        self._stopping: asyncio.Task[bool] | None = None
        self._supervisor = asyncio.create_task(
            self._supervise(), name=f"attempt {spec.job_id}/{spec.attempt}"
        )

    @property
    def identity(self) -> str:
        """``local:<pid>:<start time in clock ticks>``."""
        return self._identity

    @property
    def pid(self) -> int:
        """Pid of the leader (also the process group id)."""
        return self._proc.pid

    async def wait(self) -> ExitResult:
        """Wait until the leader has exited and its group is gone."""
        return await asyncio.shield(self._supervisor)

    async def terminate(self, grace_seconds: float) -> ExitResult:
        """SIGTERM the group, SIGKILL it after ``grace_seconds``, and wait for the end."""
        self._begin_stop(grace_seconds)
        return await self.wait()

    def _begin_stop(self, grace_seconds: float) -> None:
        if self._stopping is None:
            self._stopping = asyncio.create_task(
                stop_process_group(self._pgid, grace_seconds, poll_interval_seconds=self._poll)
            )

    async def _supervise(self) -> ExitResult:
        limit = self._spec.max_runtime_seconds
        if limit is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._proc.wait()), timeout=limit)
            except TimeoutError:
                if self._stopping is None:
                    self._timed_out_after = limit
                    log.info(
                        "%s attempt %d exceeded its max runtime of %gs; stopping it",
                        self._spec.job_id,
                        self._spec.attempt,
                        limit,
                    )
                self._begin_stop(self._spec.kill_grace_seconds)
        returncode = await self._proc.wait()
        if self._stopping is None and process_group_alive(self._pgid):
            log.info(
                "%s attempt %d: leader exited, stopping what it left in its process group",
                self._spec.job_id,
                self._spec.attempt,
            )
            self._begin_stop(self._spec.kill_grace_seconds)
        if self._stopping is not None:
            await self._stopping
        return ExitResult.from_returncode(returncode, timed_out_after=self._timed_out_after)


async def stop_process_group(
    pgid: int, grace_seconds: float, *, poll_interval_seconds: float = 0.05
) -> bool:
    """SIGTERM process group ``pgid``, SIGKILL it after ``grace_seconds``, wait until it is gone.

    Returns whether anything in the group was alive to begin with.
    """
    if not process_group_alive(pgid):
        return False
    _signal_group(pgid, signal.SIGTERM)
    _signal_group(pgid, signal.SIGCONT)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_seconds
    while loop.time() < deadline:
        await asyncio.sleep(min(poll_interval_seconds, max(deadline - loop.time(), 0.0)))
        if not process_group_alive(pgid):
            return True
    _signal_group(pgid, signal.SIGKILL)
    deadline = loop.time() + _FORCE_WAIT_SECONDS
    while process_group_alive(pgid):
        if loop.time() >= deadline:
            log.warning("process group %d still alive %gs after SIGKILL", pgid, _FORCE_WAIT_SECONDS)
            break
        await asyncio.sleep(poll_interval_seconds)
    return True


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
