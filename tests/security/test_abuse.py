# ruff: noqa: E501 - tables of hostile calls read best one call per line
"""The API fails closed: every hostile call gets its exact status code, changes nothing in
Redis, and leaves the server up and other tenants unaffected.

Transport cases of the agent streams (no client certificate, another CA, expired, a site's
certificate claiming another site) are in ``test_agent_mtls.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from secure_stack import METHODS, SecureApi, raw_call, redis_snapshot, site

from orchestrator._pb.orchestrator.v1 import (
    federation_pb2,
    federation_pb2_grpc,
    service_pb2,
    service_pb2_grpc,
    types_pb2,
)
from orchestrator.api import ApiServer
from orchestrator.security.tls import channel_credentials
from orchestrator.security.tokens import Kind, TokenSigner, generate_key_pair

pytestmark = pytest.mark.asyncio

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def job_spec(tenant: str = "acme", **overrides: Any) -> types_pb2.JobSpec:
    spec = types_pb2.JobSpec(name="train", tenant=tenant, command=["true"])
    for key, value in overrides.items():
        setattr(spec, key, value)
    return spec


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        result = await call
    except aio.AioRpcError as exc:
        return exc.code()
    del result
    return OK


async def stream_code(call: Any) -> grpc.StatusCode:
    try:
        async for _ in call:
            pass
    except aio.AioRpcError as exc:
        return exc.code()
    return OK


# ---------------------------------------------------------------------------- authentication


@pytest.mark.parametrize(("service", "method", "streaming"), METHODS)
async def test_every_method_refuses_a_call_without_a_token(
    secure_api: SecureApi, service: str, method: str, streaming: bool
) -> None:
    before = await redis_snapshot(secure_api.store)
    async with secure_api.channel() as channel:
        code, _ = await raw_call(channel, service, method, streaming, b"", metadata=())
    assert code == UNAUTHENTICATED
    assert await redis_snapshot(secure_api.store) == before


async def test_bad_tokens_are_unauthenticated_and_change_nothing(
    secure_api: SecureApi, tmp_path: Path
) -> None:
    signer = secure_api.tokens.signer
    other_key, _ = generate_key_pair()
    (tmp_path / "other.pem").write_bytes(other_key)
    stranger = TokenSigner.from_file(tmp_path / "other.pem")
    good = secure_api.tokens.acme
    head, payload, sig = good.split(".")
    flipped_payload = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    flipped_sig = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    bad = {
        "expired": signer.issue(
            Kind.TENANT, "alice", tenant="acme", ttl_seconds=60, now=time.time() - 3600
        )[0],
        "wrong audience": signer.issue(
            Kind.TENANT, "alice", tenant="acme", ttl_seconds=60, audience="someone-else"
        )[0],
        "tampered payload": f"{head}.{flipped_payload}.{sig}",
        "tampered signature": f"{head}.{payload}.{flipped_sig}",
        "another key": stranger.issue(Kind.OPERATOR, "mallory", ttl_seconds=60)[0],
        "garbage": "not-a-token",
        "empty": "",
        "too long": "sg1." + "A" * 5_000,
    }
    before = await redis_snapshot(secure_api.store)
    async with secure_api.channel() as channel:
        jobs = service_pb2_grpc.JobServiceStub(channel)
        for why, token in bad.items():
            code = await code_of(
                jobs.SubmitJob(
                    service_pb2.SubmitJobRequest(spec=job_spec()),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=5,
                )
            )
            assert code == UNAUTHENTICATED, why
        # a scheme other than Bearer, and two tokens at once
        for metadata in (
            (("authorization", f"Basic {good}"),),
            (("authorization", f"Bearer {good}"), ("authorization", f"Bearer {good}")),
        ):
            code = await code_of(
                jobs.SubmitJob(
                    service_pb2.SubmitJobRequest(spec=job_spec()), metadata=metadata, timeout=5
                )
            )
            assert code == UNAUTHENTICATED
    assert await redis_snapshot(secure_api.store) == before


async def test_no_token_is_ever_logged(
    secure_api: SecureApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    t = secure_api.tokens
    expired = t.signer.issue(Kind.TENANT, "alice", tenant="acme", ttl_seconds=1, now=1_000_000_000)[
        0
    ]
    async with secure_api.channel() as channel:
        jobs = service_pb2_grpc.JobServiceStub(channel)
        ok = await jobs.SubmitJob(
            service_pb2.SubmitJobRequest(spec=job_spec()), metadata=bearer(t.acme), timeout=5
        )
        for token in (expired, t.globex, t.acme[:-3] + "AAA", t.narvik_jv):
            await code_of(
                jobs.GetJob(
                    service_pb2.GetJobRequest(job_id=ok.job.id), metadata=bearer(token), timeout=5
                )
            )
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert caplog.records  # the calls were logged ...
    for token in (expired, t.globex, t.acme, t.narvik_jv):
        for part in token.split("."):
            if len(part) > 8:
                assert part not in text  # ... without any part of any token


# ---------------------------------------------------------------------------- malformed input


MALFORMED = [
    b"\x0a\xff\xff\xff\xff\x0f",  # field 1, length far beyond the message
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # a varint that never ends
    b"\x0a\x05ab",  # truncated length-delimited field
]


@pytest.mark.parametrize(("service", "method", "streaming"), METHODS)
async def test_malformed_protobuf_bytes_are_invalid_argument(
    secure_api: SecureApi, service: str, method: str, streaming: bool
) -> None:
    before = await redis_snapshot(secure_api.store)
    async with secure_api.channel() as channel:
        for payload in MALFORMED:
            code, details = await raw_call(
                channel, service, method, streaming, payload,
                metadata=bearer(secure_api.tokens.operator),
            )  # fmt: skip
            assert code == INVALID_ARGUMENT, (payload, details)
            assert "request" in details
    assert await redis_snapshot(secure_api.store) == before


HOSTILE = {
    "NUL": "train\x00",
    "newline": "train\nINFO forged log line",
    "RTL override": "train\u202etxt.exe",
    "dot-dot-slash": "../../etc/passwd",
    "slash": "a/b",
    "10k": "x" * 10_000,
}


@pytest.mark.parametrize("why", sorted(HOSTILE))
async def test_hostile_names_are_invalid_argument_naming_the_field(
    secure_api: SecureApi, why: str
) -> None:
    name = HOSTILE[why]
    before = await redis_snapshot(secure_api.store)
    op = bearer(secure_api.tokens.operator)
    async with secure_api.channel() as channel:
        jobs = service_pb2_grpc.JobServiceStub(channel)
        sites = service_pb2_grpc.SiteServiceStub(channel)
        tenants = service_pb2_grpc.TenantServiceStub(channel)
        federation = federation_pb2_grpc.FederationServiceStub(channel)
        cases: list[tuple[str, Any]] = [
            ("name", jobs.SubmitJob(service_pb2.SubmitJobRequest(spec=job_spec(name=name)), metadata=op)),
            ("tenant", jobs.SubmitJob(service_pb2.SubmitJobRequest(spec=job_spec(tenant=name)), metadata=op)),
            ("queue", jobs.SubmitJob(service_pb2.SubmitJobRequest(spec=job_spec(queue=name)), metadata=op)),
            ("site.id", sites.RegisterSite(service_pb2.RegisterSiteRequest(site=site(name, owner="x")), metadata=op)),
            ("tenant.id", tenants.PutTenant(service_pb2.PutTenantRequest(tenant=types_pb2.Tenant(id=name)), metadata=op)),
            ("partner_id", federation.CreateEnrolment(federation_pb2.CreateEnrolmentRequest(partner_id=name), metadata=op)),
            ("job_id", jobs.GetJob(service_pb2.GetJobRequest(job_id=name), metadata=op)),
        ]  # fmt: skip
        labelled = job_spec()
        labelled.labels[name] = "v"
        cases.append(
            ("labels", jobs.SubmitJob(service_pb2.SubmitJobRequest(spec=labelled), metadata=op))
        )
        named_site = site("fine-id", owner="x")
        named_site.name = name
        cases.append(
            (
                "site.name",
                sites.RegisterSite(service_pb2.RegisterSiteRequest(site=named_site), metadata=op),
            )
        )
        for field, call in cases:
            try:
                await call
            except aio.AioRpcError as exc:
                assert exc.code() == INVALID_ARGUMENT, (field, exc.details())
                meta = dict(exc.trailing_metadata() or ())
                assert meta.get("sg-error") == "InvalidSpecError", field
                assert field.split(".")[0] in (meta.get("sg-field-field") or ""), (field, meta)
            else:
                raise AssertionError(f"{field}={why} was accepted")
    assert await redis_snapshot(secure_api.store) == before


async def test_secret_looking_env_values_are_refused_unless_references(
    secure_api: SecureApi,
) -> None:
    before = await redis_snapshot(secure_api.store)
    client = await secure_api.client(secure_api.tokens.acme)
    try:
        for env in (
            {"DB_PASSWORD": "hunter2"},
            {"CONFIG": "-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA PRIVATE KEY-----"},
            {"AWS_KEY_ID": "AKIAABCDEFGHIJKLMNOP"},
        ):
            spec = job_spec()
            spec.env.update(env)
            with pytest.raises(Exception) as caught:
                await client.submit(spec)
            assert type(caught.value).__name__ == "InvalidSpecError"
            assert f"env.{next(iter(env))}" in str(caught.value)
        assert await redis_snapshot(secure_api.store) == before
        spec = job_spec()
        spec.env["DB_PASSWORD"] = "secret://vault/db/password"
        assert (await client.submit(spec)).id
    finally:
        await client.close()


async def test_oversized_messages_and_metadata_are_refused(secure_api: SecureApi) -> None:
    before = await redis_snapshot(secure_api.store)
    async with secure_api.channel() as channel:
        jobs = service_pb2_grpc.JobServiceStub(channel)
        big = job_spec()
        big.command.extend(["x" * 100_000] * 50)  # 5 MB, over the 4 MiB limit
        code = await code_of(
            jobs.SubmitJob(
                service_pb2.SubmitJobRequest(spec=big),
                metadata=bearer(secure_api.tokens.acme),
                timeout=10,
            )
        )
        assert code == RESOURCE_EXHAUSTED
        code = await code_of(
            jobs.SubmitJob(
                service_pb2.SubmitJobRequest(spec=job_spec()),
                metadata=(*bearer(secure_api.tokens.acme), ("x-padding", "p" * 64_000)),
                timeout=10,
            )
        )
        assert code == RESOURCE_EXHAUSTED
    assert await redis_snapshot(secure_api.store) == before
    await assert_serving(secure_api)


async def assert_serving(api: SecureApi) -> None:
    async with api.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------------------- tenants


async def test_another_tenants_job_is_not_found_everywhere(secure_api: SecureApi) -> None:
    t = secure_api.tokens
    async with secure_api.channel() as channel:
        jobs = service_pb2_grpc.JobServiceStub(channel)
        mine = (
            await jobs.SubmitJob(
                service_pb2.SubmitJobRequest(spec=job_spec("acme")), metadata=bearer(t.acme)
            )
        ).job
        before = await redis_snapshot(secure_api.store)
        other = bearer(t.globex)
        job_id = mine.id
        assert (
            await code_of(jobs.GetJob(service_pb2.GetJobRequest(job_id=job_id), metadata=other))
            == NOT_FOUND
        )
        assert (
            await code_of(
                jobs.CancelJob(service_pb2.CancelJobRequest(job_id=job_id), metadata=other)
            )
            == NOT_FOUND
        )
        assert (
            await code_of(
                jobs.ExplainJob(service_pb2.ExplainJobRequest(job_id=job_id), metadata=other)
            )
            == NOT_FOUND
        )
        assert (
            await stream_code(
                jobs.WatchEvents(
                    service_pb2.WatchEventsRequest(job_id=job_id, follow=True), metadata=other
                )
            )
            == NOT_FOUND
        )
        assert (
            await stream_code(
                jobs.StreamLogs(service_pb2.StreamLogsRequest(job_id=job_id), metadata=other)
            )
            == NOT_FOUND
        )
        listing = await jobs.ListJobs(service_pb2.ListJobsRequest(), metadata=other)
        assert [j.id for j in listing.jobs] == []
        assert (
            await code_of(jobs.ListJobs(service_pb2.ListJobsRequest(tenant="acme"), metadata=other))
            == PERMISSION_DENIED
        )
        # indistinguishable from a job that does not exist
        missing = "j-0000000000-000000"
        errors = []
        for jid in (job_id, missing):
            try:
                await jobs.GetJob(service_pb2.GetJobRequest(job_id=jid), metadata=other)
            except aio.AioRpcError as exc:
                errors.append((exc.code(), (exc.details() or "").replace(jid, "ID")))
        assert errors[0] == errors[1]
        assert await redis_snapshot(secure_api.store) == before  # the cancel did nothing
        # and its owner still sees and cancels it
        mine_now = await jobs.GetJob(
            service_pb2.GetJobRequest(job_id=job_id), metadata=bearer(t.acme)
        )
        assert mine_now.job.id == job_id and not mine_now.job.cancel_requested
        listing = await jobs.ListJobs(service_pb2.ListJobsRequest(), metadata=bearer(t.acme))
        assert [j.id for j in listing.jobs] == [job_id]


async def test_a_tenant_submits_only_for_itself(secure_api: SecureApi) -> None:
    t = secure_api.tokens
    client = await secure_api.client(t.acme)
    try:
        before = await redis_snapshot(secure_api.store)
        with pytest.raises(Exception) as caught:
            await client.submit(job_spec("globex"))
        assert type(caught.value).__name__ == "PermissionDeniedError"
        assert await redis_snapshot(secure_api.store) == before
        job = await client.submit(job_spec(""))  # the token's tenant is filled in
        assert job.info.spec.tenant == "acme"
    finally:
        await client.close()


async def test_methods_outside_a_principals_scopes_are_denied(secure_api: SecureApi) -> None:
    t = secure_api.tokens
    before = await redis_snapshot(secure_api.store)
    async with secure_api.channel() as channel:
        jobs = service_pb2_grpc.JobServiceStub(channel)
        sites = service_pb2_grpc.SiteServiceStub(channel)
        tenants = service_pb2_grpc.TenantServiceStub(channel)
        federation = federation_pb2_grpc.FederationServiceStub(channel)
        enrolment = t.issue(Kind.ENROLMENT, "arctic-compute", partner="arctic-compute")
        denied = [
            sites.RegisterSite(service_pb2.RegisterSiteRequest(site=site("evil", owner="x")), metadata=bearer(t.acme)),
            tenants.PutTenant(service_pb2.PutTenantRequest(tenant=types_pb2.Tenant(id="acme", weight=100)), metadata=bearer(t.acme)),
            federation.CreateEnrolment(federation_pb2.CreateEnrolmentRequest(partner_id="acme"), metadata=bearer(t.acme)),
            federation.GetUsage(federation_pb2.GetUsageRequest(), metadata=bearer(t.acme)),
            jobs.SubmitJob(service_pb2.SubmitJobRequest(spec=job_spec()), metadata=bearer(t.narvik_jv)),
            jobs.ListJobs(service_pb2.ListJobsRequest(), metadata=bearer(t.narvik_jv)),
            sites.RegisterSite(service_pb2.RegisterSiteRequest(site=site("narvik", owner="narvik-jv")), metadata=bearer(t.narvik_jv)),
            federation.CreateEnrolment(federation_pb2.CreateEnrolmentRequest(partner_id="narvik-jv"), metadata=bearer(t.narvik_jv)),
            federation.OfferCapacity(federation_pb2.OfferCapacityRequest(), metadata=bearer(enrolment)),
            jobs.GetJob(service_pb2.GetJobRequest(job_id="j-0000000000-000000"), metadata=bearer(enrolment)),
        ]  # fmt: skip
        for i, call in enumerate(denied):
            assert await code_of(call) == PERMISSION_DENIED, i
        # a tenant sees only its own tenant record
        assert await code_of(tenants.GetTenant(service_pb2.GetTenantRequest(tenant_id="globex"), metadata=bearer(t.acme))) == NOT_FOUND  # fmt: skip
        listed = await tenants.ListTenants(
            service_pb2.ListTenantsRequest(), metadata=bearer(t.acme)
        )
        assert [s.tenant.id for s in listed.tenants] == ["acme"]
    assert await redis_snapshot(secure_api.store) == before


# ---------------------------------------------------------------------------- partners


async def test_a_partner_cannot_register_or_modify_a_site_it_does_not_own(
    secure_api: SecureApi,
) -> None:
    t = secure_api.tokens
    arctic = bearer(t.arctic)
    before = await redis_snapshot(secure_api.store)
    async with secure_api.channel() as channel:
        federation = federation_pb2_grpc.FederationServiceStub(channel)
        sites = service_pb2_grpc.SiteServiceStub(channel)
        offer = federation_pb2.CapacityOffer(
            site_id="narvik",
            gpus=[types_pb2.GpuPool(type="H100", count=1)],
            tenant_countries=["GB"],
        )
        taken = site("narvik", owner="")
        as_other = site("newsite", owner="narvik-jv")
        calls = [
            federation.RegisterSite(federation_pb2.RegisterPartnerSiteRequest(site=taken), metadata=arctic),
            federation.RegisterSite(federation_pb2.RegisterPartnerSiteRequest(site=as_other), metadata=arctic),
            federation.OfferCapacity(federation_pb2.OfferCapacityRequest(offer=offer), metadata=arctic),
            federation.WithdrawCapacity(federation_pb2.WithdrawCapacityRequest(site_id="narvik", mode=federation_pb2.WITHDRAW_MODE_REQUEUE), metadata=arctic),
            federation.SetSitePolicy(service_pb2.SetSitePolicyRequest(site_id="narvik"), metadata=arctic),
            federation.GetUsage(federation_pb2.GetUsageRequest(site_ids=["narvik"]), metadata=arctic),
            federation.ListOffers(federation_pb2.ListOffersRequest(site_id="narvik"), metadata=arctic),
            sites.SetSiteState(service_pb2.SetSiteStateRequest(site_id="narvik", state=types_pb2.SITE_STATE_CORDONED), metadata=arctic),
        ]  # fmt: skip
        for i, call in enumerate(calls):
            assert await code_of(call) == PERMISSION_DENIED, i
        assert await redis_snapshot(secure_api.store) == before
        # its own site, it may manage; its listings show only its own sites
        own = await federation.OfferCapacity(
            federation_pb2.OfferCapacityRequest(
                offer=federation_pb2.CapacityOffer(
                    site_id="tromso",
                    gpus=[types_pb2.GpuPool(type="H100", count=2)],
                    tenant_countries=["GB"],
                )
            ),
            metadata=arctic,
        )
        assert own.offer.id
        usage = await federation.GetUsage(federation_pb2.GetUsageRequest(), metadata=arctic)
        assert [u.site_id for u in usage.sites] == ["tromso"]


async def test_enrolment_tokens_are_single_use_and_a_bad_csr_writes_nothing(
    secure_api: SecureApi,
) -> None:
    from orchestrator.security.certs import certificate_dns_names, generate_key, make_csr

    t = secure_api.tokens
    async with secure_api.channel() as channel:
        federation = federation_pb2_grpc.FederationServiceStub(channel)
        enrolment = (
            await federation.CreateEnrolment(
                federation_pb2.CreateEnrolmentRequest(partner_id="fjord-gpu"),
                metadata=bearer(t.operator),
            )
        ).token
        first = await federation.Enrol(federation_pb2.EnrolRequest(), metadata=bearer(enrolment))
        assert first.partner_id == "fjord-gpu" and first.token
        before = await redis_snapshot(secure_api.store)
        again = federation.Enrol(federation_pb2.EnrolRequest(), metadata=bearer(enrolment))
        assert await code_of(again) == UNAUTHENTICATED
        partner = bearer(first.token)
        garbage = federation.RegisterSite(
            federation_pb2.RegisterPartnerSiteRequest(
                site=site("fjord", owner=""), csr_pem="-----BEGIN CERTIFICATE REQUEST-----\nxx"
            ),
            metadata=partner,
        )
        assert await code_of(garbage) == INVALID_ARGUMENT
        assert await redis_snapshot(secure_api.store) == before
        reply = await federation.RegisterSite(
            federation_pb2.RegisterPartnerSiteRequest(
                site=site("fjord", owner=""), csr_pem=make_csr(generate_key()).decode()
            ),
            metadata=partner,
        )
        assert reply.site.site.owner == "fjord-gpu"
        assert reply.identity.tls_server_name == "fjord.site.sovereign-grid"
        names = certificate_dns_names(reply.identity.certificate_pem.encode())
        assert names == ["fjord.site.sovereign-grid"]
        assert "BEGIN CERTIFICATE" in reply.identity.ca_pem


# ---------------------------------------------------------------------------- limits


async def test_the_rate_limit_is_per_principal(secure_api: SecureApi) -> None:
    server = ApiServer(
        secure_api.store, security=secure_api.pki.security(rate_per_second=2.0, rate_burst=5)
    )
    await server.start()
    try:
        async with aio.secure_channel(
            server.address, channel_credentials(secure_api.tls)
        ) as channel:
            tenants = service_pb2_grpc.TenantServiceStub(channel)
            request = service_pb2.ListTenantsRequest()
            codes = [
                await code_of(tenants.ListTenants(request, metadata=bearer(secure_api.tokens.acme)))
                for _ in range(12)
            ]
            assert codes[:5] == [OK] * 5
            assert RESOURCE_EXHAUSTED in codes[5:]
            # another tenant is unaffected
            other = await code_of(
                tenants.ListTenants(request, metadata=bearer(secure_api.tokens.globex))
            )
            assert other == OK
    finally:
        await server.stop(0)


async def test_calls_beyond_the_concurrency_cap_are_refused(secure_api: SecureApi) -> None:
    server = ApiServer(secure_api.store, security=secure_api.pki.security(max_concurrent_rpcs=3))
    await server.start()
    try:
        async with aio.secure_channel(server.address, channel_credentials(secure_api.tls)) as ch:
            jobs = service_pb2_grpc.JobServiceStub(ch)
            acme = bearer(secure_api.tokens.acme)
            job = (
                await jobs.SubmitJob(service_pb2.SubmitJobRequest(spec=job_spec()), metadata=acme)
            ).job
            watches = [
                jobs.WatchEvents(
                    service_pb2.WatchEventsRequest(job_id=job.id, follow=True), metadata=acme
                )
                for _ in range(3)
            ]
            for watch in watches:
                await watch.read()  # each is open and holds a slot
            code = await code_of(
                jobs.GetJob(service_pb2.GetJobRequest(job_id=job.id), metadata=acme)
            )
            assert code == RESOURCE_EXHAUSTED
            for watch in watches:
                watch.cancel()
            await asyncio.sleep(0.2)
            code = await code_of(
                jobs.GetJob(service_pb2.GetJobRequest(job_id=job.id), metadata=acme)
            )
            assert code == OK
    finally:
        await server.stop(0)


async def test_plaintext_to_the_tls_port_fails(secure_api: SecureApi) -> None:
    before = await redis_snapshot(secure_api.store)
    async with aio.insecure_channel(secure_api.address) as channel:
        jobs = service_pb2_grpc.JobServiceStub(channel)
        code = await code_of(
            jobs.SubmitJob(
                service_pb2.SubmitJobRequest(spec=job_spec()),
                metadata=bearer(secure_api.tokens.acme),
                timeout=5,
            )
        )
    assert code == grpc.StatusCode.UNAVAILABLE
    assert await redis_snapshot(secure_api.store) == before
    await assert_serving(secure_api)
