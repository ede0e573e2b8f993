"""The site agent: runs the control plane's job attempts at one site.

``AgentServer`` serves ``agent.v1.AgentService`` over gRPC; ``AgentRuntime`` holds the attempt
bookkeeping (dedup, GPU slots, status outbox, cancels) without gRPC; executors run the attempts.
The ``sg-agent`` command (``agents.cli``) is the entrypoint.
"""

from agents.config import AGENT_VERSION, AgentConfig
from agents.executors import (
    AttemptHandle,
    Executor,
    ExitResult,
    LaunchError,
    LaunchSpec,
    LocalExecutor,
)
from agents.gpus import GpuAllocation, GpuInventory, InsufficientGpusError
from agents.journal import AttemptRecord, AttemptState, Journal, StatusRecord
from agents.runtime import (
    AckResult,
    AgentRuntime,
    AttemptNotFoundError,
    AttemptOutput,
    AttemptRequest,
    CancelRequest,
    Capacity,
)
from agents.server import AgentServer, AgentService

__all__ = [
    "AGENT_VERSION",
    "AckResult",
    "AgentConfig",
    "AgentRuntime",
    "AgentServer",
    "AgentService",
    "AttemptHandle",
    "AttemptNotFoundError",
    "AttemptOutput",
    "AttemptRecord",
    "AttemptRequest",
    "AttemptState",
    "CancelRequest",
    "Capacity",
    "Executor",
    "ExitResult",
    "GpuAllocation",
    "GpuInventory",
    "InsufficientGpusError",
    "Journal",
    "LaunchError",
    "LaunchSpec",
    "LocalExecutor",
    "StatusRecord",
]
