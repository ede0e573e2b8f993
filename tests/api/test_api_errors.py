"""The one error table: status codes and trailing metadata on the wire, and back in the SDK."""

from __future__ import annotations

import logging
import time

import grpc
import pytest
from grpc import aio

from orchestrator import errors
from orchestrator._pb.orchestrator.v1 import service_pb2, service_pb2_grpc, types_pb2
from orchestrator.api import STATUS_CODES, ApiServer, status_for
from orchestrator.config import RedisConfig
from orchestrator.errors import (
    InternalError,
    InvalidSpecError,
    OrchestratorError,
    ServiceUnavailableError,
    StoreUnavailableError,
)
from orchestrator.sdk import AsyncClient, is_api_unreachable
from orchestrator.store import JobStore, free_port


def test_every_error_class_has_a_row_and_only_internal_is_internal() -> None:
    classes = [
        getattr(errors, name)
        for name in errors.__all__
        if getattr(errors, name) not in (OrchestratorError, errors.NotFoundError)
    ]
    for cls in classes:
        assert any(issubclass(cls, row) for row, _ in STATUS_CODES), cls
    assert status_for(InternalError("x")) == grpc.StatusCode.INTERNAL
    assert status_for(errors.JobNotFoundError("j")) == grpc.StatusCode.NOT_FOUND
    assert status_for(errors.SiteNotFoundError("s")) == grpc.StatusCode.NOT_FOUND
    assert status_for(errors.IllegalTransitionError("j", "SUCCEEDED", "cancel")) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert status_for(StoreUnavailableError("down")) == grpc.StatusCode.UNAVAILABLE
    assert status_for(KeyError("k")) == grpc.StatusCode.INTERNAL


async def _raw_error(address: str, call: str, request: object) -> aio.AioRpcError:
    async with aio.insecure_channel(address) as channel:
        stub = service_pb2_grpc.JobServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as err:
            await getattr(stub, call)(request, timeout=5)
    return err.value


async def test_wire_status_and_trailing_metadata(api: ApiServer) -> None:
    # a problem with a non-ASCII character survives the (ASCII-only) metadata
    bad_name = types_pb2.JobSpec(name="jøb", tenant="acme", command=["true"])
    err = await _raw_error(api.address, "SubmitJob", service_pb2.SubmitJobRequest(spec=bad_name))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    meta = dict(err.trailing_metadata() or ())
    assert meta["sg-error"] == "InvalidSpecError"
    assert meta["sg-field-field"] == "name"
    assert "j%C3%B8b" in meta["sg-field-problem"]
    assert "invalid name" in (err.details() or "")

    err = await _raw_error(
        api.address, "GetJob", service_pb2.GetJobRequest(job_id="j-0000000000-000000")
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    meta = dict(err.trailing_metadata() or ())
    assert (meta["sg-error"], meta["sg-field-job_id"]) == (
        "JobNotFoundError",
        "j-0000000000-000000",
    )

    err = await _raw_error(
        api.address, "ListJobs", service_pb2.ListJobsRequest(page_token="garbage")
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(err.trailing_metadata() or ())["sg-field-field"] == "page_token"

    err = await _raw_error(
        api.address,
        "ListJobs",
        service_pb2.ListJobsRequest(states=[0]),  # UNSPECIFIED
    )
    assert dict(err.trailing_metadata() or ())["sg-field-field"] == "states[0]"


async def test_sdk_rebuilds_the_error_with_its_fields(api: ApiServer) -> None:
    async with await AsyncClient.connect(api.address) as client:
        with pytest.raises(InvalidSpecError) as err:
            await client.submit(types_pb2.JobSpec(name="jøb", tenant="acme", command=["true"]))
    assert err.value.field == "name"
    assert "'jøb'" in err.value.problem
    assert err.value.message.startswith("invalid name:")


async def test_redis_down_is_unavailable_with_a_clear_message() -> None:
    dead = JobStore.from_config(
        RedisConfig(url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    )
    server = ApiServer(dead)
    address = await server.start()
    try:
        err = await _raw_error(
            address,
            "SubmitJob",
            service_pb2.SubmitJobRequest(
                spec=types_pb2.JobSpec(name="a", tenant="acme", command=["true"])
            ),
        )
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "queue store (Redis) unreachable" in (err.details() or "")
        async with await AsyncClient.connect(address) as client:
            with pytest.raises(StoreUnavailableError, match="Redis"):
                await client.list_jobs()
            with pytest.raises(StoreUnavailableError):
                await client.sites()
    finally:
        await server.stop(0)
        await dead.close()


async def test_no_server_is_service_unavailable_naming_the_address() -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError) as err:
        await AsyncClient.connect(address, timeout=5)
    assert time.monotonic() - started < 4  # fails fast, not after the timeout
    assert address in err.value.message
    assert is_api_unreachable(err.value)
    assert not is_api_unreachable(StoreUnavailableError("queue store (Redis) unreachable"))


class _BrokenStore(JobStore):
    """A real store whose get_job has a bug."""

    async def get_job(self, job_id: str) -> types_pb2.Job:
        raise ZeroDivisionError("secret internals")


async def test_an_unknown_exception_is_internal_generic_and_logged(
    redis_config: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    base = JobStore.from_config(redis_config)
    broken = _BrokenStore(base.client, prefix=redis_config.prefix)
    server = ApiServer(broken)
    address = await server.start()
    try:
        with caplog.at_level(logging.ERROR, logger="orchestrator.api.errors"):
            err = await _raw_error(
                address, "GetJob", service_pb2.GetJobRequest(job_id="j-0000000000-000000")
            )
            async with await AsyncClient.connect(address) as client:
                with pytest.raises(InternalError) as internal:
                    await client.get_job("j-0000000000-000000")
    finally:
        await server.stop(0)
        await base.close()
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (err.details() or "")
    assert dict(err.trailing_metadata() or ())["sg-error"] == "InternalError"
    assert "logged" in internal.value.message
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ZeroDivisionError]
    assert logged and "/orchestrator.v1.JobService/GetJob" in logged[0].getMessage()
