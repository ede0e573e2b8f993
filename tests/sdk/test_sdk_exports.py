"""The public surface, pinned: adding or removing a public name is a deliberate change."""

from __future__ import annotations

import subprocess
import sys

import orchestrator
import orchestrator.api
import orchestrator.cli
import orchestrator.sdk
import orchestrator.spec


def test_top_level_exports() -> None:
    assert sorted(orchestrator.__all__) == sorted(
        [
            "AsyncClient",
            "AsyncJob",
            "Client",
            "IllegalTransitionError",
            "InternalError",
            "InvalidSpecError",
            "Job",
            "JobNotFoundError",
            "JobSpec",
            "JobState",
            "NotFoundError",
            "OrchestratorError",
            "PermissionDeniedError",
            "Placement",
            "PriorityClass",
            "RateLimitedError",
            "Resources",
            "ServiceUnavailableError",
            "SiteNotFoundError",
            "StoreUnavailableError",
            "TenantNotFoundError",
            "TlsFiles",
            "UnauthenticatedError",
            "WaitTimeoutError",
            "load_job_file",
        ]
    )
    for name in orchestrator.__all__:
        assert getattr(orchestrator, name) is not None


def test_package_exports() -> None:
    assert sorted(orchestrator.sdk.__all__) == [
        "AsyncClient",
        "AsyncJob",
        "Client",
        "Job",
        "error_from_rpc",
        "is_api_unreachable",
    ]
    assert sorted(orchestrator.api.__all__) == [
        "ApiServer",
        "ErrorInterceptor",
        "JobServiceServicer",
        "LogProxy",
        "SERVICE_NAMES",
        "STATUS_CODES",
        "SiteServiceServicer",
        "run_until_signalled",
        "status_for",
    ]
    assert sorted(orchestrator.cli.__all__) == ["EXIT_CODES", "cli", "exit_code_for", "main"]
    assert sorted(orchestrator.spec.__all__) == [
        "JobSpec",
        "Placement",
        "PriorityClass",
        "Resources",
        "load_job_file",
        "parse_jobs",
    ]


def test_importing_the_sdk_stays_light() -> None:
    code = (
        "import sys, orchestrator; "
        "heavy = sorted(m for m in ('ray', 'redis', 'orchestrator.store') if m in sys.modules); "
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
