"""A dispatcher as a Ray actor: a thin shell that runs ``Dispatcher`` on its own loop."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any

from orchestrator.background import LoopThread
from orchestrator.config import ControlPlaneConfig
from orchestrator.dispatch.dispatcher import Dispatcher, DispatcherOptions
from orchestrator.gc_tuning import tune_garbage_collector
from orchestrator.store import JobStore
from orchestrator.tracing import configure_tracing

__all__ = ["DispatcherActor"]


class DispatcherActor:
    """Holds the streams of the sites with ``owner_of(site, count) == index``."""

    def __init__(
        self, config: ControlPlaneConfig, otel_env: Mapping[str, str], *, index: int
    ) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        configure_tracing("sg-dispatcher", otel_env)
        tune_garbage_collector()
        self._config = config
        self._options = DispatcherOptions.from_config(config, index=index)
        self._dispatcher: Dispatcher | None = None
        self._thread = LoopThread(
            self._main, name=f"dispatcher-{index}", exit_process_if_it_ends=True
        ).start()

    async def _main(self, stop: asyncio.Event) -> None:
        store = JobStore.from_config(self._config.redis)
        self._dispatcher = Dispatcher(store, self._options)
        try:
            await self._dispatcher.run_forever(stop)
        finally:
            await store.close()

    def info(self) -> dict[str, Any]:
        """Process id, liveness and the sites whose stream is up."""
        d = self._dispatcher
        return {
            "pid": os.getpid(),
            "alive": self._thread.alive(),
            "index": self._options.index,
            "sites": d.connected_sites() if d else [],
        }

    def shutdown(self) -> None:
        """Stop the loop and close the streams."""
        self._thread.stop()
