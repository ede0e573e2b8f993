"""The one error tree of the orchestrator, shared by the server, the SDK and the CLI.

    OrchestratorError
    ├── InvalidSpecError           a job spec or request field is invalid (names the field)
    ├── NotFoundError
    │   ├── JobNotFoundError       no such job (job_id)
    │   ├── SiteNotFoundError      no such site (site)
    │   └── TenantNotFoundError    no such tenant (tenant)
    ├── IllegalTransitionError     the job is not in a state that allows the change
    ├── StoreUnavailableError      the queue store (Redis) cannot be reached
    ├── ServiceUnavailableError    a service cannot be reached: the API server (SDK side),
    │                              or a site's agent (API side, e.g. for logs)
    ├── WaitTimeoutError           Job.wait() ran out of time (job_id)
    ├── UnauthenticatedError       no credentials, or ones that are expired, tampered with,
    │                              for another audience, or already used
    ├── PermissionDeniedError      the caller is known but may not do this (to this object)
    ├── RateLimitedError           the caller sent more calls than its rate allows
    └── InternalError              anything else; the server logged its traceback

The API server maps these to gRPC status codes in one table (orchestrator.api.errors) and the
SDK maps status codes back, so callers catch the same classes on both sides of the wire.
"""

from __future__ import annotations

__all__ = [
    "IllegalTransitionError",
    "InternalError",
    "InvalidSpecError",
    "JobNotFoundError",
    "NotFoundError",
    "OrchestratorError",
    "PermissionDeniedError",
    "RateLimitedError",
    "ServiceUnavailableError",
    "SiteNotFoundError",
    "StoreUnavailableError",
    "TenantNotFoundError",
    "UnauthenticatedError",
    "WaitTimeoutError",
]


class OrchestratorError(Exception):
    """Root of every error the orchestrator raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def fields(self) -> dict[str, str]:
        """Structured fields carried across the wire next to the message."""
        return {}


class InvalidSpecError(OrchestratorError):
    """A job spec or request field is invalid. ``field`` is its dotted path (``resources.gpus``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"invalid {field}: {problem}")
        self.field = field
        self.problem = problem

    def fields(self) -> dict[str, str]:
        return {"field": self.field, "problem": self.problem}


class NotFoundError(OrchestratorError):
    """Something asked for does not exist."""


class JobNotFoundError(NotFoundError):
    """No job with this id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} not found")
        self.job_id = job_id

    def fields(self) -> dict[str, str]:
        return {"job_id": self.job_id}


class SiteNotFoundError(NotFoundError):
    """No site with this id."""

    def __init__(self, site: str) -> None:
        super().__init__(f"site {site!r} not found")
        self.site = site

    def fields(self) -> dict[str, str]:
        return {"site": self.site}


class TenantNotFoundError(NotFoundError):
    """No tenant with this id."""

    def __init__(self, tenant: str) -> None:
        super().__init__(f"tenant {tenant!r} not found")
        self.tenant = tenant

    def fields(self) -> dict[str, str]:
        return {"tenant": self.tenant}


class IllegalTransitionError(OrchestratorError):
    """The job's current state (or attempt) does not allow the requested change."""

    def __init__(self, job_id: str, state: str, action: str) -> None:
        super().__init__(f"job {job_id!r} is {state}: cannot {action}")
        self.job_id = job_id
        self.state = state
        self.action = action

    def fields(self) -> dict[str, str]:
        return {"job_id": self.job_id, "state": self.state, "action": self.action}


class StoreUnavailableError(OrchestratorError):
    """The queue store (Redis) cannot be reached; nothing was written."""


class ServiceUnavailableError(OrchestratorError):
    """A service cannot be reached: the API server (raised by the SDK) or a site's agent."""


class WaitTimeoutError(OrchestratorError):
    """A wait for a job to finish ran out of time; the job itself is unaffected."""

    def __init__(self, job_id: str, timeout: float, state: str) -> None:
        super().__init__(f"job {job_id!r} still {state} after {timeout:g}s")
        self.job_id = job_id
        self.timeout = timeout
        self.state = state

    def fields(self) -> dict[str, str]:
        return {"job_id": self.job_id, "state": self.state}


class UnauthenticatedError(OrchestratorError):
    """The call carried no credentials, or ones that cannot be accepted (expired, tampered
    with, signed by an unknown key, for another audience, or a single-use token already used).
    The message says which, never the credential itself."""


class PermissionDeniedError(OrchestratorError):
    """The caller is authenticated but may not do this: the method is outside its scopes, or
    the object (a site, a tenant) belongs to someone else. Objects a caller must not learn
    exist (another tenant's job) answer NotFoundError instead."""

    def __init__(self, message: str, *, principal: str = "") -> None:
        super().__init__(message)
        self.principal = principal

    def fields(self) -> dict[str, str]:
        return {"principal": self.principal} if self.principal else {}


class RateLimitedError(OrchestratorError):
    """The caller sent more calls than its rate allows; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def fields(self) -> dict[str, str]:
        return {"retry_after": f"{self.retry_after:.3f}"}


class InternalError(OrchestratorError):
    """An unexpected failure; the server logged it with its traceback."""
