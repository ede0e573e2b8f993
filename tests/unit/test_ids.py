"""Job ids sort by creation, also within one millisecond."""

from __future__ import annotations

import time

from orchestrator.ids import new_job_id
from orchestrator.validation import validate_job_id


def test_ids_are_strictly_increasing_even_in_the_same_millisecond() -> None:
    now = time.time()
    ids = [new_job_id(now) for _ in range(1000)]  # all in one millisecond
    ids += [new_job_id() for _ in range(1000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for job_id in ids[::100]:
        validate_job_id(job_id)
