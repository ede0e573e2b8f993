"""The agent's SQLite journal."""

from __future__ import annotations

import contextlib
import sqlite3
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


def test_an_unfinished_attempt_keeps_what_re_adopting_it_needs(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    journal.record_accepted(
        "j1",
        1,
        gpu_type="H100",
        gpu_slots=(2, 3),
        now=10.0,
        command=("python", "train.py", "--lr", "0.1"),
        max_runtime_seconds=3600.0,
    )
    journal.record_accepted("j2", 1, gpu_type="", gpu_slots=(), now=11.0)
    journal.record_started("j1", 1, identity="local:42:7", pid=42, now=12.0)
    first, second = journal.unfinished_attempts()
    assert (first.state, first.identity, first.pid, first.started_at) == (
        AttemptState.RUNNING,
        "local:42:7",
        42,
        12.0,
    )
    assert (first.gpu_type, first.gpu_slots) == ("H100", (2, 3))
    assert first.command == ("python", "train.py", "--lr", "0.1")
    assert first.max_runtime_seconds == 3600.0
    assert (second.command, second.max_runtime_seconds, second.started_at) == ((), None, None)
    journal.close()


# The schema of the first journal version, as files written by it still have it.
FIRST_SCHEMA = """
CREATE TABLE attempts (
    job_id      TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    state       TEXT    NOT NULL,
    dispatched  INTEGER NOT NULL,
    identity    TEXT    NOT NULL DEFAULT '',
    pid         INTEGER,
    gpu_type    TEXT    NOT NULL DEFAULT '',
    gpu_slots   TEXT    NOT NULL DEFAULT '',
    accepted_at REAL    NOT NULL,
    started_at  REAL,
    finished_at REAL,
    exit_code   INTEGER,
    message     TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, attempt)
);
CREATE TABLE outbox (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id    TEXT    NOT NULL,
    attempt   INTEGER NOT NULL,
    state     INTEGER NOT NULL,
    exit_code INTEGER,
    message   TEXT    NOT NULL,
    time      REAL    NOT NULL
);
INSERT INTO attempts (job_id, attempt, state, dispatched, identity, pid, gpu_type, gpu_slots,
                      accepted_at, started_at)
    VALUES ('old', 1, 'running', 1, 'local:42:7', 42, 'H100', '0,1', 1.0, 2.0);
INSERT INTO outbox (job_id, attempt, state, message, time) VALUES ('old', 1, 4, 'started', 2.0);
"""


def columns(path: Path) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("PRAGMA table_info(attempts)").fetchall()


def test_a_journal_written_by_the_first_version_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(FIRST_SCHEMA)
    journal = Journal(path)
    (old,) = journal.unfinished_attempts()
    assert (old.job_id, old.identity, old.pid, old.started_at, old.gpu_slots) == (
        "old",
        "local:42:7",
        42,
        2.0,
        (0, 1),
    )
    assert (old.command, old.max_runtime_seconds) == ((), None)
    assert [(u.job_id, u.state) for u in journal.unacked_status()] == [("old", JobState.RUNNING)]
    journal.record_accepted(
        "new", 1, gpu_type="", gpu_slots=(), now=3.0, command=("true",), max_runtime_seconds=9.0
    )
    journal.close()

    fresh = tmp_path / "fresh.sqlite3"
    Journal(fresh).close()
    assert columns(path) == columns(fresh)
    journal = Journal(path)  # opening a migrated file again changes nothing
    new = journal.get_attempt("new", 1)
    assert new is not None and (new.command, new.max_runtime_seconds) == (("true",), 9.0)
    journal.close()
    assert columns(path) == columns(fresh)
