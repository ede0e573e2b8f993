"""The Python SDK: ``AsyncClient`` (grpc.aio) and ``Client`` (its synchronous facade).

Both return ``Job``/``AsyncJob`` handles and raise the classes of ``orchestrator.errors``.
"""

from orchestrator.sdk.client import AsyncClient
from orchestrator.sdk.errors import error_from_rpc, is_api_unreachable
from orchestrator.sdk.job import AsyncJob, Job
from orchestrator.sdk.sync import Client

__all__ = ["AsyncClient", "AsyncJob", "Client", "Job", "error_from_rpc", "is_api_unreachable"]
