"""The placement view of a pending job's spec (``orchestrator.scheduler.snapshot.job_request``)."""

from __future__ import annotations

import pytest

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.scheduler.model import Priority, TenantView
from orchestrator.scheduler.snapshot import job_request


def _spec(
    *,
    priority: int = 0,
    resources: types_pb2.Resources | None = None,
    placement: types_pb2.Placement | None = None,
) -> types_pb2.JobSpec:
    return types_pb2.JobSpec(
        name="j",
        tenant="acme",
        command=["true"],
        priority=priority,  # type: ignore[arg-type]
        resources=resources,
        placement=placement,
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (types_pb2.PRIORITY_CLASS_UNSPECIFIED, Priority.NORMAL),
        (types_pb2.PRIORITY_CLASS_SURPLUS, Priority.SURPLUS),
        (types_pb2.PRIORITY_CLASS_NORMAL, Priority.NORMAL),
        (types_pb2.PRIORITY_CLASS_HIGH, Priority.HIGH),
        (types_pb2.PRIORITY_CLASS_CRITICAL, Priority.CRITICAL),
    ],
)
def test_each_priority_class_maps_to_its_priority(given: int, expected: Priority) -> None:
    req = job_request("j-1", 1, _spec(priority=given), submit_order=5.0, tenants={})
    assert req.priority is expected


def test_an_unknown_priority_class_is_an_error() -> None:
    with pytest.raises(ValueError, match="99"):
        job_request("j-1", 1, _spec(priority=99), submit_order=5.0, tenants={})


def test_totals_over_nodes_sites_and_the_tenants_country() -> None:
    spec = _spec(
        resources=types_pb2.Resources(gpus=2, gpu_type="H100", cpus=4, memory_mb=100, nodes=3),
        placement=types_pb2.Placement(
            allowed_jurisdictions=["NO", "SE"],
            excluded_sites=["a", "b", "a"],
            preferred_sites=["c", "d"],
        ),
    )
    tenants = {"acme": TenantView(tenant="acme", country="NO")}
    req = job_request("j-1", 2, spec, submit_order=7.0, tenants=tenants)
    assert (req.gpus, req.cpus, req.memory_mb, req.nodes) == (6, 12, 300, 3)
    assert (req.job_id, req.attempt, req.tenant, req.submit_order) == ("j-1", 2, "acme", 7.0)
    assert req.allowed_jurisdictions == frozenset({"NO", "SE"})
    assert req.excluded_sites == frozenset({"a", "b"})
    assert req.preferred_sites == ("c", "d")
    assert req.tenant_country == "NO"
    plain = job_request("j-2", 1, _spec(), submit_order=8.0, tenants={})
    assert (plain.excluded_sites, plain.preferred_sites, plain.tenant_country) == (
        frozenset(),
        (),
        "",
    )
    assert (plain.gpus, plain.cpus, plain.nodes) == (0, 1, 1)
