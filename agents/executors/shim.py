"""The local executor's launch shim: runs one job as its child and records how it ended.

Usage (the local executor runs it by path, ``-I -S`` keep site-packages and ``PYTHON*`` out)::

    python -I -S shim.py [--report-fd FD] STATUS_FILE -- PROGRAM [ARG...]

The executor starts the shim, not the job, as the leader of a new session, so the shim's process
group is the attempt's. The shim starts PROGRAM as its child in that group, inheriting the
standard streams, the working directory and the environment exactly as the shim received it;
waits for it; and writes how it ended to STATUS_FILE atomically (a temporary file, then
``os.replace``) as JSON ``{"returncode": N}``, negative for death by signal as in ``subprocess``.
It then ends the same way: with the same exit code, or by raising the same signal on itself, so
whoever waits for the shim sees the job's wait status. An agent that restarted, and so is no
longer the shim's parent, reads STATUS_FILE instead.

SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are caught and otherwise ignored: the
executor signals the whole group, so the job gets them itself, and the shim must outlive it to
record its status. The job starts with the dispositions the shim started with (except SIGPIPE
and SIGXFSZ, set to the default as ``subprocess`` does).

If PROGRAM cannot be executed, the status is 127 (not found) or 126 (cannot execute) and carries
``"exec_errno"``. With ``--report-fd`` the shim writes ``ok`` (the job runs) or ``exec CODE ERRNO``
to that pipe and closes it, so the executor knows the outcome before ``start()`` returns.

The shim runs on every attempt start, so it imports only built-in modules: ``posix`` (what ``os``
wraps) and ``_signal`` (what ``signal`` wraps). Importing ``os`` and ``signal`` instead would add
about 9 ms to the interpreter's own start-up of about 12 ms.
"""

import errno
import posix
import sys
import time

TYPE_CHECKING = False  # not from ``typing``: importing it would double the shim's start-up time
if TYPE_CHECKING:
    import signal as _signal  # same names; ``_signal`` has no type stubs
    from collections.abc import Iterable, Mapping
    from signal import _HANDLER
else:
    import _signal

__all__ = ["exit_like", "main"]

_CAUGHT = (
    _signal.SIGTERM,
    _signal.SIGINT,
    _signal.SIGHUP,
    _signal.SIGQUIT,
    _signal.SIGUSR1,
    _signal.SIGUSR2,
)
# Python ignores these at start-up; the job gets the defaults, as ``subprocess`` gives them.
_DEFAULT_IN_JOB = (_signal.SIGPIPE, _signal.SIGXFSZ)
# Signals whose default action dumps core: the shim re-raises them without dumping its own.
_CORE = frozenset(
    {
        _signal.SIGQUIT,
        _signal.SIGILL,
        _signal.SIGTRAP,
        _signal.SIGABRT,
        _signal.SIGBUS,
        _signal.SIGFPE,
        _signal.SIGSEGV,
        _signal.SIGXCPU,
        _signal.SIGXFSZ,
        _signal.SIGSYS,
    }
)
_USAGE = (
    "usage: shim.py [--report-fd FD] [--lease-file PATH --lease-grace SECONDS] "
    "STATUS_FILE -- PROGRAM [ARG...]\n"
)
_LEASE_POLL_SECONDS = 0.2
_LEASE_MARGIN_SECONDS = 0.5


def main(args: list[str]) -> int:
    """Run the job ``args`` describes; returns its return code (negative: killed by a signal)."""
    report_fd = -1
    lease_file = ""
    lease_grace = 0.0
    while len(args) >= 2 and args[0] in ("--report-fd", "--lease-file", "--lease-grace"):
        flag, value, args = args[0], args[1], args[2:]
        try:
            if flag == "--report-fd":
                report_fd = int(value)
            elif flag == "--lease-file":
                lease_file = value
            else:
                lease_grace = float(value)
        except ValueError:
            sys.stderr.write(_USAGE)
            return 2
    if len(args) < 3 or args[1] != "--":
        sys.stderr.write(_USAGE)
        return 2
    status_path, argv = args[0], args[2:]
    # Caught, not ignored: ignored dispositions would be inherited by the job.
    received: dict[int, _HANDLER] = {sig: _signal.signal(sig, _keep_waiting) for sig in _CAUGHT}
    # With SIGCHLD ignored, the kernel would reap the job before the shim could wait for it.
    received[_signal.SIGCHLD] = _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    if report_fd >= 0:
        posix.set_inheritable(report_fd, False)
    # Before the job exists: an agent that dies before journaling this attempt's identity
    # finds it here after a restart, and the job is never left running unknown to it.
    _write_status(_identity_path(status_path), f"local:{posix.getpid()}:{_own_start_time()}\n")
    try:
        pid = _spawn(argv, _received_environment(), received)
    except OSError as exc:
        code = 127 if exc.errno == errno.ENOENT else 126
        _write_status(status_path, f'{{"returncode": {code}, "exec_errno": {exc.errno or 0}}}\n')
        _report(report_fd, f"exec {code} {exc.errno or 0}")
        return code
    _report(report_fd, "ok")
    if lease_file:
        wait_status = _wait_within_lease(pid, lease_file, lease_grace)
    else:
        _, wait_status = posix.waitpid(pid, 0)  # retried after each caught signal (PEP 475)
    returncode = posix.waitstatus_to_exitcode(wait_status)
    _write_status(status_path, f'{{"returncode": {returncode}}}\n')
    return returncode


def _wait_within_lease(pid: int, lease_file: str, grace: float) -> int:
    """Wait for the job, stopping it if the agent's lease runs out: the last line of defence when
    the agent itself cannot (frozen, say), so that the job never outlives the lease by more than
    a margin plus the kill grace, whatever happens to the agent.

    The agent keeps LEASE_FILE holding its lease's end (epoch seconds) and stops its attempts
    itself when the lease ends; the shim acts only ``_LEASE_MARGIN_SECONDS`` later. It sends the
    group SIGTERM (the shim itself keeps waiting), then SIGKILL after ``grace`` seconds (which ends
    the shim too: the agent then finds the attempt gone with the lease expired). A missing or
    unreadable file means no lease yet: nothing is stopped.
    """
    killing_at = 0.0
    while True:
        done, wait_status = posix.waitpid(pid, posix.WNOHANG)
        if done:
            return wait_status
        now = time.time()
        if not killing_at:
            until = _lease_until(lease_file)
            if until and now > until + _LEASE_MARGIN_SECONDS:
                sys.stderr.write(
                    "sg-shim: the agent's lease ended and the agent did not stop the job; "
                    "stopping it\n"
                )
                sys.stderr.flush()
                posix.killpg(posix.getpgid(0), _signal.SIGTERM)
                killing_at = now + grace
        elif now >= killing_at:
            posix.killpg(posix.getpgid(0), _signal.SIGKILL)  # the shim with it
        time.sleep(_LEASE_POLL_SECONDS)


def _identity_path(status_path: str) -> str:
    """``shim.identity`` beside the status file (the executor reads it there)."""
    head, sep, _ = status_path.rpartition("/")
    return f"{head}{sep}shim.identity"


def _own_start_time() -> int:
    """This process's start time in clock ticks since boot (field 22 of /proc/self/stat)."""
    fd = posix.open("/proc/self/stat", posix.O_RDONLY | posix.O_CLOEXEC)
    try:
        data = posix.read(fd, 4096)
    finally:
        posix.close(fd)
    return int(data[data.rfind(b")") + 2 :].split()[19])


def _lease_until(path: str) -> float:
    """The lease's end from the agent's lease file, or 0.0 when there is none to read."""
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError:
        return 0.0
    try:
        return float(posix.read(fd, 64) or b"0")
    except (OSError, ValueError):
        return 0.0
    finally:
        posix.close(fd)


def exit_like(returncode: int) -> None:
    """Exit with ``returncode``, or for a negative one die by that signal, as the job did."""
    if returncode < 0:
        signum = -returncode
        if signum in _CORE:
            import resource  # only here: keeps the common path's imports minimal

            _, hard = resource.getrlimit(resource.RLIMIT_CORE)
            resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
        sys.stderr.flush()
        if signum not in (_signal.SIGKILL, _signal.SIGSTOP):  # those cannot be caught or ignored
            _signal.signal(signum, _signal.SIG_DFL)  # e.g. SIGPIPE, which Python ignores
        _signal.raise_signal(signum)
        posix._exit(128 + signum)  # not reached unless the signal could not end the shim
    sys.stderr.flush()
    posix._exit(returncode)  # skips the interpreter's clean-up (3 ms); there is nothing to clean


def _spawn(argv: list[str], env: dict[bytes, bytes], dispositions: "Mapping[int, _HANDLER]") -> int:
    """Fork and exec the job as ``subprocess`` does; a failed exec raises its error here.

    Not ``posix_spawn``: glibc's leaves its internal signals (32, 33) ignored in the job.
    """
    errors_read, errors_write = posix.pipe()  # close-on-exec: EOF with no data once exec worked
    mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, _CAUGHT)  # until the child reset them
    pid = posix.fork()
    if pid == 0:
        _exec_job(argv, env, dispositions, errors_write, mask)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
    posix.close(errors_write)
    error = b""
    while chunk := posix.read(errors_read, 64):
        error += chunk
    posix.close(errors_read)
    if not error:
        return pid
    posix.waitpid(pid, 0)
    number = int(error)
    raise OSError(number, posix.strerror(number))


def _exec_job(
    argv: list[str],
    env: dict[bytes, bytes],
    dispositions: "Mapping[int, _HANDLER]",
    errors_fd: int,
    mask: "Iterable[int]",
) -> None:
    """In the forked child: the received signal dispositions and mask, then exec; never returns.

    Tries every ``PATH`` entry like ``subprocess`` and reports the first error that is not
    "not found" (else the last) to ``errors_fd``.
    """
    try:
        for signum, handler in dispositions.items():  # exec would reset caught ones anyway
            ignored = handler == _signal.SIG_IGN
            _signal.signal(signum, _signal.SIG_IGN if ignored else _signal.SIG_DFL)
        for signum in _DEFAULT_IN_JOB:
            _signal.signal(signum, _signal.SIG_DFL)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
        first = last = 0
        for candidate in _candidates(argv[0], env):
            try:
                posix.execve(candidate, argv, env)
            except OSError as exc:
                last = exc.errno or 0
                if not first and last not in (errno.ENOENT, errno.ENOTDIR):
                    first = last
        posix.write(errors_fd, str(first or last).encode())
    finally:
        posix._exit(127)


def _candidates(program: str, env: dict[bytes, bytes]) -> list[str]:
    """Paths to try for ``program``: itself if it has a slash, else one per ``PATH`` entry."""
    if "/" in program:
        return [program]
    path = env.get(b"PATH")
    dirs = (
        "/bin:/usr/bin"
        if path is None
        else path.decode(sys.getfilesystemencoding(), "surrogateescape")
    )
    return [
        f"{directory.rstrip('/')}/{program}" if directory else program
        for directory in dirs.split(":")
    ]


def _keep_waiting(signum: int, frame: object) -> None:
    """Handler of the stopping signals: the job got them too; the shim waits for it to end."""


def _received_environment() -> dict[bytes, bytes]:
    """The environment the shim was started with, untouched by the interpreter's start-up.

    Python may add variables to its own environment as it starts (``LC_CTYPE`` when it coerces
    the C locale); ``/proc/self/environ`` still holds the block exactly as the executor passed it.
    """
    try:
        with open("/proc/self/environ", "rb") as file:
            data = file.read()
    except OSError:
        return posix.environ
    env: dict[bytes, bytes] = {}
    for entry in data.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and name:
            env.setdefault(name, value)  # the first wins, as with getenv()
    return env


def _write_status(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    flags = posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC | posix.O_CLOEXEC
    try:
        fd = posix.open(tmp, flags, 0o644)
        try:
            posix.write(fd, text.encode())
        finally:
            posix.close(fd)
        posix.replace(tmp, path)
    except OSError as exc:
        sys.stderr.write(f"sg-agent: cannot record the exit status in {path}: {exc}\n")


def _report(fd: int, message: str) -> None:
    if fd < 0:
        return
    try:
        posix.write(fd, message.encode())
    except OSError:
        pass  # the agent went away; the status file still tells a restarted one
    finally:
        posix.close(fd)


if __name__ == "__main__":
    exit_like(main(sys.argv[1:]))
