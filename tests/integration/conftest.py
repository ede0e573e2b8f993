"""Integration fixtures: the shared local Ray instance (one per session, CPUs capped)."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# the harness module sits beside the tests
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """One local Ray for the whole session: 2 CPUs, no dashboard, a short temp dir of its own."""
    import ray

    with tempfile.TemporaryDirectory(prefix="sg-ray-") as tmp:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _temp_dir=tmp,
            namespace="sg-tests",
            log_to_driver=False,
        )
        try:
            yield ray
        finally:
            ray.shutdown()
