"""SimExecutor: simulated attempts that start nothing (the shared contract is in
test_agent_executor_contract.py, which runs it too). Durations, exit codes, terminate, the max
runtime, what it costs, an agent restart, and ``sg-agent --executor sim`` as a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agents import AgentConfig, AgentRuntime
from agents.executors import (
    AttemptHandle,
    Executor,
    ExitResult,
    LaunchError,
    LaunchSpec,
    SimExecutor,
)
from orchestrator._pb.orchestrator.v1 import types_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]
SITES = REPO_ROOT / "examples" / "sites.yaml"
SUCCEEDED = types_pb2.JOB_STATE_SUCCEEDED
FAILED = types_pb2.JOB_STATE_FAILED
RUNNING = types_pb2.JOB_STATE_RUNNING


@pytest.fixture
def launch(tmp_path: Path) -> Callable[..., LaunchSpec]:
    counter = iter(range(1, 100_000))

    def make(argv: list[str], **kwargs: Any) -> LaunchSpec:
        attempt = next(counter)
        base = tmp_path / f"a{attempt}"
        return LaunchSpec(
            job_id="j-sim",
            attempt=attempt,
            argv=tuple(argv),
            working_dir=base / "work",
            stdout_path=base / "stdout.log",
            stderr_path=base / "stderr.log",
            **kwargs,
        )

    return make


async def timed(handle: AttemptHandle) -> tuple[ExitResult, float]:
    """The attempt's result and how long after this call it came."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await asyncio.wait_for(handle.wait(), 10)
    return result, loop.time() - started


def children_of(pid: int) -> set[int]:
    out: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                data = (entry / "stat").read_bytes()
            except OSError:
                continue
            if int(data[data.rfind(b")") + 2 :].split()[1]) == pid:
                out.add(int(entry.name))
    return out


def test_it_is_an_executor() -> None:
    assert isinstance(SimExecutor(), Executor)


# -- how long, and how it ends --------------------------------------------------------------------


async def test_the_duration_comes_from_sg_sim_seconds(
    launch: Callable[..., LaunchSpec],
) -> None:
    handle = await SimExecutor().start(launch(["train.py"], env={"SG_SIM_SECONDS": "0.3"}))
    assert isinstance(handle, AttemptHandle)
    assert handle.pid is None and handle.identity.startswith("sim:")
    result, took = await timed(handle)
    assert result == ExitResult(0)
    assert 0.25 <= took < 2


async def test_sg_sim_seconds_wins_over_the_command(launch: Callable[..., LaunchSpec]) -> None:
    spec = launch(["sleep", "600"], env={"SG_SIM_SECONDS": "0.1"})
    result, took = await timed(await SimExecutor().start(spec))
    assert result == ExitResult(0) and took < 2


@pytest.mark.parametrize(
    ("argv", "seconds"),
    [
        (["sleep", "0.3"], 0.3),
        (["/bin/sleep", "0.2"], 0.2),
        (["sleep", "0.005m"], 0.3),
        (["sleep", "0.3s"], 0.3),
    ],
)
async def test_sleep_n_takes_n_seconds(
    launch: Callable[..., LaunchSpec], argv: list[str], seconds: float
) -> None:
    result, took = await timed(await SimExecutor().start(launch(argv)))
    assert result == ExitResult(0)
    assert seconds - 0.05 <= took < seconds + 1.5


@pytest.mark.parametrize(
    "argv",
    [["python", "train.py"], ["sleep"], ["sleep", "soon"], ["sleep", "1", "2"], ["sleeper", "9"]],
)
async def test_anything_else_ends_at_once(
    launch: Callable[..., LaunchSpec], argv: list[str]
) -> None:
    result, took = await timed(await SimExecutor().start(launch(argv)))
    assert result == ExitResult(0) and took < 0.5


async def test_sg_sim_exit_sets_the_exit_code(launch: Callable[..., LaunchSpec]) -> None:
    spec = launch(["true"], env={"SG_SIM_EXIT": "3", "SG_SIM_SECONDS": "0.05"})
    result, _ = await timed(await SimExecutor().start(spec))
    assert result == ExitResult(3)
    assert (result.succeeded, result.message) == (False, "exit code 3")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SG_SIM_SECONDS": "soon"}, "SG_SIM_SECONDS='soon'"),
        ({"SG_SIM_SECONDS": "-1"}, "SG_SIM_SECONDS='-1'"),
        ({"SG_SIM_SECONDS": "nan"}, "SG_SIM_SECONDS='nan'"),
        ({"SG_SIM_EXIT": "256"}, "SG_SIM_EXIT='256'"),
        ({"SG_SIM_EXIT": "-1"}, "SG_SIM_EXIT='-1'"),
        ({"SG_SIM_EXIT": "ok"}, "SG_SIM_EXIT='ok'"),
    ],
)
async def test_a_bad_sim_variable_cannot_be_started(
    launch: Callable[..., LaunchSpec], env: dict[str, str], named: str
) -> None:
    with pytest.raises(LaunchError) as info:
        await SimExecutor().start(launch(["true"], env=env))
    assert info.value.exit_code == 2
    assert named in info.value.message
    assert (info.value.job_id, info.value.attempt) == ("j-sim", 1)


# -- stopping it ----------------------------------------------------------------------------------


async def test_terminate_ends_it_at_once_as_sigterm_would(
    launch: Callable[..., LaunchSpec],
) -> None:
    handle = await SimExecutor().start(launch(["sleep", "infinity"]))
    waiters = [asyncio.create_task(handle.wait()) for _ in range(3)]
    impatient = asyncio.create_task(handle.wait())
    await asyncio.sleep(0.05)
    impatient.cancel()  # one waiter giving up does not end the attempt for the others
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await handle.terminate(30.0)  # no grace needed: nothing to ask twice
    assert loop.time() - started < 0.5
    assert result == ExitResult(None, signal.SIGTERM)
    assert result.message == "killed by signal SIGTERM"
    assert await asyncio.gather(*waiters) == [result] * 3
    assert await handle.terminate(1.0) == result  # ended: keeps its result


async def test_terminate_after_the_end_keeps_the_exit_code(
    launch: Callable[..., LaunchSpec],
) -> None:
    handle = await SimExecutor().start(launch(["true"], env={"SG_SIM_EXIT": "4"}))
    assert await handle.wait() == ExitResult(4)
    assert await handle.terminate(1.0) == ExitResult(4)


async def test_the_max_runtime_is_enforced(launch: Callable[..., LaunchSpec]) -> None:
    for argv, env in ((["sleep", "infinity"], {}), (["x"], {"SG_SIM_SECONDS": "60"})):
        spec = launch(argv, env=env, max_runtime_seconds=0.2)
        result, took = await timed(await SimExecutor().start(spec))
        assert 0.15 <= took < 2
        assert result == ExitResult(None, signal.SIGTERM, timed_out_after=0.2)
        assert result.timed_out and result.message == "exceeded max runtime 0.2s"
    within = launch(["sleep", "0.1"], max_runtime_seconds=5.0)
    result, _ = await timed(await SimExecutor().start(within))
    assert result == ExitResult(0)


# -- what it costs --------------------------------------------------------------------------------


async def test_ten_thousand_attempts_start_no_process_thread_or_file(
    launch: Callable[..., LaunchSpec], tmp_path: Path
) -> None:
    executor = SimExecutor()
    threads = {t.ident for t in threading.enumerate()}
    children = children_of(os.getpid())
    specs = [launch(["sleep", "0.2"]) for _ in range(10_000)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    handles = [await executor.start(spec) for spec in specs]
    start_seconds = loop.time() - started
    assert {t.ident for t in threading.enumerate()} <= threads
    assert children_of(os.getpid()) <= children
    assert len({h.identity for h in handles}) == len(handles)
    results = await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), 30)
    assert set(results) == {ExitResult(0)}
    assert list(tmp_path.iterdir()) == []  # no output file, no working directory
    print(f"10,000 simulated starts: {start_seconds / 10_000 * 1e6:.0f} us each")


async def test_nothing_survives_the_process_that_ran_it(
    launch: Callable[..., LaunchSpec],
) -> None:
    spec = launch(["sleep", "infinity"])
    running = await SimExecutor().start(spec)
    restarted = SimExecutor()
    assert await restarted.adopt(running.identity, spec) is None
    assert await restarted.finished_result(running.identity, spec) is None
    assert await restarted.launched_identity(spec) is None
    assert await restarted.stop_orphan(running.identity, grace_seconds=1.0) is False
    assert await running.terminate(0) == ExitResult(None, signal.SIGTERM)


# -- sg-agent --executor sim ----------------------------------------------------------------------


def agent_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["OTEL_TRACES_EXPORTER"] = "none"
    return env


@pytest.fixture
async def sim_agent(tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    ready = tmp_path / "ready"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agents", "--executor", "sim",
        "--sites", str(SITES), "--site", "narvik", "--state-dir", str(tmp_path / "state"),
        "--ready-file", str(ready), "--insecure",
        env=agent_env(), cwd=REPO_ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(20):
            while not ready.exists():
                assert proc.returncode is None
                await asyncio.sleep(0.05)
        yield proc, ready.read_text().strip()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def test_sg_agent_with_the_sim_executor_starts_no_process(
    sim_agent: tuple[asyncio.subprocess.Process, str],
    open_dispatcher: Callable[..., Any],
    make_assignment: Callable[..., Any],
    tmp_path: Path,
) -> None:
    proc, address = sim_agent
    d = await open_dispatcher(address)
    marker = tmp_path / "ran"
    acks = await d.dispatch(
        make_assignment(
            "j-1", command=["sh", "-c", f"touch {marker}; exit 9"], env={"SG_SIM_SECONDS": "0.5"}
        ),
        make_assignment("j-2", command=["sh", "-c", "exit 0"], env={"SG_SIM_EXIT": "7"}),
    )
    assert all(a.accepted for a in acks)
    await d.wait_status("j-1", state=RUNNING)
    assert children_of(proc.pid) == set()
    assert (await d.wait_status("j-1", state=SUCCEEDED)).exit_code == 0
    assert (await d.wait_status("j-2", state=FAILED)).exit_code == 7
    assert not marker.exists()

    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10):
        _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert "SimExecutor" in stderr.decode()


async def test_a_restarted_agent_reports_what_a_killed_one_ran_as_lost(
    sim_agent: tuple[asyncio.subprocess.Process, str],
    open_dispatcher: Callable[..., Any],
    make_assignment: Callable[..., Any],
    tmp_path: Path,
) -> None:
    proc, address = sim_agent
    d = await open_dispatcher(address)
    (ack,) = await d.dispatch(make_assignment("j-r", command=["sleep", "600"]))
    assert ack.accepted
    await d.wait_status("j-r", state=RUNNING)
    proc.kill()  # SIGKILL: a simulated attempt dies with its agent process
    await proc.communicate()

    config = AgentConfig.from_site_file(SITES, "narvik", state_dir=tmp_path / "state")
    restarted = AgentRuntime(config, executor=SimExecutor())
    await restarted.open()
    try:
        last = restarted.pending_updates()[-1]
        assert (last.job_id, last.attempt, last.state.name) == ("j-r", 1, "LOST")
        assert last.message == "agent restarted; process gone, no exit status"
        assert restarted.capacity().running == 0
    finally:
        await restarted.close()
