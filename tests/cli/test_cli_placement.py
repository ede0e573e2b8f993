"""`sgctl explain` and `sgctl tenants` against a live API server and the real store."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from click.testing import Result

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.store import Decision, JobStore
from orchestrator.validation import normalize_site, normalize_spec

Sgctl = Callable[..., Awaitable[Result]]


async def test_explain_names_each_sites_reason(sgctl: Sgctl, store: JobStore) -> None:
    for site_id, country in (("narvik", "NO"), ("abilene", "US")):
        site = types_pb2.Site(id=site_id, name=site_id, jurisdiction=country, cpus=64,
                              memory_mb=1 << 20, endpoint="127.0.0.1:1")  # fmt: skip
        site.gpus.add(type="H100", count=8, watts=1400)
        await store.register_site(normalize_site(site))
    # as if a dispatcher held the abilene stream; narvik's agent is not connected
    await store.record_heartbeat("abilene", dispatcher_id="test")
    spec = types_pb2.JobSpec(name="j", tenant="acme", command=["true"])
    spec.placement.allowed_jurisdictions.append("NORDICS")
    spec.resources.gpus = 4
    job, _ = await store.submit(normalize_spec(spec))

    result = await sgctl("explain", job.id)
    assert result.exit_code == 0, result.output
    assert "position 1 of 1" in result.output
    # narvik is not connected (not accepting now); abilene is outside the NORDICS
    lines = {line.split()[0]: line for line in result.output.splitlines()[3:] if line.strip()}
    assert "state" in lines["narvik"]
    assert "residency" in lines["abilene"] and "US" in lines["abilene"]

    as_json = json.loads((await sgctl("explain", job.id, "-o", "json")).output)
    reasons = {v["site_id"]: v["reason"] for v in as_json["verdicts"]}
    assert reasons == {"narvik": "PLACEMENT_REASON_STATE", "abilene": "PLACEMENT_REASON_RESIDENCY"}

    missing = await sgctl("explain", "j-0000000000-000000")
    assert missing.exit_code == 3


async def test_tenants_apply_and_list(sgctl: Sgctl, tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(
        "tenants:\n  - {id: uio, country: NO, weight: 2}\n"
        "  - {id: acme, country: US, quota_gpus: 64, quota_gpus_by_jurisdiction: {US: 32}}\n"
    )
    applied = await sgctl("tenants", "apply", "-f", str(path))
    assert applied.exit_code == 0, applied.output
    listed = await sgctl("tenants", "-o", "json")
    data = {t["tenant"]["id"]: t["tenant"] for t in json.loads(listed.output)}
    assert data["uio"]["country"] == "NO" and data["uio"]["weight"] == 2
    assert data["acme"]["quota_gpus"] == 64
    assert data["acme"]["quota_gpus_by_jurisdiction"] == {"US": 32}
    table = await sgctl("tenants")
    assert "uio" in table.output and "US 32" in table.output

    path.write_text("tenants:\n  - {id: bad, country: UK}\n")
    bad = await sgctl("tenants", "apply", "-f", str(path))
    assert bad.exit_code == 2
    assert "tenants[0].country" in bad.output and "GB" in bad.output


async def test_a_draining_site_reports_drained_once_empty(sgctl: Sgctl, store: JobStore) -> None:
    site = types_pb2.Site(id="narvik", name="Narvik", jurisdiction="NO", cpus=64,
                          memory_mb=1 << 20, endpoint="127.0.0.1:1")  # fmt: skip
    await store.register_site(normalize_site(site))
    job, _ = await store.submit(normalize_spec(types_pb2.JobSpec(name="j", tenant="t",
                                                                 command=["true"])))  # fmt: skip
    await store.commit([Decision(job.id, 1, "narvik")])
    assert (await sgctl("drain", "narvik")).exit_code == 0
    row = next(line for line in (await sgctl("sites")).output.splitlines() if "narvik" in line)
    assert "DRAINING" in row
    await store.cancel(job.id)
    row = next(line for line in (await sgctl("sites")).output.splitlines() if "narvik" in line)
    assert "DRAINED" in row
