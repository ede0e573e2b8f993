"""The Executor contract (agents/executors/base.py), run against every implementation.

To add an executor, add its name to EXECUTORS and build it in ``make_executor``. Tests of what
only a real process has (output, environment, process groups, signals, outliving the agent
process) run over PROCESS_EXECUTORS only; each says why. A job's behaviour is given to each
executor in its own terms: the command for processes, ``SG_SIM_*`` variables (or ``sleep N``)
for the simulated executor, which starts nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agents.executors import (
    Executor,
    ExitResult,
    LaunchError,
    LaunchSpec,
    LocalExecutor,
    SimExecutor,
)
from agents.executors.base import InlineExecutor

EXECUTORS = ["local", "sim"]
PROCESS_EXECUTORS = ["local"]
"""Executors whose attempts are processes on this machine (and can outlive the agent)."""
INLINE_EXECUTORS = ["sim"]
"""Executors that are also ``InlineExecutor``s."""
PATH_ENV = {"PATH": os.environ.get("PATH", os.defpath)}

processes_only = pytest.mark.parametrize("executor", PROCESS_EXECUTORS, indirect=True)
inline_only = pytest.mark.parametrize("executor", INLINE_EXECUTORS, indirect=True)


def make_executor(kind: str) -> Executor:
    if kind == "local":
        return LocalExecutor(base_env=PATH_ENV, poll_interval_seconds=0.02)
    if kind == "sim":
        return SimExecutor()
    raise AssertionError(kind)


@pytest.fixture(params=EXECUTORS)
def executor(request: pytest.FixtureRequest) -> Executor:
    return make_executor(request.param)


@pytest.fixture
def kind(executor: Executor, request: pytest.FixtureRequest) -> str:
    """The name of the executor under test."""
    name: str = request.node.callspec.params["executor"]
    return name


@pytest.fixture
def launch(tmp_path: Path) -> Callable[..., LaunchSpec]:
    counter = iter(range(1, 1000))

    def make(argv: list[str], **kwargs: Any) -> LaunchSpec:
        attempt = next(counter)
        base = tmp_path / f"a{attempt}"
        kwargs.setdefault("kill_grace_seconds", 1.0)
        return LaunchSpec(
            job_id="j-contract",
            attempt=attempt,
            argv=tuple(argv),
            working_dir=base / "work",
            stdout_path=base / "stdout.log",
            stderr_path=base / "stderr.log",
            **kwargs,
        )

    return make


def test_it_declares_what_the_agent_must_do_for_it(executor: Executor, kind: str) -> None:
    """Attempts that can outlive the agent rely on its lease file; only executors whose
    attempts start without waiting for anything are inline."""
    assert isinstance(executor, Executor)
    assert executor.needs_lease_file is (kind in PROCESS_EXECUTORS)
    assert isinstance(executor, InlineExecutor) is (kind in INLINE_EXECUTORS)


@inline_only
async def test_an_inline_start_reports_every_end_once_and_never_from_within_the_call(
    executor: Executor, launch: Callable[..., LaunchSpec]
) -> None:
    assert isinstance(executor, InlineExecutor)
    ends: dict[str, list[ExitResult]] = {"done": [], "failed": [], "stopped": [], "timed": []}
    done = executor.start_inline(launch(["true"]), ends["done"].append)
    failed = executor.start_inline(
        launch(["sh", "-c", "exit 3"], env={"SG_SIM_EXIT": "3", "SG_SIM_SECONDS": "0.05"}),
        ends["failed"].append,
    )
    stopped = executor.start_inline(launch(["sleep", "600"]), ends["stopped"].append)
    timed = executor.start_inline(
        launch(["sleep", "600"], max_runtime_seconds=0.2), ends["timed"].append
    )
    assert not any(ends.values())  # not from within the call, even for a 0 s attempt
    assert await asyncio.wait_for(done.wait(), 5) == ExitResult(0)
    assert await asyncio.wait_for(failed.wait(), 5) == ExitResult(3)
    terminated = await stopped.terminate(1.0)
    assert terminated == ExitResult(None, signal.SIGTERM)
    assert (await asyncio.wait_for(timed.wait(), 5)).timed_out
    assert await stopped.terminate(1.0) == terminated  # ended: its end is not reported again
    await asyncio.sleep(0.05)
    assert ends == {
        "done": [ExitResult(0)],
        "failed": [ExitResult(3)],
        "stopped": [terminated],
        "timed": [ExitResult(None, signal.SIGTERM, timed_out_after=0.2)],
    }
    with pytest.raises(LaunchError):
        executor.start_inline(launch(["true"], env={"SG_SIM_EXIT": "-1"}), ends["done"].append)


# Output files and the environment the program sees: a simulated attempt runs no program.
@processes_only
async def test_exit_zero_output_and_environment(
    executor: Executor, launch: Callable[..., LaunchSpec]
) -> None:
    spec = launch(
        ["sh", "-c", "env; pwd; echo oops >&2"],
        env={"MY_VAR": "hello", "JOB_ID": "spoofed"},
        site_id="narvik",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        gpu_type="H100",
        gpu_slots=(2, 3),
        nodes=2,
    )
    handle = await executor.start(spec)
    result = await handle.wait()
    assert result == ExitResult(0)
    assert result.succeeded and result.message == "exit code 0"
    lines = spec.stdout_path.read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line)
    assert env["MY_VAR"] == "hello"
    assert env["JOB_ID"] == "j-contract"  # the agent's variables win
    assert env["JOB_ATTEMPT"] == str(spec.attempt)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert env["SG_SITE"] == "narvik"
    assert env["SG_NODES"] == "2"
    assert env["TRACEPARENT"] == spec.traceparent
    assert str(spec.working_dir) in lines
    assert spec.stderr_path.read_text() == "oops\n"
    # wait() can be awaited again, terminate() after the end just returns the result.
    assert await handle.wait() == result
    assert await handle.terminate(0.1) == result
    assert handle.identity


async def test_an_ended_attempt_keeps_its_result(
    executor: Executor, launch: Callable[..., LaunchSpec]
) -> None:
    handle = await executor.start(launch(["true"]))
    result = await handle.wait()
    assert result == ExitResult(0)
    assert result.succeeded and result.message == "exit code 0"
    assert await handle.wait() == result
    assert await handle.terminate(0.1) == result
    assert handle.identity


async def test_non_zero_exit(executor: Executor, launch: Callable[..., LaunchSpec]) -> None:
    spec = launch(["sh", "-c", "exit 3"], env={"SG_SIM_EXIT": "3"})
    result = await (await executor.start(spec)).wait()
    assert (result.exit_code, result.signal, result.succeeded) == (3, None, False)
    assert result.message == "exit code 3"


# A simulated attempt never looks its command up.
@processes_only
async def test_command_not_found_is_127(
    executor: Executor, launch: Callable[..., LaunchSpec]
) -> None:
    spec = launch(["no-such-program-anywhere", "x"])
    with pytest.raises(LaunchError) as info:
        await executor.start(spec)
    assert info.value.exit_code == 127
    assert "no-such-program-anywhere" in info.value.message
    assert "no-such-program-anywhere" in spec.stderr_path.read_text()


# A simulated attempt never looks its command up.
@processes_only
async def test_not_executable_is_126(
    executor: Executor, launch: Callable[..., LaunchSpec], tmp_path: Path
) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with pytest.raises(LaunchError) as info:
        await executor.start(launch([str(script)]))
    assert info.value.exit_code == 126
    assert "Permission denied" in info.value.message


async def test_terminate_a_running_attempt(
    executor: Executor, launch: Callable[..., LaunchSpec]
) -> None:
    handle = await executor.start(launch(["sleep", "600"]))
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await asyncio.wait_for(handle.terminate(2.0), 5)
    assert loop.time() - started < 2.0  # sleep dies on SIGTERM: no SIGKILL needed
    assert (result.exit_code, result.signal, result.timed_out) == (None, signal.SIGTERM, False)
    assert result.message == "killed by signal SIGTERM"
    assert await handle.wait() == result


# Process groups: a simulated attempt has no processes.
@processes_only
async def test_terminate_stops_the_whole_process_group(
    executor: Executor,
    launch: Callable[..., LaunchSpec],
    tmp_path: Path,
    pid_alive: Callable[[int], bool],
    wait_until: Callable[..., Any],
) -> None:
    pids = tmp_path / "pids"
    spec = launch(
        [
            "sh",
            "-c",
            f"echo $$ > {pids}.tmp; sleep 600 & echo $! >> {pids}.tmp; mv {pids}.tmp {pids}; wait",
        ]
    )
    handle = await executor.start(spec)
    await wait_until(pids.exists)
    leader, child = (int(p) for p in pids.read_text().split())
    assert pid_alive(leader) and pid_alive(child)
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await handle.terminate(2.0)
    # both die on SIGTERM: done before the 2 s grace that would lead to SIGKILL
    assert loop.time() - started < 2.0
    assert result.signal == signal.SIGTERM
    assert result.message == "killed by signal SIGTERM"
    assert not pid_alive(leader)
    assert not pid_alive(child)


# Only a process can ignore SIGTERM.
@processes_only
async def test_sigkill_after_grace_when_sigterm_is_ignored(
    executor: Executor,
    launch: Callable[..., LaunchSpec],
    wait_until: Callable[..., Any],
) -> None:
    spec = launch(["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"])
    handle = await executor.start(spec)
    await wait_until(lambda: spec.stdout_path.read_text() == "ready\n")
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await handle.terminate(0.3)
    assert loop.time() - started >= 0.3
    assert result.signal == signal.SIGKILL
    assert result.message == "killed by signal SIGKILL"


async def test_max_runtime_is_enforced(
    executor: Executor, launch: Callable[..., LaunchSpec]
) -> None:
    spec = launch(["sleep", "600"], max_runtime_seconds=0.3, kill_grace_seconds=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await (await executor.start(spec)).wait()
    assert 0.3 <= loop.time() - started < 2
    assert result.timed_out and not result.succeeded
    assert result.message == "exceeded max runtime 0.3s"


# Process groups: a simulated attempt has no processes.
@processes_only
async def test_leftovers_of_a_finished_leader_are_stopped(
    executor: Executor,
    launch: Callable[..., LaunchSpec],
    tmp_path: Path,
    pid_alive: Callable[[int], bool],
) -> None:
    child_file = tmp_path / "child"
    handle = await executor.start(launch(["sh", "-c", f"sleep 600 & echo $! > {child_file}"]))
    result = await handle.wait()
    assert result.exit_code == 0
    assert not pid_alive(int(child_file.read_text()))


# Only processes outlive the agent process that started them.
@processes_only
async def test_stop_orphan_by_identity(
    executor: Executor,
    launch: Callable[..., LaunchSpec],
    tmp_path: Path,
) -> None:
    handle = await executor.start(launch(["sleep", "600"]))
    other = make_executor("local") if isinstance(executor, LocalExecutor) else executor
    assert await other.stop_orphan(handle.identity, grace_seconds=1.0) is True
    result = await asyncio.wait_for(handle.wait(), timeout=5)
    assert result.signal == signal.SIGTERM
    assert await other.stop_orphan(handle.identity, grace_seconds=1.0) is False
    assert await other.stop_orphan("not-an-identity", grace_seconds=1.0) is False


# Only a process can be killed by a signal of its own doing.
@processes_only
async def test_death_by_signal(executor: Executor, launch: Callable[..., LaunchSpec]) -> None:
    for number in (signal.SIGKILL, signal.SIGSEGV):
        spec = launch(["sh", "-c", f"kill -{number} $$"])
        result = await (await executor.start(spec)).wait()
        assert (result.exit_code, result.signal) == (None, number)
        assert result.message == f"killed by signal {signal.Signals(number).name}"


# --- adopting an attempt after an agent restart -------------------------------------------------
# One executor starts an attempt; a fresh one, as a restarted agent has, takes it over from the
# journaled identity and spec. Only processes outlive the agent process that started them, so
# only process executors can adopt (a simulated attempt ends with its agent process; the test
# at the end holds for every executor).


@pytest.fixture
def restarted(executor: Executor, request: pytest.FixtureRequest) -> Executor:
    """A second executor of the same kind, as a restarted agent builds it."""
    return make_executor(request.node.callspec.params["executor"])


@processes_only
async def test_adopt_a_running_attempt_and_see_its_exit_code(
    executor: Executor,
    restarted: Executor,
    launch: Callable[..., LaunchSpec],
    tmp_path: Path,
) -> None:
    go = tmp_path / "go"
    spec = launch(["sh", "-c", f'while [ ! -e "{go}" ]; do sleep 0.02; done; echo done; exit 5'])
    first = await executor.start(spec)
    adopted = await restarted.adopt(first.identity, spec, started_at=time.time())
    assert adopted is not None
    assert (adopted.identity, adopted.pid) == (first.identity, first.pid)
    go.touch()
    result = await asyncio.wait_for(adopted.wait(), 5)
    assert (result.exit_code, result.signal, result.timed_out) == (5, None, False)
    assert spec.stdout_path.read_text() == "done\n"
    assert await adopted.wait() == result
    assert await adopted.terminate(0.1) == result
    assert await asyncio.wait_for(first.wait(), 5) == result


@processes_only
async def test_adopt_then_terminate(
    executor: Executor,
    restarted: Executor,
    launch: Callable[..., LaunchSpec],
    wait_until: Callable[..., Any],
) -> None:
    spec = launch(["sh", "-c", "echo ready; exec sleep 600"])
    first = await executor.start(spec)
    await wait_until(lambda: spec.stdout_path.read_text() == "ready\n")
    adopted = await restarted.adopt(first.identity, spec)
    assert adopted is not None
    result = await asyncio.wait_for(adopted.terminate(2.0), 5)
    assert (result.signal, result.message) == (signal.SIGTERM, "killed by signal SIGTERM")
    assert await asyncio.wait_for(first.wait(), 5) == result


@processes_only
async def test_adopt_then_sigkill_after_grace_when_sigterm_is_ignored(
    executor: Executor,
    restarted: Executor,
    launch: Callable[..., LaunchSpec],
    wait_until: Callable[..., Any],
) -> None:
    spec = launch(["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"])
    first = await executor.start(spec)
    await wait_until(lambda: spec.stdout_path.read_text() == "ready\n")
    adopted = await restarted.adopt(first.identity, spec)
    assert adopted is not None
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await asyncio.wait_for(adopted.terminate(0.3), 5)
    assert loop.time() - started >= 0.3
    assert (result.signal, result.message) == (signal.SIGKILL, "killed by signal SIGKILL")
    await asyncio.wait_for(first.wait(), 5)


@processes_only
async def test_adopted_max_runtime_counts_from_the_original_start(
    executor: Executor,
    restarted: Executor,
    launch: Callable[..., LaunchSpec],
) -> None:
    first_spec = launch(["sleep", "600"], kill_grace_seconds=0.5)
    first = await executor.start(first_spec)
    # The restarted agent rebuilds the spec with the attempt's limit, 30 s, of which 29.7 s are up.
    spec = dataclasses.replace(first_spec, max_runtime_seconds=30.0)
    adopted = await restarted.adopt(first.identity, spec, started_at=time.time() - 29.7)
    assert adopted is not None
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await asyncio.wait_for(adopted.wait(), 5)
    assert 0.1 < loop.time() - started < 2
    assert result.timed_out and result.message == "exceeded max runtime 30s"
    await asyncio.wait_for(first.wait(), 5)

    # Already past its limit when adopted: stopped straight away.
    first = await executor.start(launch(["sleep", "600"], kill_grace_seconds=0.5))
    adopted = await restarted.adopt(first.identity, spec, started_at=time.time() - 60)
    assert adopted is not None
    result = await asyncio.wait_for(adopted.wait(), 2)
    assert result.timed_out_after == 30.0
    await asyncio.wait_for(first.wait(), 5)


@processes_only
async def test_an_attempt_that_ended_unwatched_is_not_adopted_but_its_result_is_known(
    executor: Executor,
    restarted: Executor,
    launch: Callable[..., LaunchSpec],
) -> None:
    for argv, expected in (
        (["sh", "-c", "exit 3"], ExitResult(3)),
        (["sh", "-c", "kill -KILL $$"], ExitResult(None, signal.SIGKILL)),
    ):
        spec = launch(argv)
        handle = await executor.start(spec)
        await handle.wait()
        assert await restarted.adopt(handle.identity, spec, started_at=time.time()) is None
        assert await restarted.finished_result(handle.identity, spec) == expected


async def test_nothing_to_take_over_from_an_unknown_attempt(
    restarted: Executor, launch: Callable[..., LaunchSpec]
) -> None:
    never_ran = launch(["true"])
    assert await restarted.finished_result("", never_ran) is None
    assert await restarted.adopt("not-an-identity", never_ran) is None
    assert await restarted.launched_identity(never_ran) is None
    assert await restarted.stop_orphan("not-an-identity", grace_seconds=1.0) is False
