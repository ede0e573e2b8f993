"""Status codes without the server's error metadata (something else answered, or nothing)."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from orchestrator.errors import (
    InternalError,
    InvalidSpecError,
    JobNotFoundError,
    NotFoundError,
    OrchestratorError,
    PermissionDeniedError,
    ServiceUnavailableError,
    UnauthenticatedError,
    WaitTimeoutError,
)
from orchestrator.sdk import error_from_rpc, is_api_unreachable


def rpc_error(code: grpc.StatusCode, details: str, *meta: tuple[str, str]) -> aio.AioRpcError:
    return aio.AioRpcError(code, aio.Metadata(), aio.Metadata(*meta), details=details)


@pytest.mark.parametrize(
    ("code", "cls", "text"),
    [
        (grpc.StatusCode.UNAVAILABLE, ServiceUnavailableError, "cannot reach the API server at"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, ServiceUnavailableError, "did not answer in time"),
        (grpc.StatusCode.CANCELLED, ServiceUnavailableError, "ended the call"),
        (grpc.StatusCode.NOT_FOUND, NotFoundError, "no such thing"),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidSpecError, "no such thing"),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError, "no such thing"),
        (grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError, "no such thing"),
        (grpc.StatusCode.DATA_LOSS, InternalError, "DATA_LOSS: no such thing"),
    ],
)
def test_without_metadata(code: grpc.StatusCode, cls: type[OrchestratorError], text: str) -> None:
    err = error_from_rpc(rpc_error(code, "no such thing"), address="10.0.0.1:50051")
    assert type(err) is cls
    assert text in err.message
    assert is_api_unreachable(err) == (code == grpc.StatusCode.UNAVAILABLE)


def test_named_class_and_fields_are_rebuilt() -> None:
    err = error_from_rpc(
        rpc_error(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "job 'j-1' still RUNNING after 5s",
            ("sg-error", "WaitTimeoutError"),
            ("sg-field-job_id", "j-1"),
            ("sg-field-state", "RUNNING"),
        ),
        address="x:1",
    )
    assert isinstance(err, WaitTimeoutError)
    assert (err.job_id, err.state, err.message) == ("j-1", "RUNNING", err.args[0])
    assert err.fields() == {"job_id": "j-1", "state": "RUNNING"}


def test_only_classes_of_the_error_tree_are_rebuilt() -> None:
    err = error_from_rpc(
        rpc_error(grpc.StatusCode.NOT_FOUND, "gone", ("sg-error", "SystemExit")), address="x:1"
    )
    assert type(err) is NotFoundError
    err = error_from_rpc(
        rpc_error(
            grpc.StatusCode.NOT_FOUND,
            "job 'j' not found",
            ("sg-error", "JobNotFoundError"),
            ("sg-field-job_id", "j%C3%B8"),
        ),
        address="x:1",
    )
    assert isinstance(err, JobNotFoundError) and err.job_id == "jø"
