"""The ``faults`` marker: the fault scenarios (``-m faults`` selects them, ``-m 'not faults'``
leaves them out). They run by default, as part of the whole suite."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "faults: fault-injection scenarios against a whole cluster of processes "
        "(tests/faults/test_faults.py)",
    )
