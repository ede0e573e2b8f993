"""sgctl: tables for people, JSON/YAML for scripts, one-line errors with meaningful exit codes."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import yaml
from click.testing import Result

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.api import ApiServer
from orchestrator.store import JobStore, free_port
from orchestrator.validation import normalize_site

Sgctl = Callable[..., Awaitable[Result]]

JOBS = """
jobs:
  - name: sweep
    tenant: acme
    command: [python, sweep.py]
    count: 2
  - name: residency
    tenant: uio
    queue: gpu
    command: ["true"]
    placement: {allowed_jurisdictions: [NO]}
"""


def job_file(tmp_path: Path, text: str = JOBS) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(textwrap.dedent(text))
    return path


async def test_submit_then_list_as_table_json_and_yaml(
    sgctl: Sgctl, store: JobStore, tmp_path: Path
) -> None:
    result = await sgctl("submit", "-f", str(job_file(tmp_path)))
    assert result.exit_code == 0, result.output
    ids = result.stdout.split()
    assert len(ids) == 3
    stored = [await store.get_job(i) for i in ids]
    assert [j.spec.name for j in stored] == ["sweep-0", "sweep-1", "residency"]
    assert list(stored[2].spec.placement.allowed_jurisdictions) == ["NO"]

    table = await sgctl("jobs")
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:5] == ["ID", "NAME", "TENANT", "QUEUE", "STATE"]
    assert [line.split()[0] for line in lines[1:]] == ids[::-1]
    assert "PENDING" in lines[1]

    as_json = json.loads((await sgctl("jobs", "-o", "json")).stdout)
    assert [j["id"] for j in as_json] == ids[::-1]
    assert as_json[0]["state"] == "JOB_STATE_PENDING"
    assert as_json[0]["spec"]["resources"]["memory_mb"] == 1024  # numbers stay numbers
    as_yaml = yaml.safe_load((await sgctl("jobs", "-o", "yaml", "--queue", "gpu")).stdout)
    assert [j["id"] for j in as_yaml] == [ids[2]]
    assert as_yaml[0]["spec"]["placement"]["allowed_jurisdictions"] == ["NO"]

    await store.cancel(ids[0])
    cancelled = json.loads((await sgctl("jobs", "--state", "CANCELLED", "-o", "json")).stdout)
    assert [j["id"] for j in cancelled] == [ids[0]]
    limited = json.loads((await sgctl("jobs", "--limit", "1", "-o", "json")).stdout)
    assert len(limited) == 1


async def test_describe_events_and_cancel(sgctl: Sgctl, store: JobStore, tmp_path: Path) -> None:
    [job_id, *_] = (await sgctl("submit", "-f", str(job_file(tmp_path)))).stdout.split()
    shown = await sgctl("describe", job_id)
    assert shown.exit_code == 0
    assert "ID:" in shown.stdout and job_id in shown.stdout
    assert "State:" in shown.stdout and "PENDING" in shown.stdout
    assert "submitted" in shown.stdout

    cancelled = await sgctl("cancel", job_id, "--reason", "not needed")
    assert (cancelled.exit_code, cancelled.stdout.strip()) == (0, f"{job_id}: CANCELLED")
    described = json.loads((await sgctl("describe", job_id, "-o", "json")).stdout)
    assert described["job"]["state"] == "JOB_STATE_CANCELLED"
    assert [e["message"] for e in described["events"]] == ["submitted", "cancelled: not needed"]

    events = json.loads((await sgctl("events", job_id, "-o", "json")).stdout)
    assert len(events) == 2
    followed = await sgctl("events", job_id, "-f", "-o", "json")  # ends: the job is finished
    assert [json.loads(line)["state"] for line in followed.stdout.splitlines()] == [
        "JOB_STATE_PENDING",
        "JOB_STATE_CANCELLED",
    ]
    table = await sgctl("events", job_id)
    assert "CANCELLED" in table.stdout and "TIME" in table.stdout


async def test_not_found_and_malformed_ids(sgctl: Sgctl) -> None:
    missing = await sgctl("describe", "j-0000000000-000000")
    assert missing.exit_code == 3
    assert missing.stderr.strip() == "error: job 'j-0000000000-000000' not found"
    assert missing.stdout == ""
    malformed = await sgctl("cancel", "nope")
    assert malformed.exit_code == 2
    assert malformed.stderr.startswith("error: invalid job_id:")
    site = await sgctl("cordon", "atlantis")
    assert (site.exit_code, site.stderr.strip()) == (3, "error: site 'atlantis' not found")


async def test_unreachable_api_gives_one_line_and_exit_4(sgctl: Sgctl) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = await sgctl("jobs", env={"SG_API": address})
    assert result.exit_code == 4
    assert result.stderr.strip() == (
        f"error: cannot reach the API server at {address}; is it running? (sgctl up)"
    )
    assert "Traceback" not in result.output


async def test_api_address_comes_from_the_state_file(
    sgctl: Sgctl, api: ApiServer, tmp_path: Path
) -> None:
    state_dir = tmp_path / ".sg"
    state_dir.mkdir()
    (state_dir / "up.json").write_text(json.dumps({"api": api.address, "pid": 1}))
    result = await sgctl("--state-dir", str(state_dir), "sites", env={"SG_API": None})
    assert result.exit_code == 0, result.output
    # SG_API wins over the state file
    dead = f"127.0.0.1:{free_port()}"
    (state_dir / "up.json").write_text(json.dumps({"api": dead}))
    result = await sgctl("--state-dir", str(state_dir), "sites")
    assert result.exit_code == 0, result.output
    result = await sgctl("--state-dir", str(state_dir), "sites", env={"SG_API": None})
    assert result.exit_code == 4 and dead in result.stderr


async def test_bad_job_files_exit_2_naming_the_field(sgctl: Sgctl, tmp_path: Path) -> None:
    typo = job_file(tmp_path, "name: a\ntenant: t\ncommand: [x]\ncolor: red\n")
    result = await sgctl("submit", "-f", str(typo))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: invalid color: unknown key")
    assert str(typo) in result.stderr
    shell = job_file(tmp_path, "name: a\ntenant: t\ncommand: python train.py\n")
    result = await sgctl("submit", "-f", str(shell))
    assert result.exit_code == 2 and "use a list like [python, train.py]" in result.stderr


async def test_submit_wait_exits_1_when_a_job_does_not_succeed(
    sgctl: Sgctl, store: JobStore, tmp_path: Path
) -> None:
    path = job_file(tmp_path, "name: lonely\ntenant: acme\ncommand: [sleep, 1]\n")
    submit = asyncio.create_task(sgctl("submit", "-f", str(path), "--wait", "--timeout", "10"))
    for _ in range(100):
        jobs, _ = await store.list_jobs()
        if jobs:
            break
        await asyncio.sleep(0.05)
    [job] = jobs
    await asyncio.sleep(0.2)
    assert not submit.done()  # still waiting for the job
    await store.cancel(job.id, "stop")
    result = await asyncio.wait_for(submit, 10)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0] == job.id
    assert "CANCELLED" in result.stdout.splitlines()[-1]
    assert f"{job.id} lonely: CANCELLED" in result.stderr


async def test_wait_times_out_with_exit_5(sgctl: Sgctl, tmp_path: Path) -> None:
    path = job_file(tmp_path, "name: slow\ntenant: acme\ncommand: [sleep, 1]\n")
    [job_id] = (await sgctl("submit", "-f", str(path))).stdout.split()
    result = await sgctl("wait", job_id, "--timeout", "0.3")
    assert result.exit_code == 5
    assert result.stderr.strip().endswith(f"error: job '{job_id}' still PENDING after 0.3s")


async def test_logs_of_a_pending_job_exit_6(sgctl: Sgctl, tmp_path: Path) -> None:
    path = job_file(tmp_path, "name: slow\ntenant: acme\ncommand: [sleep, 1]\n")
    [job_id] = (await sgctl("submit", "-f", str(path))).stdout.split()
    result = await sgctl("logs", job_id)
    assert result.exit_code == 6
    assert "has not started" in result.stderr


async def test_sites_and_their_states(sgctl: Sgctl, store: JobStore) -> None:
    site = types_pb2.Site(
        id="narvik", jurisdiction="NO", cpus=64, memory_mb=65536, endpoint="127.0.0.1:1"
    )
    site.gpus.add(type="H100", count=8)
    await store.register_site(normalize_site(site))
    table = await sgctl("sites")
    assert table.exit_code == 0
    assert "narvik" in table.stdout and "H100 0/8" in table.stdout and "ACTIVE" in table.stdout
    assert (await sgctl("cordon", "narvik")).stdout.strip() == "narvik: CORDONED"
    listed = json.loads((await sgctl("sites", "-o", "json")).stdout)
    assert [(s["site"]["id"], s["state"]) for s in listed] == [("narvik", "SITE_STATE_CORDONED")]
    assert (await sgctl("drain", "narvik")).stdout.strip() == "narvik: DRAINING"
    assert (await sgctl("uncordon", "narvik")).stdout.strip() == "narvik: ACTIVE"
    assert (await store.get_site("narvik")).state == types_pb2.SITE_STATE_ACTIVE


async def test_help_documents_exit_codes_and_lists_every_command(sgctl: Sgctl) -> None:
    result = await sgctl("--help")
    assert result.exit_code == 0
    assert "Exit codes:" in result.stdout and "3  no such job or site" in result.stdout
    for command in ("submit", "jobs", "describe", "logs", "cancel", "events", "sites", "wait"):
        assert f"  {command}" in result.stdout
    usage = await sgctl("jobs", "--state", "sleeping")
    assert usage.exit_code == 2
