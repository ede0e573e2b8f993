"""LoopThread: the loop actors run on; a loop that dies takes its process down (Ray restarts it)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from orchestrator.background import LoopThread


def test_runs_main_until_stopped_and_calls_into_the_loop() -> None:
    seen: list[str] = []

    async def main(stop: asyncio.Event) -> None:
        seen.append("started")
        await stop.wait()
        seen.append("stopped")

    thread = LoopThread(main, name="t").start()

    async def answer() -> int:
        return 42

    assert thread.call(answer) == 42
    assert thread.alive()
    thread.stop()
    assert not thread.alive()
    assert seen == ["started", "stopped"]


def test_a_failing_main_exits_the_process_when_asked() -> None:
    program = (
        "import asyncio, time\n"
        "from orchestrator.background import LoopThread\n"
        "async def main(stop):\n"
        "    raise RuntimeError('boom')\n"
        "LoopThread(main, name='t', exit_process_if_it_ends=True).start()\n"
        "time.sleep(30)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 70
    assert "boom" in result.stderr
