"""Group commit for single submits: concurrent ``SubmitJob`` calls share one store write.

Each ``SubmitJob`` call is one job, but a busy API server has many in flight at once. Written
one by one, every job would cost its own Lua call and its own wait for the append-only file's
fsync. ``SubmitCoalescer`` queues the jobs of concurrent calls and writes them with one
``JobStore.submit_many`` per batch: while a batch is being written the next one gathers, so
there is no timer and no added latency when the server is idle (the first job goes at once),
and under load the batch grows with the load (up to ``max_batch``).

Each caller still gets its own answer: its job (or the earlier one its request id names) once
the batch holding it is durable, or the batch's error (the store unavailable) for every job in
it. Specs are validated and normalised before they are queued, so one caller's bad input never
fails another's job.
"""

from __future__ import annotations

import asyncio
import logging

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.store import JobStore

__all__ = ["SubmitCoalescer"]

log = logging.getLogger(__name__)

_Item = tuple[types_pb2.JobSpec, str, "asyncio.Future[tuple[types_pb2.Job, bool]]"]


class SubmitCoalescer:
    """Writes the jobs of concurrent single submits in shared batches."""

    def __init__(self, store: JobStore, *, max_batch: int = 1000) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: list[_Item] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0
        """Store writes made so far (jobs per write = submits / batches)."""

    async def submit(self, spec: types_pb2.JobSpec, traceparent: str) -> tuple[types_pb2.Job, bool]:
        """Queue one normalised spec; returns its job and whether it was a deduplicated retry."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[types_pb2.Job, bool]] = loop.create_future()
        self._queue.append((spec, traceparent, future))
        writer = self._writer
        if writer is None or writer.done() or writer.get_loop() is not loop:
            self._writer = asyncio.create_task(self._write())
        return await future

    async def _write(self) -> None:
        while self._queue:
            batch, self._queue = (
                self._queue[: self._max_batch],
                self._queue[self._max_batch :],
            )
            try:
                results = await self._store.submit_many(
                    [spec for spec, _, _ in batch], traceparents=[tp for _, tp, _ in batch]
                )
                self.batches += 1
                for (_, _, future), result in zip(batch, results, strict=True):
                    if not future.done():  # its caller may have given up (deadline, cancel)
                        future.set_result(result)
            except BaseException as exc:  # every caller of the batch gets the batch's error
                _fail(batch, exc)
                if not isinstance(exc, Exception):
                    # the writer is going away (cancelled): no queued caller may wait for ever
                    queued, self._queue = self._queue, []
                    _fail(queued, exc)
                    raise


def _fail(items: list[_Item], exc: BaseException) -> None:
    """Fail the callers of ``items`` that still wait."""
    for _, _, future in items:
        if not future.done():
            future.set_exception(exc)
