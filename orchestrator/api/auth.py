"""Who is calling: the bearer token of each API call, checked before anything else runs.

:class:`Authenticator` turns a call's metadata into a :class:`Principal` (or raises
``UnauthenticatedError``), applies the principal's rate limit (``RateLimitedError``) and the
method's scope (``PermissionDeniedError``, default deny: a method missing from
``orchestrator.security.authz.METHOD_SCOPES`` is refused). The interceptor in
``orchestrator.api.errors`` calls it for every ``orchestrator.v1`` method and makes the
principal available to the servicers through :func:`current_principal`, where the checks on
each object (this job, this site) happen.

The token is read from ``authorization: Bearer <token>`` and never logged.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Sequence
from typing import Final

from orchestrator.config import SecurityConfig
from orchestrator.errors import RateLimitedError, UnauthenticatedError
from orchestrator.security.authz import authorize_method
from orchestrator.security.ratelimit import RateLimiter
from orchestrator.security.tokens import ANONYMOUS_OPERATOR, Principal, TokenVerifier

__all__ = ["AUTHORIZATION_KEY", "Authenticator", "bearer_metadata", "current_principal"]

log = logging.getLogger(__name__)

AUTHORIZATION_KEY: Final = "authorization"
"""Metadata key of the bearer token."""
_BEARER: Final = "bearer "

_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("sg_principal")


def current_principal() -> Principal:
    """The principal of the call being served (set by the interceptor before the servicer)."""
    try:
        return _principal.get()
    except LookupError:
        raise RuntimeError("no principal: the call did not pass the API interceptor") from None


def bearer_metadata(token: str) -> tuple[str, str]:
    """The metadata pair that carries ``token``."""
    return (AUTHORIZATION_KEY, f"Bearer {token}")


def _token_of(metadata: Sequence[tuple[str, str | bytes]]) -> str:
    found = [v for k, v in metadata if k == AUTHORIZATION_KEY]
    if not found:
        raise UnauthenticatedError("no bearer token (metadata 'authorization: Bearer <token>')")
    if len(found) > 1:
        raise UnauthenticatedError("more than one authorization header")
    value = found[0]
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if not text[: len(_BEARER)].lower() == _BEARER:
        raise UnauthenticatedError("the authorization header is not 'Bearer <token>'")
    return text[len(_BEARER) :].strip()


class Authenticator:
    """Token check, rate limit and method scope of every call, per :class:`SecurityConfig`.

    Without verify keys, authentication is off: every caller is an operator. That is logged
    as a warning once, at construction.
    """

    def __init__(self, security: SecurityConfig) -> None:
        self._verifier = (
            TokenVerifier.from_files(security.token_verify_keys, audience=security.token_audience)
            if security.auth_enabled
            else None
        )
        self._limiter = RateLimiter(security.rate_per_second, security.rate_burst)
        if self._verifier is None:
            log.warning(
                "AUTHENTICATION IS OFF: no token verify keys are configured, so every caller "
                "of the API is treated as an operator"
            )

    @property
    def enabled(self) -> bool:
        """Whether calls must carry a valid token."""
        return self._verifier is not None

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]]) -> Principal:
        """The caller's principal. Raises ``UnauthenticatedError``."""
        if self._verifier is None:
            return ANONYMOUS_OPERATOR
        return self._verifier.verify(_token_of(metadata))

    def admit(self, method: str, metadata: Sequence[tuple[str, str | bytes]]) -> Principal:
        """Authenticate, rate-limit and check the method's scope; sets the call's principal."""
        principal = self.authenticate(metadata)
        wait = self._limiter.acquire(principal.name, time.monotonic())
        if wait > 0:
            raise RateLimitedError(
                f"rate limit of {principal.name} exceeded; retry in {wait:.2f}s",
                retry_after=wait,
            )
        authorize_method(principal, method)
        _principal.set(principal)
        return principal
