"""The scheduler as a Ray actor: a thin shell that runs ``Scheduler`` on its own loop.

Created by ``orchestrator.controlplane`` with restarts enabled; a restarted actor rebuilds
everything from Redis and carries on.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any

from orchestrator.background import LoopThread
from orchestrator.config import ControlPlaneConfig
from orchestrator.gc_tuning import tune_garbage_collector
from orchestrator.scheduler.scheduler import Scheduler
from orchestrator.store import JobStore
from orchestrator.tracing import configure_tracing

__all__ = ["SchedulerActor"]

log = logging.getLogger(__name__)


class SchedulerActor:
    """Runs placement cycles until killed. Create with ``ray.remote(SchedulerActor)``."""

    def __init__(self, config: ControlPlaneConfig, otel_env: Mapping[str, str]) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        configure_tracing("sg-scheduler", otel_env)
        tune_garbage_collector()
        self._config = config
        self._scheduler: Scheduler | None = None
        self._thread = LoopThread(
            self._main, name="scheduler", exit_process_if_it_ends=True
        ).start()

    async def _main(self, stop: asyncio.Event) -> None:
        store = JobStore.from_config(self._config.redis)
        try:
            for warning in await store.durability_warnings():
                log.warning("%s", warning)
        except Exception as exc:  # noqa: BLE001 - the loop below retries an unavailable store
            log.warning("scheduler could not read Redis persistence settings: %s", exc)
        self._scheduler = Scheduler(store, config=self._config.scheduler)
        try:
            await self._scheduler.run_forever(stop)
        finally:
            await store.close()

    def info(self) -> dict[str, Any]:
        """Process id, liveness and counters, for operators and tests."""
        s = self._scheduler
        return {
            "pid": os.getpid(),
            "alive": self._thread.alive(),
            "cycles": s.cycles if s else 0,
            "placed": s.placed_total if s else 0,
        }

    def shutdown(self) -> None:
        """Stop the loop (before the actor is killed on a clean stop)."""
        self._thread.stop()
