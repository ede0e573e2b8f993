"""The collector tuning every job-path process applies at start (``orchestrator.gc_tuning``)."""

from __future__ import annotations

import json
import subprocess
import sys

from orchestrator.gc_tuning import GEN0_THRESHOLD

_PROBE = """
import gc, json
before = gc.get_threshold()
from orchestrator.gc_tuning import tune_garbage_collector
tune_garbage_collector()
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def test_tuning_freezes_what_exists_and_raises_only_the_youngest_threshold() -> None:
    # in a process of its own: the test process's collector is left as it is
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    got = json.loads(out.stdout)
    assert got["before"][0] < GEN0_THRESHOLD
    assert got["after"] == [GEN0_THRESHOLD, *got["before"][1:]]
    assert got["frozen"] > 1000  # modules, functions and classes imported so far
