"""gRPC status (plus trailing metadata) -> the same error classes the server raised.

The API server puts the error's class name in ``sg-error`` and its ``.fields()`` in
``sg-field-<name>`` (see ``orchestrator.api.errors``). Here they become an instance of that
class with those attributes and the server's message. Without that metadata (the server was
never reached, or something else answered):

- UNAVAILABLE -> ``ServiceUnavailableError("cannot reach the API server at <address>; ...")``
- DEADLINE_EXCEEDED, CANCELLED -> ``ServiceUnavailableError`` (no answer in time; the server
  ended the call, e.g. while shutting down)
- NOT_FOUND -> ``NotFoundError``; INVALID_ARGUMENT -> ``InvalidSpecError(field="request")``
- UNAUTHENTICATED -> ``UnauthenticatedError``; PERMISSION_DENIED -> ``PermissionDeniedError``
- anything else -> ``InternalError`` with the status code name in the message.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final
from urllib.parse import unquote

import grpc
from grpc import aio

from orchestrator import errors as _errors
from orchestrator.errors import (
    InternalError,
    InvalidSpecError,
    NotFoundError,
    OrchestratorError,
    PermissionDeniedError,
    ServiceUnavailableError,
    UnauthenticatedError,
)

__all__ = ["UNREACHABLE_PREFIX", "error_from_rpc", "is_api_unreachable"]

UNREACHABLE_PREFIX: Final = "cannot reach the API server at "
"""Start of the message of a ServiceUnavailableError raised because nothing answered."""

_ERROR_CLASS_KEY = "sg-error"
_FIELD_KEY_PREFIX = "sg-field-"

#: Classes the server may name in ``sg-error``: the public error tree, nothing else.
_CLASSES: Final[dict[str, type[OrchestratorError]]] = {
    name: cls
    for name in _errors.__all__
    if isinstance(cls := getattr(_errors, name), type) and issubclass(cls, OrchestratorError)
}


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _rebuild(
    cls: type[OrchestratorError], message: str, fields: dict[str, str]
) -> OrchestratorError:
    """An instance of ``cls`` with the server's message and fields, without its __init__
    (whose arguments are not all on the wire, e.g. WaitTimeoutError.timeout)."""
    exc = cls.__new__(cls)
    OrchestratorError.__init__(exc, message)
    for name, value in fields.items():
        setattr(exc, name, value)
    return exc


def is_api_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the API server itself could not be reached (not a server answer)."""
    return isinstance(exc, ServiceUnavailableError) and exc.message.startswith(UNREACHABLE_PREFIX)


def error_from_rpc(exc: aio.AioRpcError, *, address: str) -> OrchestratorError:
    """The domain error for a failed call (an ``AioRpcError``) to the server at ``address``."""
    code = exc.code()
    details = exc.details() or ""
    metadata: Iterable[tuple[str, str | bytes]] = exc.trailing_metadata() or ()
    class_name = ""
    fields: dict[str, str] = {}
    for key, value in metadata:
        if key == _ERROR_CLASS_KEY:
            class_name = _text(value)
        elif key.startswith(_FIELD_KEY_PREFIX):
            fields[key[len(_FIELD_KEY_PREFIX) :]] = unquote(_text(value))
    cls = _CLASSES.get(class_name)
    if cls is not None:
        return _rebuild(cls, details or class_name, fields)
    if code == grpc.StatusCode.UNAVAILABLE:
        lowered = details.lower()
        if "handshake" in lowered or "ssl" in lowered or "certificate" in lowered:
            return ServiceUnavailableError(
                f"{UNREACHABLE_PREFIX}{address}: the TLS handshake failed (a CA that does not "
                "match the server's, or TLS to a plaintext port or the reverse)"
            )
        return ServiceUnavailableError(f"{UNREACHABLE_PREFIX}{address}; is it running?")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return UnauthenticatedError(details or "not authenticated")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDeniedError(details or "permission denied")
    if code == grpc.StatusCode.CANCELLED:
        return ServiceUnavailableError(
            f"the API server at {address} ended the call (is it shutting down?)"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ServiceUnavailableError(f"the API server at {address} did not answer in time")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFoundError(details or "not found")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidSpecError("request", details or "rejected by the server")
    return InternalError(f"{code.name}: {details}" if details else code.name)
