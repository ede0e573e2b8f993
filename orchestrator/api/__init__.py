"""The API server: the gRPC boundary between callers (SDK, sgctl, partners) and the store.

Servicers convert proto -> one domain call -> proto; ``errors.STATUS_CODES`` is the one table
from domain errors to status codes, applied in one place (``errors.ErrorInterceptor``).
"""

from orchestrator.api.errors import STATUS_CODES, ErrorInterceptor, status_for
from orchestrator.api.jobs import JobServiceServicer
from orchestrator.api.logs import LogProxy
from orchestrator.api.server import SERVICE_NAMES, ApiServer, run_until_signalled
from orchestrator.api.sites import SiteServiceServicer

__all__ = [
    "SERVICE_NAMES",
    "STATUS_CODES",
    "ApiServer",
    "ErrorInterceptor",
    "JobServiceServicer",
    "LogProxy",
    "SiteServiceServicer",
    "run_until_signalled",
    "status_for",
]
