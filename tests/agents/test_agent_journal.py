"""The agent's SQLite journal."""

from __future__ import annotations

from pathlib import Path

from agents.journal import AttemptState, Journal
from orchestrator.states import JobState


def test_attempt_lifecycle_and_outbox_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    journal = Journal(path)
    journal.record_accepted("j1", 2, gpu_type="H100", gpu_slots=(0, 1), now=10.0)
    running = journal.record_started("j1", 2, identity="local:42:7", pid=42, now=11.0)
    done = journal.record_finished(
        "j1", 2, state=AttemptState.FAILED, exit_code=3, message="exit code 3", now=12.0
    )
    cancelled = journal.record_cancelled_unseen("j2", 1, message="not running", now=13.0)
    assert running.seq < done.seq < cancelled.seq
    assert (done.state, done.exit_code) == (JobState.FAILED, 3)
    journal.close()

    journal = Journal(path)
    record = journal.get_attempt("j1", 2)
    assert record is not None
    assert (record.state, record.pid, record.gpu_slots, record.exit_code) == (
        AttemptState.FAILED,
        42,
        (0, 1),
        3,
    )
    assert record.dispatched
    unseen = journal.get_attempt("j2", 1)
    assert unseen is not None and not unseen.dispatched
    assert journal.latest_attempt("j1") == 2
    assert journal.latest_attempt("nope") is None
    assert [u.seq for u in journal.unacked_status()] == [running.seq, done.seq, cancelled.seq]

    assert journal.ack_status([running.seq, done.seq, cancelled.seq, 999]) == 3
    assert journal.unacked_status() == []
    journal.close()

    # Sequence numbers are never handed out twice, even after every update was acknowledged.
    journal = Journal(path)
    journal.record_accepted("j3", 1, gpu_type="", gpu_slots=(), now=14.0)
    again = journal.record_started("j3", 1, identity="local:43:8", pid=43, now=15.0)
    assert again.seq > cancelled.seq
    assert [a.job_id for a in journal.unfinished_attempts()] == ["j3"]
    journal.close()
