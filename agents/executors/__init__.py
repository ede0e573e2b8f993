"""Executors: how the agent runs job attempts (local processes today; Ray, Slurm, Kubernetes)."""

from agents.executors.base import (
    AttemptHandle,
    Executor,
    ExitResult,
    LaunchError,
    LaunchSpec,
    job_environment,
)
from agents.executors.local import LocalAttempt, LocalExecutor

__all__ = [
    "AttemptHandle",
    "Executor",
    "ExitResult",
    "LaunchError",
    "LaunchSpec",
    "LocalAttempt",
    "LocalExecutor",
    "job_environment",
]
