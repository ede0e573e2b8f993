"""The one table from domain errors to gRPC status codes, and the one place that applies it.

The same interceptor is the door of every ``orchestrator.v1`` call. In order, before the
servicer runs: the bearer token is checked, the caller's rate limit and the method's scope are
applied (``orchestrator.api.auth``), and the request bytes are parsed, so that malformed bytes
are INVALID_ARGUMENT naming the message type (not INTERNAL). Only then does the servicer run.

Servicers never catch exceptions: they convert, call the domain, convert back. Whatever they
raise reaches :class:`ErrorInterceptor`, which answers with the status code from
:data:`STATUS_CODES` and puts the error's class name and ``.fields()`` into the trailing
metadata, so the SDK can raise the same class with the same fields on the caller's side:

    sg-error: JobNotFoundError
    sg-field-job_id: j-01jc3k9x7m-4f9d2q

Field values are percent-encoded where they are not printable ASCII (gRPC metadata values must
be). Only an exception outside the tree is unknown: it becomes INTERNAL with a generic message,
and is logged here with its traceback.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final
from urllib.parse import quote

import grpc
from grpc import aio

from orchestrator.api.auth import Authenticator
from orchestrator.errors import (
    IllegalTransitionError,
    InternalError,
    InvalidSpecError,
    NotFoundError,
    OrchestratorError,
    PermissionDeniedError,
    RateLimitedError,
    ServiceUnavailableError,
    StoreUnavailableError,
    UnauthenticatedError,
    WaitTimeoutError,
)

__all__ = [
    "ERROR_CLASS_KEY",
    "FIELD_KEY_PREFIX",
    "STATUS_CODES",
    "ErrorInterceptor",
    "status_for",
    "trailing_metadata_for",
]

log = logging.getLogger(__name__)

ERROR_CLASS_KEY: Final = "sg-error"
"""Trailing metadata key holding the domain error's class name."""
FIELD_KEY_PREFIX: Final = "sg-field-"
"""Prefix of the trailing metadata keys holding the error's ``.fields()``."""

#: Domain error -> status code. The first row whose class matches wins (subclasses first).
STATUS_CODES: Final[tuple[tuple[type[OrchestratorError], grpc.StatusCode], ...]] = (
    (InvalidSpecError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (IllegalTransitionError, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (ServiceUnavailableError, grpc.StatusCode.UNAVAILABLE),  # e.g. a site's agent is down
    (WaitTimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (RateLimitedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InternalError, grpc.StatusCode.INTERNAL),
)

_UNKNOWN_MESSAGE = "internal error; the API server logged the details"
_SERVICE_PREFIX = "/orchestrator.v1."


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The status code for ``exc``: its row in :data:`STATUS_CODES`, else INTERNAL."""
    for cls, code in STATUS_CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _meta_value(value: str) -> str:
    # Printable ASCII stays readable; everything else (and '%') is percent-encoded.
    return quote(value, safe="".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%"))


def trailing_metadata_for(exc: OrchestratorError) -> tuple[tuple[str, str], ...]:
    """``sg-error`` and one ``sg-field-<name>`` per field of ``exc``."""
    meta = [(ERROR_CLASS_KEY, type(exc).__name__)]
    meta += [
        (FIELD_KEY_PREFIX + name.lower(), _meta_value(value))
        for name, value in exc.fields().items()
    ]
    return tuple(meta)


async def _abort(context: aio.ServicerContext[Any, Any], method: str, exc: Exception) -> None:
    if isinstance(exc, OrchestratorError):
        code = status_for(exc)
        if code == grpc.StatusCode.INTERNAL:
            log.error("%s failed: %s", method, exc.message, exc_info=exc)
        else:
            log.debug("%s: %s: %s", method, code.name, exc.message)
        await context.abort(code, exc.message, trailing_metadata_for(exc))
        return
    log.error("unexpected error in %s", method, exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL,
        _UNKNOWN_MESSAGE,
        ((ERROR_CLASS_KEY, InternalError.__name__),),
    )


_Unary = Callable[..., Awaitable[Any]]
_Stream = Callable[..., AsyncIterator[Any]]
_Parse = Callable[[bytes], Any]


def _admit(
    method: str,
    auth: Authenticator,
    parse: _Parse,
    raw: bytes,
    context: aio.ServicerContext[Any, Any],
) -> Any:
    """Authenticate and authorise the call, then parse its request."""
    auth.admit(method, tuple(context.invocation_metadata() or ()))
    try:
        return parse(raw)
    except Exception:  # noqa: BLE001 - any failure to parse is the caller's bytes
        name = method.rsplit("/", 1)[-1]
        raise InvalidSpecError("request", f"is not a valid {name} request message") from None


def _wrap_unary(method: str, behaviour: _Unary, parse: _Parse, auth: Authenticator) -> _Unary:
    async def call(raw: bytes, context: aio.ServicerContext[Any, Any]) -> Any:
        try:
            request = _admit(method, auth, parse, raw, context)
            return await behaviour(request, context)
        except aio.AbortError:
            raise
        except Exception as exc:  # the one place: mapped by STATUS_CODES
            await _abort(context, method, exc)
            raise  # not reached: abort raises

    return call


def _wrap_stream(method: str, behaviour: _Stream, parse: _Parse, auth: Authenticator) -> _Stream:
    async def call(raw: bytes, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            request = _admit(method, auth, parse, raw, context)
            async for item in behaviour(request, context):
                yield item
        except aio.AbortError:
            raise
        except Exception as exc:  # the one place: mapped by STATUS_CODES
            await _abort(context, method, exc)
            raise  # not reached: abort raises

    return call


class ErrorInterceptor(aio.ServerInterceptor):
    """Admits (``authenticator``) and applies :data:`STATUS_CODES` to every ``orchestrator.v1``
    method, unary and streaming.

    Other services (gRPC health) are passed through untouched. The wrapped handler of each
    method is built once and reused.
    """

    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        if method in self._wrapped:
            return self._wrapped[method]
        handler = await continuation(handler_call_details)
        if handler is None or not method.startswith(_SERVICE_PREFIX):
            return handler
        self._wrapped[method] = wrapped = self._wrap(method, handler)
        return wrapped

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        # The request arrives as bytes (no deserializer): parsed after the caller is admitted.
        parse = handler.request_deserializer
        if parse is None:
            raise TypeError(f"{method}: no request deserializer")
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary, parse, self._auth),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(method, handler.unary_stream, parse, self._auth),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        raise TypeError(f"{method}: no error mapping for this kind of handler")
