"""The program every fault-harness job runs, and the reader of what it leaves behind.

``python -m tests.faults.jobprog --log-dir DIR --seconds S [--exit-code N]`` reads ``JOB_ID``,
``JOB_ATTEMPT`` and ``SG_SITE`` (set by the agent) and writes ``DIR/{job}.{attempt}.{pid}.rec``
(the job id quoted with ``urllib.parse.quote(safe="")``). Its first line is JSON
``{"job", "attempt", "site", "pid", "start"}``; while the program sleeps ``S`` seconds in all it
"ticks" (sets the file's mtime) every 0.1 s; then it appends ``{"end": ..., "how": "done"}`` and
exits with ``N``. On SIGTERM it appends ``{"end": ..., "how": "sigterm"}`` and exits 143. A run
killed with SIGKILL has no end line: its last tick is its end, to within 0.1 s.

``read_records(DIR)`` turns the files into ``Run`` values for the checker.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

__all__ = ["TICK_SECONDS", "Run", "main", "read_records", "record_name"]

TICK_SECONDS = 0.1
"""How often a running job sets its record's mtime."""

_SIGTERM_EXIT = 128 + signal.SIGTERM


@dataclass(frozen=True)
class Run:
    """One run of a job, as its record file tells it."""

    job: str
    """Job id (``JOB_ID``)."""
    attempt: int
    """Attempt number (``JOB_ATTEMPT``)."""
    site: str
    """Site that ran it (``SG_SITE``)."""
    pid: int
    """Process id of the run."""
    start: float
    """Wall-clock time (``time.time()``) the run started."""
    end: float
    """Wall-clock time it ended: its end line, else the file's mtime (its last tick)."""
    how: str
    """``"done"`` (ran to the end), ``"sigterm"``, ``"killed"`` (no end line, process gone) or
    ``"running"`` (no end line, process still alive; ``end`` is its last tick)."""

    @property
    def seconds(self) -> float:
        """How long it ran."""
        return self.end - self.start


def record_name(job: str, attempt: int, pid: int) -> str:
    """The record file name of a run: ``{quoted job}.{attempt}.{pid}.rec``."""
    return f"{quote(job, safe='')}.{attempt}.{pid}.rec"


def read_records(log_dir: str | os.PathLike[str]) -> list[Run]:
    """Every run recorded in ``log_dir``, by start time (files still being created are skipped)."""
    runs = []
    for path in Path(log_dir).glob("*.rec"):
        try:
            mtime = path.stat().st_mtime
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            continue
        if not lines:
            continue
        head = json.loads(lines[0])
        end, how = mtime, ""
        for line in lines[1:]:
            try:
                tail = json.loads(line)
            except json.JSONDecodeError:
                continue  # an end line cut short by SIGKILL
            end, how = float(tail["end"]), str(tail["how"])
        if not how:
            how = "running" if _alive(int(head["pid"])) else "killed"
        runs.append(
            Run(
                job=str(head["job"]),
                attempt=int(head["attempt"]),
                site=str(head["site"]),
                pid=int(head["pid"]),
                start=float(head["start"]),
                end=end,
                how=how,
            )
        )
    runs.sort(key=lambda r: (r.start, r.job, r.attempt, r.pid))
    return runs


def _alive(pid: int) -> bool:
    from orchestrator.processes import pid_alive  # not on the program's start-up path

    return pid_alive(pid)


class _Terminated(Exception):
    pass


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def _append(path: Path, how: str) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"end": time.time(), "how": how}) + "\n")


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    """Run the job program (see the module docstring); return its exit code."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.faults.jobprog")
    parser.add_argument("--log-dir", required=True, type=Path)
    parser.add_argument("--seconds", required=True, type=float)
    parser.add_argument("--exit-code", type=int, default=0)
    args = parser.parse_args(argv)
    env = dict(os.environ) if env is None else env
    try:
        job, attempt, site = env["JOB_ID"], int(env["JOB_ATTEMPT"]), env.get("SG_SITE", "")
    except (KeyError, ValueError) as exc:
        print(f"jobprog: JOB_ID and JOB_ATTEMPT must be set ({exc!r})", file=sys.stderr)
        return 2

    # SIGTERM waits until the record exists, so every run that got going leaves one.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.signal(signal.SIGTERM, _on_sigterm)
    pid = os.getpid()
    start = time.time()
    began = time.monotonic()
    path = args.log_dir / record_name(job, attempt, pid)
    tmp = path.with_name(path.name + ".tmp")
    head = {"job": job, "attempt": attempt, "site": site, "pid": pid, "start": start}
    tmp.write_text(json.dumps(head) + "\n")
    tmp.rename(path)  # appears whole
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        deadline = began + args.seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(TICK_SECONDS, left))
            os.utime(path)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except _Terminated:
        _append(path, "sigterm")
        return _SIGTERM_EXIT
    _append(path, "done")
    return int(args.exit_code)


if __name__ == "__main__":
    sys.exit(main())
