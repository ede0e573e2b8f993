"""SiteService, the health service, and the log proxy (against a real site agent)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from api_drive import place, site_pb
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agents import AgentConfig, AgentServer, AttemptRequest
from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.api import SERVICE_NAMES, ApiServer
from orchestrator.errors import (
    IllegalTransitionError,
    InvalidSpecError,
    ServiceUnavailableError,
    SiteNotFoundError,
)
from orchestrator.sdk import AsyncClient
from orchestrator.sitefile import SiteConfig
from orchestrator.spec import JobSpec
from orchestrator.states import JobState
from orchestrator.store import JobStore, StatusReport, free_port


async def test_register_list_get_and_set_state(client: AsyncClient) -> None:
    status = await client.register_site(site_pb("narvik"))
    assert status.state == types_pb2.SITE_STATE_ACTIVE
    assert status.site.name == "Narvik"
    await client.register_site(site_pb("abilene"))
    assert [s.site.id for s in await client.sites()] == ["abilene", "narvik"]
    assert (await client.get_site("narvik")).site.endpoint == "127.0.0.1:1"

    assert (await client.cordon("narvik", reason="maintenance")).state == (
        types_pb2.SITE_STATE_CORDONED
    )
    assert (await client.drain("narvik")).state == types_pb2.SITE_STATE_DRAINING
    # re-registering keeps the administrative state
    assert (await client.register_site(site_pb("narvik"))).state == types_pb2.SITE_STATE_DRAINING
    assert (await client.activate("narvik")).state == types_pb2.SITE_STATE_ACTIVE


async def test_site_errors(client: AsyncClient) -> None:
    with pytest.raises(SiteNotFoundError) as err:
        await client.get_site("atlantis")
    assert err.value.site == "atlantis"
    with pytest.raises(SiteNotFoundError):
        await client.cordon("atlantis")
    with pytest.raises(InvalidSpecError) as bad:
        await client.get_site("Not A Site")
    assert bad.value.field == "site_id"
    no_endpoint = site_pb()
    no_endpoint.endpoint = ""
    with pytest.raises(InvalidSpecError) as bad:
        await client.register_site(no_endpoint)
    assert bad.value.field == "site.endpoint"
    await client.register_site(site_pb())
    with pytest.raises(InvalidSpecError) as bad:
        await client._set_site_state("narvik", types_pb2.SITE_STATE_LOST, "")
    assert bad.value.field == "state"


async def test_health_service_reports_serving_then_not(store: JobStore) -> None:
    server = ApiServer(store)
    address = await server.start()
    async with aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", *SERVICE_NAMES):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAMES[0]))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        await server.stop(grace=0.5)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()


async def test_logs_of_a_job_that_has_not_started(client: AsyncClient) -> None:
    job = await client.submit(JobSpec(name="a", tenant="acme", command=["true"]))
    with pytest.raises(IllegalTransitionError) as err:
        [c async for c in job.logs()]
    assert "has not started" in err.value.message
    assert err.value.state == "PENDING"
    with pytest.raises(InvalidSpecError) as bad:
        [c async for c in job.logs(attempt=2)]
    assert bad.value.field == "attempt"


async def test_logs_when_the_agent_is_unreachable(client: AsyncClient, store: JobStore) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    await client.register_site(site_pb(endpoint=endpoint))
    job = await client.submit(JobSpec(name="a", tenant="acme", command=["true"]))
    await place(store, job.id)
    with pytest.raises(ServiceUnavailableError) as err:
        [c async for c in job.logs()]
    assert "site 'narvik'" in err.value.message and endpoint in err.value.message


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[AgentServer]:
    site = SiteConfig(
        id="narvik",
        name="Narvik",
        jurisdiction="NO",
        owner="narvik-jv",
        power_cap_mw=230,
        cpus=64,
        memory_mb=65536,
        gpus={"H100": 8},
    )
    server = AgentServer(
        AgentConfig(
            site=site,
            state_dir=tmp_path / "agent",
            log_poll_seconds=0.02,
            shutdown_grace_seconds=0.5,
        )
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0.5, kill_jobs=True)


async def test_logs_are_proxied_from_the_sites_agent(
    client: AsyncClient, store: JobStore, agent: AgentServer
) -> None:
    await client.register_site(site_pb(endpoint=agent.address))
    command = ("sh", "-c", "echo hello; sleep 0.3; echo oops >&2; sleep 0.3; echo bye")
    job = await client.submit(JobSpec(name="talk", tenant="acme", command=command))
    await place(store, job.id)
    # the agent takes the attempt, as if its dispatcher had sent it
    [ack] = agent.runtime.dispatch([AttemptRequest(job_id=job.id, attempt=1, command=command)])
    assert ack.accepted
    await store.apply_status("narvik", [StatusReport(job.id, 1, JobState.RUNNING)])

    followed = b"".join([c async for c in job.logs(follow=True)])  # ends with the attempt
    assert followed.splitlines() == [b"hello", b"oops", b"bye"]  # as it was written
    again = b"".join([c async for c in client.logs(job.id, attempt=1)])
    assert sorted(again.splitlines()) == sorted(followed.splitlines())

    await agent.stop(0.1)  # the agent goes away: UNAVAILABLE naming the site
    with pytest.raises(ServiceUnavailableError, match="narvik"):
        [c async for c in job.logs()]
