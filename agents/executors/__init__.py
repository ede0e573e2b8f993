"""Executors: how the agent runs job attempts (local processes, or simulated ones that start
nothing, for benchmarks; Ray, Slurm, Kubernetes to come)."""

from agents.executors.base import (
    AttemptHandle,
    Executor,
    ExitResult,
    LaunchError,
    LaunchSpec,
    job_environment,
)
from agents.executors.local import LocalAttempt, LocalExecutor
from agents.executors.sim import SimAttempt, SimExecutor

__all__ = [
    "AttemptHandle",
    "Executor",
    "ExitResult",
    "LaunchError",
    "LaunchSpec",
    "LocalAttempt",
    "LocalExecutor",
    "SimAttempt",
    "SimExecutor",
    "job_environment",
]
