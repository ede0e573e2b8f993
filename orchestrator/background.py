"""Run an asyncio main function on a private event loop in a daemon thread.

Ray actors use this to run their loop from ``__init__``: a restarted actor (after ``kill -9``)
starts its loop again by itself, with no one having to call it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["LoopThread", "cancel_and_wait"]

log = logging.getLogger(__name__)
T = TypeVar("T")


async def cancel_and_wait(task: asyncio.Task[object], *, poll_seconds: float = 0.1) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again while it runs on.

    On Python 3.11, ``asyncio.wait_for`` (which redis-py wraps around every command when a
    socket timeout is set) can swallow a cancel that lands as the inner call finishes; the task
    then carries on, and a plain ``task.cancel(); await task`` waits forever. Its outcome
    (result, exception or cancellation) is consumed here.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=poll_seconds)
    if not task.cancelled() and task.exception() is not None:
        log.debug("task %s ended with %r", task.get_name(), task.exception())


class LoopThread:
    """``main(stop)`` runs on its own loop until ``stop()`` sets the event it was given."""

    def __init__(
        self,
        main: Callable[[asyncio.Event], Awaitable[None]],
        *,
        name: str,
        exit_process_if_it_ends: bool = False,
    ) -> None:
        """With ``exit_process_if_it_ends``, the process exits (code 70) when ``main`` returns
        or fails without ``stop()`` having been called: a Ray actor then gets restarted instead
        of living on with a dead loop."""
        self._main = main
        self._exit_process = exit_process_if_it_ends
        self._stopping = False
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.error: BaseException | None = None

    def start(self) -> LoopThread:
        """Start the thread and wait until the loop runs."""
        self._thread.start()
        self._ready.wait()
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def runner() -> None:
            self._stop = asyncio.Event()
            self._ready.set()
            await self._main(self._stop)

        try:
            self._loop.run_until_complete(runner())
        except BaseException as exc:
            self.error = exc
            log.exception("%s: main loop failed", self._thread.name)
        finally:
            self._ready.set()
            self._loop.close()
            if self._exit_process and not self._stopping:
                log.error(
                    "%s: main loop ended unexpectedly; exiting the process", self._thread.name
                )
                logging.shutdown()
                os._exit(70)

    def call(self, factory: Callable[[], Awaitable[T]], *, timeout: float = 30.0) -> T:
        """Run a coroutine on the loop from another thread and return its result."""

        async def wrapped() -> T:
            return await factory()

        fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(wrapped(), self._loop)
        return fut.result(timeout)

    def alive(self) -> bool:
        """Whether the main function is still running."""
        return self._thread.is_alive()

    def stop(self, *, timeout: float = 10.0) -> None:
        """Ask the main function to return and wait for the thread."""
        self._stopping = True
        if self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
