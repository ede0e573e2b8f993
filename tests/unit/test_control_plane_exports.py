"""The public surface of the control-plane packages is pinned: a change here is deliberate."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

SURFACES = {
    "orchestrator.store": [
        "Ack", "Assignment", "CycleView", "Decision", "EpochGuard", "HeldAttempt", "JobStore",
        "Keys", "LocalRedis", "MAX_SUBMIT_BATCH", "PendingJob",
        "PendingRef", "Reconciliation", "Rollback",
        "RunningRecord", "SiteRecord", "SiteWork", "StatusReport", "Submitted", "TenantRecord",
        "Victim",
        "find_redis_server", "free_port", "pending_score",
    ],
    "orchestrator.scheduler": [
        "CycleStats", "DefaultPolicy", "Explanation", "JobExplanation", "JobRequest", "Placed",
        "PlacementResult", "Policy", "Preemption", "Priority", "Reason", "RunningJob",
        "Scheduler", "SitePolicy", "SiteVerdict", "SiteView", "Snapshot", "TenantView",
        "Weights", "explain", "explain_job", "never_reason", "place",
    ],
    "orchestrator.dispatch": ["Dispatcher", "DispatcherOptions", "owner_of"],
    "orchestrator.local": ["UpState", "pid_alive", "read_state", "state_path", "write_state"],
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(SURFACES))
def test_public_names(module: str) -> None:
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(SURFACES[module])
    for name in mod.__all__:
        assert getattr(mod, name) is not None


@pytest.mark.parametrize(
    "module",
    [
        "orchestrator.scheduler.placement",
        "orchestrator.scheduler.placement._state",
        "orchestrator.scheduler.placement._checks",
        "orchestrator.scheduler.placement._messages",
        "orchestrator.scheduler.placement._cycle",
        "orchestrator.scheduler.placement._preempt",
        "orchestrator.scheduler.placement._policy",
        "orchestrator.scheduler.model",
        "orchestrator.states",
        "orchestrator.validation",
    ],
)
def test_pure_domain_modules_import_no_io_library(module: str) -> None:
    """Placement, the state machine and validation are pure: no gRPC, Redis or Ray."""
    import ast
    import sys

    path = importlib.import_module(module).__file__
    assert path is not None
    tree = ast.parse(Path(path).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(
                node.module if node.module.startswith("orchestrator") else node.module.split(".")[0]
            )
    allowed_orchestrator = {
        "orchestrator._pb.orchestrator.v1",
        "orchestrator.errors",
        "orchestrator.jurisdictions",
        "orchestrator.scheduler.model",
        "orchestrator.security.secrets",
    }
    for name in imported:
        if name.startswith("orchestrator.scheduler.placement"):
            continue  # the placement package's own modules
        if name.startswith("orchestrator"):
            assert name in allowed_orchestrator, (module, name)
        else:
            assert name in sys.stdlib_module_names or name == "__future__", (module, name)
