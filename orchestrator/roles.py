"""Run one control-plane role as a plain process: ``python -m orchestrator.roles ROLE``.

The roles are the ones the Ray actors and ``sgctl up`` run (``api``, ``scheduler``,
``dispatcher``), as the same classes, without Ray: for deployments that supervise processes
themselves (systemd, Kubernetes Deployments) and for the fault harness, which kills and restarts
them one by one. Configuration comes from ``SG_*`` variables (see
``ControlPlaneConfig.from_env``); a role stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from orchestrator.api.server import run_until_signalled
from orchestrator.config import ControlPlaneConfig
from orchestrator.dispatch import Dispatcher, DispatcherOptions
from orchestrator.errors import OrchestratorError
from orchestrator.gc_tuning import tune_garbage_collector
from orchestrator.scheduler import Scheduler
from orchestrator.store import JobStore
from orchestrator.tracing import configure_tracing

__all__ = ["main"]

log = logging.getLogger(__name__)

ROLES = ("api", "scheduler", "dispatcher")


async def _until_signalled(run: asyncio.Task[None], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run


async def _serve(role: str, config: ControlPlaneConfig, index: int) -> None:
    store = JobStore.from_config(config.redis)
    try:
        if role == "api":
            await run_until_signalled(
                store,
                listen=config.api_listen,
                security=config.security,
                on_ready=lambda address: print(f"serving on {address}", flush=True),
            )
            return
        stop = asyncio.Event()
        if role == "scheduler":
            scheduler = Scheduler(store, config=config.scheduler)
            run = asyncio.create_task(scheduler.run_forever(stop))
        else:
            options = DispatcherOptions.from_config(config, index=index)
            run = asyncio.create_task(Dispatcher(store, options).run_forever(stop))
        print(f"{role} running", flush=True)
        await _until_signalled(run, stop)
    finally:
        await store.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.roles",
        description="Run one control-plane role as a plain process (no Ray).",
        epilog="Configuration: SG_REDIS_URL, SG_REDIS_PREFIX, SG_API_LISTEN, SG_DISPATCHERS, "
        "SG_HEARTBEAT_INTERVAL, SG_KILL_GRACE, SG_LOST_AFTER (seconds). Security: SG_TLS_DIR "
        "(certificates as `sgctl certs init` writes them) or SG_INSECURE=1 (plaintext; one of "
        "the two is required), SG_TOKEN_VERIFY_KEYS, SG_TOKEN_SIGNING_KEY, SG_ISSUING_CA_DIR.",
    )
    parser.add_argument("role", choices=ROLES, help="which role to run")
    parser.add_argument(
        "--index", type=int, default=0, help="dispatcher index, 0 .. SG_DISPATCHERS-1"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {args.role} %(name)s %(levelname)s %(message)s"
    )
    try:
        config = ControlPlaneConfig.from_env(os.environ)
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.role == "dispatcher" and not 0 <= args.index < config.dispatchers:
        print(
            f"error: --index must be in 0..{config.dispatchers - 1} (SG_DISPATCHERS="
            f"{config.dispatchers}), got {args.index}",
            file=sys.stderr,
        )
        return 2
    configure_tracing(f"sg-{args.role}", os.environ)
    tune_garbage_collector()
    asyncio.run(_serve(args.role, config, args.index))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
