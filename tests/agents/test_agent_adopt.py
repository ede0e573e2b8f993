"""The local executor across an agent restart, and the launch shim that makes it possible.

The generic adopt contract is in test_agent_executor_contract.py; here: a real restart (the
agent process dies, its shims lose their parent), and the shim itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.executors import ExitResult, LaunchSpec, LocalExecutor
from agents.executors.local import exit_status_path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIM = REPO_ROOT / "agents" / "executors" / "shim.py"
PATH_ENV = {"PATH": os.environ.get("PATH", os.defpath)}

# Starts one attempt per job, prints their identities, then dies the way a crashed agent does.
AGENT = """
import asyncio, json, os, sys
from pathlib import Path
from agents.executors import LaunchSpec, LocalExecutor

async def main() -> None:
    base, jobs = Path(sys.argv[1]), json.loads(sys.argv[2])
    executor = LocalExecutor(base_env={"PATH": os.environ["PATH"]})
    identities = {}
    for name, argv in jobs.items():
        spec = LaunchSpec(
            job_id=name,
            attempt=1,
            argv=tuple(argv),
            working_dir=base / name / "work",
            stdout_path=base / name / "stdout.log",
            stderr_path=base / name / "stderr.log",
        )
        identities[name] = (await executor.start(spec)).identity
    print(json.dumps(identities), flush=True)
    os._exit(0)

asyncio.run(main())
"""


def spec_for(base: Path, name: str, argv: list[str], **kwargs: Any) -> LaunchSpec:
    """The spec AGENT used for job ``name``, as a restarted agent rebuilds it."""
    return LaunchSpec(
        job_id=name,
        attempt=1,
        argv=tuple(argv),
        working_dir=base / name / "work",
        stdout_path=base / name / "stdout.log",
        stderr_path=base / name / "stderr.log",
        **kwargs,
    )


@pytest.fixture
def groups() -> Iterator[list[int]]:
    """Process groups to SIGKILL after the test, whatever happened in it."""
    pgids: list[int] = []
    yield pgids
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


async def test_a_restarted_agent_adopts_running_attempts_and_learns_how_others_ended(
    tmp_path: Path, groups: list[int], wait_until: Callable[..., Any]
) -> None:
    go = tmp_path / "go"
    jobs = {
        "runs": ["sh", "-c", f'while [ ! -e "{go}" ]; do sleep 0.02; done; echo finished; exit 5'],
        "exits": ["sh", "-c", "echo bye; exit 4"],
        "killed": ["sh", "-c", "kill -USR1 $$"],
    }
    agent = subprocess.run(
        [sys.executable, "-c", AGENT, str(tmp_path), json.dumps(jobs)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    identities = json.loads(agent.stdout)
    groups.extend(int(identity.split(":")[1]) for identity in identities.values())
    specs = {name: spec_for(tmp_path, name, argv) for name, argv in jobs.items()}
    await wait_until(lambda: exit_status_path(specs["exits"]).exists())
    await wait_until(lambda: exit_status_path(specs["killed"]).exists())

    restarted = LocalExecutor(base_env=PATH_ENV, poll_interval_seconds=0.02)
    adopted = await restarted.adopt(identities["runs"], specs["runs"], started_at=time.time())
    assert adopted is not None
    assert not exit_status_path(specs["runs"]).exists()
    go.touch()
    assert await asyncio.wait_for(adopted.wait(), 5) == ExitResult(5)
    assert specs["runs"].stdout_path.read_text() == "finished\n"

    for name, expected in (("exits", ExitResult(4)), ("killed", ExitResult(None, 10))):
        assert await restarted.adopt(identities[name], specs[name]) is None
        assert await restarted.finished_result(identities[name], specs[name]) == expected
    assert specs["exits"].stdout_path.read_text() == "bye\n"


async def test_an_adopted_attempt_whose_shim_was_killed_ends_without_an_exit_status(
    tmp_path: Path, groups: list[int], wait_until: Callable[..., Any]
) -> None:
    spec = spec_for(tmp_path, "orphan", ["sh", "-c", "echo ready; exec sleep 600"])
    first = await LocalExecutor(base_env=PATH_ENV).start(spec)
    groups.append(first.pid)
    await wait_until(lambda: spec.stdout_path.read_text() == "ready\n")
    restarted = LocalExecutor(base_env=PATH_ENV, poll_interval_seconds=0.02)
    adopted = await restarted.adopt(first.identity, spec)
    assert adopted is not None
    os.kill(first.pid, signal.SIGKILL)  # the shim alone: the job lives on in the group
    # The shim is gone, so what is left is stopped and nobody recorded how the job ended.
    result = await asyncio.wait_for(adopted.wait(), 5)
    assert result == ExitResult(None)
    assert result.message == "ended without an exit status"
    assert not result.succeeded
    assert (await first.wait()).signal == signal.SIGKILL


async def test_sigterm_to_the_group_reaches_the_job_and_the_shim_outlives_it(
    tmp_path: Path, groups: list[int], wait_until: Callable[..., Any]
) -> None:
    script = "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.02; done"
    spec = spec_for(tmp_path, "trap", ["sh", "-c", script])
    handle = await LocalExecutor(base_env=PATH_ENV).start(spec)
    groups.append(handle.pid)
    await wait_until(lambda: spec.stdout_path.read_text() == "ready\n")
    os.killpg(handle.pid, signal.SIGTERM)
    assert await asyncio.wait_for(handle.wait(), 5) == ExitResult(7)
    assert spec.stdout_path.read_text() == "ready\ngot TERM\n"

    spec = spec_for(tmp_path, "plain", ["sh", "-c", "echo ready; exec sleep 600"])
    handle = await LocalExecutor(base_env=PATH_ENV).start(spec)
    groups.append(handle.pid)
    await wait_until(lambda: spec.stdout_path.read_text() == "ready\n")
    os.killpg(handle.pid, signal.SIGTERM)
    assert await asyncio.wait_for(handle.wait(), 5) == ExitResult(None, signal.SIGTERM)


async def test_the_job_gets_the_standard_streams_and_signal_dispositions_only(
    tmp_path: Path,
) -> None:
    script = "ls /proc/$$/fd; grep SigIgn /proc/$$/status"
    spec = spec_for(tmp_path, "fds", ["sh", "-c", script])
    assert await (await LocalExecutor(base_env=PATH_ENV).start(spec)).wait() == ExitResult(0)
    *fds, _, ignored = spec.stdout_path.read_text().split()
    assert sorted(fds) == ["0", "1", "2"]
    # The same signals are ignored as in a child started directly (the shim's are not passed on).
    direct = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert ignored == direct.stdout.split()[-1]


# --- the shim on its own ------------------------------------------------------------------------


def run_shim(
    tmp_path: Path, argv: list[str], *, env: dict[str, str] | None = None, **kwargs: Any
) -> tuple[subprocess.CompletedProcess[bytes], dict[str, Any]]:
    status = tmp_path / "exit.json"
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(SHIM), str(status), "--", *argv],
        env=PATH_ENV if env is None else env,
        capture_output=True,
        timeout=10,
        check=False,
        **kwargs,
    )
    recorded = json.loads(status.read_text())
    assert not status.with_name("exit.json.tmp").exists()
    return done, recorded


def test_shim_passes_exit_codes_through(tmp_path: Path) -> None:
    for code in (0, 3, 200):
        done, recorded = run_shim(tmp_path, ["sh", "-c", f"exit {code}"])
        assert done.returncode == code
        assert recorded == {"returncode": code}


def test_shim_dies_by_the_signal_that_killed_the_job(tmp_path: Path) -> None:
    for number in (signal.SIGTERM, signal.SIGKILL, signal.SIGSEGV, signal.SIGPIPE):
        done, recorded = run_shim(tmp_path, ["sh", "-c", f"kill -{number} $$"], cwd=tmp_path)
        assert done.returncode == -number
        assert recorded == {"returncode": -number}
    assert not list(tmp_path.glob("core*"))  # the shim re-raised SIGSEGV without dumping core


def test_shim_passes_environment_cwd_and_output_through_unchanged(tmp_path: Path) -> None:
    # No locale variables: the shim's interpreter coerces the C locale by setting LC_CTYPE in its
    # own environment, which must not reach the job. PYTHON* variables are the job's, too.
    env = {**PATH_ENV, "MY_VAR": "a b=c", "PYTHONPATH": "/nowhere", "EMPTY": ""}
    work = tmp_path / "work"
    work.mkdir()
    done, recorded = run_shim(tmp_path, ["env", "-0"], env=env, cwd=work)
    assert recorded == {"returncode": 0}
    assert dict(entry.split("=", 1) for entry in done.stdout.decode().split("\0") if entry) == env
    done, _ = run_shim(tmp_path, ["sh", "-c", "pwd -P; echo oops >&2"], cwd=work)
    assert (done.stdout, done.stderr) == (f"{work.resolve()}\n".encode(), b"oops\n")


def test_shim_reports_a_program_it_cannot_execute(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\n")
    for argv, code, number in (
        (["no-such-program-anywhere"], 127, errno.ENOENT),
        ([str(script)], 126, errno.EACCES),
    ):
        read_end, write_end = os.pipe()
        status = tmp_path / "exit.json"
        shim = [sys.executable, "-I", "-S", str(SHIM), "--report-fd", str(write_end)]
        done = subprocess.run(
            [*shim, str(status), "--", *argv],
            env=PATH_ENV,
            pass_fds=(write_end,),
            capture_output=True,
            timeout=10,
            check=False,
        )
        os.close(write_end)
        with os.fdopen(read_end, "rb") as report:
            assert report.read() == f"exec {code} {number}".encode()
        assert done.returncode == code
        assert json.loads(status.read_text()) == {"returncode": code, "exec_errno": number}


def test_shim_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(SHIM), str(tmp_path / "exit.json"), "true"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(b"usage: shim.py")
