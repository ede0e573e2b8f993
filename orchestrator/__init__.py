"""Sovereign Grid: a multi-site workload orchestrator.

The public Python API: clients, typed job specs, job states and the error tree.

    from orchestrator import Client, JobSpec

    with Client.connect("api.example.org:50051", tls=True, token=token) as client:
        job = client.submit(JobSpec(name="hello", tenant="acme", command=["echo", "hi"]))
        print(job.wait(timeout=60).state)

Importing this package loads the SDK (gRPC and protobuf) only: never Ray or Redis.
"""

from orchestrator.config import TlsFiles
from orchestrator.errors import (
    IllegalTransitionError,
    InternalError,
    InvalidSpecError,
    JobNotFoundError,
    NotFoundError,
    OrchestratorError,
    PermissionDeniedError,
    RateLimitedError,
    ServiceUnavailableError,
    SiteNotFoundError,
    StoreUnavailableError,
    TenantNotFoundError,
    UnauthenticatedError,
    WaitTimeoutError,
)
from orchestrator.sdk import AsyncClient, AsyncJob, Client, Job
from orchestrator.spec import JobSpec, Placement, PriorityClass, Resources, load_job_file
from orchestrator.states import JobState

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "Client",
    "IllegalTransitionError",
    "InternalError",
    "InvalidSpecError",
    "Job",
    "JobNotFoundError",
    "JobSpec",
    "JobState",
    "NotFoundError",
    "OrchestratorError",
    "PermissionDeniedError",
    "Placement",
    "PriorityClass",
    "RateLimitedError",
    "Resources",
    "ServiceUnavailableError",
    "SiteNotFoundError",
    "StoreUnavailableError",
    "TenantNotFoundError",
    "TlsFiles",
    "UnauthenticatedError",
    "WaitTimeoutError",
    "load_job_file",
]
