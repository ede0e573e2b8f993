"""Authorisation: every API method needs a scope (default deny), and each kind of caller sees
and changes only its own objects."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator._pb.orchestrator.v1 import federation_pb2, service_pb2, types_pb2
from orchestrator.errors import (
    JobNotFoundError,
    PermissionDeniedError,
    TenantNotFoundError,
)
from orchestrator.security.authz import (
    METHOD_SCOPES,
    authorize_method,
    check_job_visible,
    check_site_managed,
    check_submit,
    check_tenant_visible,
    list_tenant_filter,
    site_visible_to,
    tenant_visible_to,
)
from orchestrator.security.tokens import (
    ALL_SCOPES,
    ANONYMOUS_OPERATOR,
    DEFAULT_SCOPES,
    Kind,
    Principal,
)

OPERATOR = Principal(kind=Kind.OPERATOR, subject="root", scopes=DEFAULT_SCOPES[Kind.OPERATOR])
ACME = Principal(
    kind=Kind.TENANT, subject="alice", tenant="acme", scopes=DEFAULT_SCOPES[Kind.TENANT]
)
ACME_READER = Principal(kind=Kind.TENANT, subject="dash", tenant="acme", scopes={"jobs:read"})
NARVIK = Principal(
    kind=Kind.PARTNER, subject="ops", partner="narvik-jv", scopes=DEFAULT_SCOPES[Kind.PARTNER]
)
ENROLMENT = Principal(
    kind=Kind.ENROLMENT, subject="new", partner="narvik-jv", scopes=DEFAULT_SCOPES[Kind.ENROLMENT]
)
EVERYONE = [OPERATOR, ACME, ACME_READER, NARVIK, ENROLMENT, ANONYMOUS_OPERATOR]


def all_methods() -> list[str]:
    methods = []
    for module in (service_pb2, federation_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            methods += [f"/{service.full_name}/{m.name}" for m in service.methods]
    return methods


def test_every_method_of_every_service_needs_a_scope() -> None:
    methods = all_methods()
    assert len(methods) == 24  # 8 job, 5 site, 3 tenant and 8 federation methods
    missing = [m for m in methods if m not in METHOD_SCOPES]
    assert not missing, f"methods without a scope (refused to everyone): {missing}"
    assert set(METHOD_SCOPES) == set(methods), "scopes listed for methods that do not exist"
    assert set(METHOD_SCOPES.values()) <= ALL_SCOPES


@pytest.mark.parametrize(
    ("method", "scope"),
    [
        ("/orchestrator.v1.JobService/SubmitJob", "jobs:submit"),
        ("/orchestrator.v1.JobService/SubmitJobs", "jobs:submit"),
        ("/orchestrator.v1.JobService/StreamLogs", "jobs:read"),
        ("/orchestrator.v1.JobService/ExplainJob", "jobs:read"),
        ("/orchestrator.v1.JobService/CancelJob", "jobs:cancel"),
        ("/orchestrator.v1.SiteService/GetSite", "sites:read"),
        ("/orchestrator.v1.SiteService/SetSitePolicy", "sites:admin"),
        ("/orchestrator.v1.TenantService/PutTenant", "tenants:admin"),
        ("/orchestrator.v1.TenantService/ListTenants", "tenants:read"),
        ("/orchestrator.v1.FederationService/CreateEnrolment", "federation:admin"),
        ("/orchestrator.v1.FederationService/Enrol", "federation:enrol"),
        ("/orchestrator.v1.FederationService/RegisterSite", "federation:manage"),
        ("/orchestrator.v1.FederationService/SetSitePolicy", "federation:manage"),
        ("/orchestrator.v1.FederationService/GetUsage", "usage:read"),
    ],
)
def test_method_scopes(method: str, scope: str) -> None:
    assert METHOD_SCOPES[method] == scope


def test_operators_may_call_every_method() -> None:
    for method in all_methods():
        authorize_method(OPERATOR, method)
        authorize_method(ANONYMOUS_OPERATOR, method)


@pytest.mark.parametrize("principal", [ACME, NARVIK, ENROLMENT, ACME_READER])
def test_each_kind_may_call_exactly_the_methods_its_scopes_open(principal: Principal) -> None:
    for method in all_methods():
        if METHOD_SCOPES[method] in principal.scopes:
            authorize_method(principal, method)
        else:
            with pytest.raises(PermissionDeniedError) as err:
                authorize_method(principal, method)
            name = method.rsplit("/", 1)[1]
            assert name in err.value.message
            assert METHOD_SCOPES[method] in err.value.message
            assert err.value.principal == principal.name


def test_a_tenant_cannot_administer_sites_or_enrol() -> None:
    with pytest.raises(PermissionDeniedError, match="sites:admin"):
        authorize_method(ACME, "/orchestrator.v1.SiteService/SetSiteState")
    with pytest.raises(PermissionDeniedError, match="federation:manage"):
        authorize_method(ACME, "/orchestrator.v1.FederationService/OfferCapacity")
    with pytest.raises(PermissionDeniedError, match="federation:enrol"):
        authorize_method(NARVIK, "/orchestrator.v1.FederationService/Enrol")
    with pytest.raises(PermissionDeniedError, match="jobs:submit"):
        authorize_method(ENROLMENT, "/orchestrator.v1.JobService/SubmitJob")


@given(method=st.text(max_size=300))
def test_unknown_methods_are_refused_to_everyone(method: str) -> None:
    if method in METHOD_SCOPES:
        return
    for principal in EVERYONE:
        with pytest.raises(PermissionDeniedError) as err:
            authorize_method(principal, method)
        assert len(err.value.message) < 200  # a huge method name is not echoed back whole


@pytest.mark.parametrize(
    "method",
    [
        "/grpc.health.v1.Health/Check",
        "/orchestrator.v1.JobService/DeleteEverything",
        "/orchestrator.v1.JobService/submitjob",
        "orchestrator.v1.JobService/SubmitJob",
        "/orchestrator.v1.AgentService/Connect",
    ],
)
def test_default_deny_for_look_alike_methods(method: str) -> None:
    with pytest.raises(PermissionDeniedError, match="not open to any caller"):
        authorize_method(OPERATOR, method)


# -- jobs ---------------------------------------------------------------------------------------


def spec(tenant: str = "") -> types_pb2.JobSpec:
    return types_pb2.JobSpec(name="train", tenant=tenant, command=["python", "train.py"])


def test_a_tenant_submits_for_its_own_tenant() -> None:
    given_spec = spec()
    filled = check_submit(ACME, given_spec)
    assert filled.tenant == "acme" and filled.name == "train"
    assert given_spec.tenant == ""  # the caller's message is not changed
    assert check_submit(ACME, spec("acme")).tenant == "acme"


def test_a_tenant_cannot_submit_for_another() -> None:
    with pytest.raises(PermissionDeniedError, match="this token is for tenant 'acme'") as err:
        check_submit(ACME, spec("globex"))
    assert err.value.principal == "tenant:acme/alice"


def test_operators_submit_for_anyone_and_others_not_at_all() -> None:
    assert check_submit(OPERATOR, spec("globex")).tenant == "globex"
    assert check_submit(OPERATOR, spec()).tenant == ""  # validation then asks for one
    for principal in (NARVIK, ENROLMENT):
        with pytest.raises(PermissionDeniedError):
            check_submit(principal, spec("acme"))


def job(tenant: str) -> types_pb2.Job:
    return types_pb2.Job(id="j-01jc3k9x7m-4f9d2q", spec=spec(tenant))


def test_another_tenants_job_looks_missing() -> None:
    check_job_visible(ACME, job("acme"))
    check_job_visible(OPERATOR, job("globex"))
    for principal in (ACME, NARVIK, ENROLMENT):
        with pytest.raises(JobNotFoundError) as err:
            check_job_visible(principal, job("globex"))
        assert str(err.value) == str(JobNotFoundError("j-01jc3k9x7m-4f9d2q"))
        assert err.value.fields() == {"job_id": "j-01jc3k9x7m-4f9d2q"}


def test_job_listings_are_limited_to_the_tenant() -> None:
    assert list_tenant_filter(ACME, "") == "acme"
    assert list_tenant_filter(ACME, "acme") == "acme"
    with pytest.raises(PermissionDeniedError, match="'acme'"):
        list_tenant_filter(ACME, "globex")
    assert list_tenant_filter(OPERATOR, "") == ""
    assert list_tenant_filter(OPERATOR, "globex") == "globex"
    with pytest.raises(PermissionDeniedError):
        list_tenant_filter(NARVIK, "")


# -- tenants and sites --------------------------------------------------------------------------


def test_another_tenant_looks_missing() -> None:
    check_tenant_visible(ACME, "acme")
    check_tenant_visible(OPERATOR, "globex")
    with pytest.raises(TenantNotFoundError) as err:
        check_tenant_visible(ACME, "globex")
    assert err.value.tenant == "globex"
    with pytest.raises(TenantNotFoundError):
        check_tenant_visible(NARVIK, "acme")
    assert tenant_visible_to(ACME, "acme") and not tenant_visible_to(ACME, "globex")


def test_partners_manage_only_their_own_sites() -> None:
    check_site_managed(NARVIK, "narvik", "narvik-jv")
    check_site_managed(OPERATOR, "narvik", "narvik-jv")
    check_site_managed(OPERATOR, "orphan", "")
    with pytest.raises(PermissionDeniedError, match="site 'abilene' is not yours") as err:
        check_site_managed(NARVIK, "abilene", "abilene-partners")
    assert err.value.principal == "partner:narvik-jv/ops"
    for principal, owner in ((NARVIK, ""), (ACME, "acme"), (ENROLMENT, "narvik-jv")):
        with pytest.raises(PermissionDeniedError):
            check_site_managed(principal, "narvik", owner)


def test_site_visibility_in_listings() -> None:
    for owner in ("narvik-jv", "abilene-partners", ""):
        assert site_visible_to(OPERATOR, owner)
        assert site_visible_to(ACME, owner)
        assert not site_visible_to(ENROLMENT, owner)
    assert site_visible_to(NARVIK, "narvik-jv")
    assert not site_visible_to(NARVIK, "abilene-partners")
    assert not site_visible_to(NARVIK, "")
