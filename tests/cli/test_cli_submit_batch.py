"""``sgctl submit -f``: a file of several jobs is one SubmitJobs call, all or nothing."""

from __future__ import annotations

import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

from click.testing import Result

from orchestrator.store import JobStore

Sgctl = Callable[..., Awaitable[Result]]


def job_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(textwrap.dedent(text))
    return path


async def test_a_file_of_several_jobs_is_one_call(
    sgctl: Sgctl, store: JobStore, tmp_path: Path
) -> None:
    path = job_file(
        tmp_path,
        """
        jobs:
          - {name: sweep, tenant: acme, command: [python, sweep.py], count: 3}
          - {name: eval, tenant: acme, queue: gpu, command: ["true"]}
        """,
    )
    result = await sgctl("submit", "-f", str(path))
    assert result.exit_code == 0, result.output
    ids = result.stdout.split()
    jobs = await store.get_jobs(ids)
    assert [j.spec.name for j in jobs] == ["sweep-0", "sweep-1", "sweep-2", "eval"]
    # one call: one submit time for all of them
    assert len({j.created_at.ToNanoseconds() for j in jobs}) == 1


async def test_one_bad_job_in_a_file_submits_none(
    sgctl: Sgctl, store: JobStore, tmp_path: Path
) -> None:
    path = job_file(
        tmp_path,
        """
        jobs:
          - {name: fine, tenant: acme, command: ["true"]}
          - {name: forged, tenant: acme, command: ["true"], env: {JOB_ID: mine}}
        """,
    )
    result = await sgctl("submit", "-f", str(path))
    assert result.exit_code == 2, result.output
    assert "jobs[1].env.JOB_ID" in result.stderr  # the whole file is checked before the call
    assert (await store.list_jobs())[0] == []
