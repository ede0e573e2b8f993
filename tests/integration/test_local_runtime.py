"""`sgctl up` / `sgctl down` as a user runs them: real processes, and nothing left running."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from orchestrator.local.state import pid_alive, read_state
from orchestrator.store import free_port

ROOT = Path(__file__).resolve().parents[2]


def sgctl(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False,
    )  # fmt: skip


def _group_members(pgid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def test_up_runs_jobs_and_down_leaves_nothing_running(tmp_path: Path) -> None:
    state_dir = tmp_path / "sg"
    api = f"127.0.0.1:{free_port()}"
    up = sgctl("up", "--state-dir", str(state_dir), "--api-listen", api)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "ready" in up.stderr  # progress was shown while waiting
    state = read_state(state_dir)
    assert state is not None and state.api == api
    try:
        again = sgctl("up", "--state-dir", str(state_dir))
        assert again.returncode == 0 and "already running" in again.stdout

        sites = sgctl("--state-dir", str(state_dir), "sites", "-o", "json")
        assert sites.returncode == 0, sites.stderr
        listed = json.loads(sites.stdout)
        assert {s["site"]["id"] for s in listed} == {"narvik", "abu-dhabi", "abilene", "loughton"}

        job_file = tmp_path / "job.yaml"
        job_file.write_text(
            "name: hello\ntenant: uio-research\ncommand: [sh, -c, 'echo hello from $SG_SITE']\n"
            "placement: {allowed_jurisdictions: [NO]}\n"
        )
        submit = sgctl("--state-dir", str(state_dir), "submit", "-f", str(job_file), "--wait")
        assert submit.returncode == 0, submit.stdout + submit.stderr
        jobs = sgctl("--state-dir", str(state_dir), "jobs", "-o", "json")
        [job] = json.loads(jobs.stdout)
        assert job["state"] == "JOB_STATE_SUCCEEDED" and job["site"] == "narvik"
        logs = sgctl("--state-dir", str(state_dir), "logs", job["id"])
        assert logs.returncode == 0 and "hello from narvik" in logs.stdout

        # secure with no configuration: TLS and a token, which sgctl found in the state dir
        assert state.ca and state.token_file
        no_token = sgctl("--state-dir", str(state_dir), "--token-file", "/dev/null", "jobs")
        assert no_token.returncode == 7 and "no bearer token" in no_token.stderr
        plaintext = sgctl("--state-dir", str(state_dir), "--insecure", "jobs")
        assert plaintext.returncode == 4, plaintext.stderr
        tenant_token = tmp_path / "acme-ai.token"
        issued = sgctl(
            "--state-dir", str(state_dir), "tokens", "issue", "--tenant", "acme-ai", "--ttl", "5m"
        )
        assert issued.returncode == 0, issued.stderr
        tenant_token.write_text(issued.stdout)
        other = sgctl(
            "--state-dir", str(state_dir), "--token-file", str(tenant_token), "describe", job["id"]
        )
        assert other.returncode == 3, other.stdout + other.stderr  # another tenant's job: not found

        # a partner federates its own site with the SDK alone
        partner = subprocess.run(
            [sys.executable, "examples/partner_federation.py", "--state-dir", str(state_dir)],
            capture_output=True, text=True, timeout=180, cwd=ROOT, check=False,
        )  # fmt: skip
        assert partner.returncode == 0, partner.stdout + partner.stderr
        assert "SUCCEEDED on tromso" in partner.stdout and "refused:" in partner.stdout
    finally:
        down = sgctl("down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stdout + down.stderr
    assert "everything stopped" in down.stdout
    pids = [state.pid, state.redis_pid or 0] + [a["pid"] for a in state.agents.values()]
    assert [p for p in pids if p and pid_alive(p)] == []
    assert _group_members(state.pid) == []
    assert read_state(state_dir) is None
    assert "nothing running" in sgctl("down", "--state-dir", str(state_dir)).stdout
