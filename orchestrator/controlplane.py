"""Start and stop the control plane's Ray actors: one scheduler and K dispatchers.

Locally this starts a Ray instance (CPUs capped, temp dir under the state dir); with
``ray_address`` it joins an existing cluster. Actors are named (``sg-scheduler``,
``sg-dispatcher-{i}``) in the configured namespace and restart after a crash, rebuilding from
Redis.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.config import ControlPlaneConfig
from orchestrator.dispatch.actor import DispatcherActor
from orchestrator.scheduler.actor import SchedulerActor

__all__ = ["ControlPlane", "ray_temp_dir"]

log = logging.getLogger(__name__)

SCHEDULER_NAME = "sg-scheduler"
DISPATCHER_NAME = "sg-dispatcher-{}"
# Ray puts Unix sockets under its temp dir; their paths must stay under ~107 bytes.
_MAX_RAY_TEMP = 40


def ray_temp_dir(state_dir: Path) -> Path:
    """Ray's temp dir under the state dir, or a short one in /tmp if that path is too long."""
    wanted = (state_dir / "ray").resolve()
    if len(str(wanted)) <= _MAX_RAY_TEMP:
        wanted.mkdir(parents=True, exist_ok=True)
        return wanted
    return Path(tempfile.mkdtemp(prefix="sg-ray-"))


class ControlPlane:
    """Handles to the control plane's actors."""

    def __init__(
        self,
        config: ControlPlaneConfig,
        *,
        otel_env: Mapping[str, str] | None = None,
        num_cpus: int = 2,
    ) -> None:
        self.config = config
        self.otel_env = dict(otel_env or {})
        self.num_cpus = num_cpus
        self.scheduler: Any = None
        self.dispatchers: list[Any] = []
        self._started_ray = False

    def start(self, *, timeout: float = 120.0) -> None:
        """Start Ray if needed, create (or find) the actors, and wait until they answer."""
        import ray

        if not ray.is_initialized():
            if self.config.ray_address:
                ray.init(
                    address=self.config.ray_address,
                    namespace=self.config.ray_namespace,
                    log_to_driver=False,
                )
            else:
                ray.init(
                    num_cpus=self.num_cpus,
                    include_dashboard=False,
                    namespace=self.config.ray_namespace,
                    _temp_dir=str(ray_temp_dir(self.config.state_dir)),
                    log_to_driver=False,
                )
            self._started_ray = True
        opts: dict[str, Any] = {
            "max_restarts": -1,
            "max_task_retries": -1,
            "num_cpus": 0,
            "get_if_exists": True,
            "namespace": self.config.ray_namespace,
        }
        self.scheduler = (
            ray.remote(SchedulerActor)
            .options(name=SCHEDULER_NAME, **opts)
            .remote(self.config, self.otel_env)
        )
        self.dispatchers = [
            ray.remote(DispatcherActor)
            .options(name=DISPATCHER_NAME.format(i), **opts)
            .remote(self.config, self.otel_env, index=i)
            for i in range(self.config.dispatchers)
        ]
        ray.get([a.info.remote() for a in self.actors()], timeout=timeout)
        log.info("control plane up: scheduler and %d dispatchers", len(self.dispatchers))

    def actors(self) -> list[Any]:
        """The scheduler, then the dispatchers."""
        return [self.scheduler, *self.dispatchers] if self.scheduler is not None else []

    def info(self, *, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        """Each actor's ``info()``, keyed by actor name."""
        import ray

        names = [SCHEDULER_NAME] + [DISPATCHER_NAME.format(i) for i in range(len(self.dispatchers))]
        infos = ray.get([a.info.remote() for a in self.actors()], timeout=timeout)
        return dict(zip(names, infos, strict=True))

    def stop(self) -> None:
        """Stop the actors (no restart) and, if this started Ray, Ray itself."""
        import ray

        if not ray.is_initialized():
            return
        for actor in self.actors():
            try:
                ray.get(actor.shutdown.remote(), timeout=15)
            except Exception as exc:  # noqa: BLE001 - a dead actor needs no clean stop
                log.debug("actor shutdown: %s", exc)
            ray.kill(actor, no_restart=True)
        self.scheduler, self.dispatchers = None, []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
