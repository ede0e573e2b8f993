"""The agent's journals: the SQLite file (``Journal``) and the in-memory one of simulated sites
(``MemoryJournal``). What the runtime relies on runs against both; what only a file can do
(surviving a reopen, migrating an old schema) against the file."""

from __future__ import annotations

import contextlib
import gc
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agents.journal import AttemptJournal, AttemptState, Journal, MemoryJournal
from orchestrator.states import JobState

OpenJournal = Callable[[], AttemptJournal]


@pytest.fixture(params=["sqlite", "memory"])
def open_journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenJournal]:
    """Opens the kind of journal under test (the SQLite one always at the same file)."""
    opened: list[AttemptJournal] = []

    def open_() -> AttemptJournal:
        journal: AttemptJournal = (
            Journal(tmp_path / "j.sqlite3") if request.param == "sqlite" else MemoryJournal()
        )
        opened.append(journal)
        return journal

    yield open_
    for journal in opened:
        journal.close()


# -- every journal ------------------------------------------------------------------------------


def test_attempt_lifecycle_and_outbox(open_journal: OpenJournal) -> None:
    journal = open_journal()
    journal.record_accepted("j1", 2, gpu_type="H100", gpu_slots=(0, 1), now=10.0)
    running = journal.record_started("j1", 2, identity="local:42:7", pid=42, now=11.0)
    done = journal.record_finished(
        "j1", 2, state=AttemptState.FAILED, exit_code=3, message="exit code 3", now=12.0
    )
    cancelled = journal.record_cancelled_unseen("j2", 1, message="not running", now=13.0)
    assert running.seq < done.seq < cancelled.seq
    assert (running.state, running.message, running.exit_code) == (
        JobState.RUNNING,
        "started",
        None,
    )
    assert (done.state, done.exit_code, done.message, done.time) == (
        JobState.FAILED, 3, "exit code 3", 12.0,
    )  # fmt: skip
    assert (cancelled.state, cancelled.job_id, cancelled.attempt) == (JobState.CANCELLED, "j2", 1)

    record = journal.get_attempt("j1", 2)
    assert record is not None
    assert (record.state, record.pid, record.identity, record.gpu_slots, record.exit_code) == (
        AttemptState.FAILED, 42, "local:42:7", (0, 1), 3,
    )  # fmt: skip
    assert (record.accepted_at, record.started_at, record.finished_at) == (10.0, 11.0, 12.0)
    assert record.dispatched and record.message == "exit code 3"
    unseen = journal.get_attempt("j2", 1)
    assert unseen is not None and not unseen.dispatched
    assert (unseen.state, unseen.finished_at, unseen.message) == (
        AttemptState.CANCELLED, 13.0, "not running",
    )  # fmt: skip
    assert journal.get_attempt("j1", 1) is None
    assert journal.latest_attempt("j1") == 2
    assert journal.latest_attempt("j2") == 1
    assert journal.latest_attempt("nope") is None
    assert journal.unacked_status() == [running, done, cancelled]
    assert journal.unfinished_attempts() == []

    assert journal.ack_status([running.seq, done.seq, cancelled.seq, 999]) == 3
    assert journal.ack_status([running.seq]) == 0
    assert journal.unacked_status() == []

    # Sequence numbers are never handed out twice, even after every update was acknowledged.
    journal.record_accepted("j3", 1, gpu_type="", gpu_slots=(), now=14.0)
    again = journal.record_started("j3", 1, identity="local:43:8", pid=43, now=15.0)
    assert again.seq > cancelled.seq
    assert [a.job_id for a in journal.unfinished_attempts()] == ["j3"]


def test_an_unfinished_attempt_keeps_what_re_adopting_it_needs(open_journal: OpenJournal) -> None:
    journal = open_journal()
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
    assert (second.state, second.command, second.max_runtime_seconds, second.started_at) == (
        AttemptState.ACCEPTED, (), None, None,
    )  # fmt: skip


def test_unfinished_attempts_come_in_acceptance_order(open_journal: OpenJournal) -> None:
    journal = open_journal()
    for job_id, attempt, now in (("b", 1, 5.0), ("a", 2, 5.0), ("a", 1, 5.0), ("z", 1, 1.0)):
        journal.record_accepted(job_id, attempt, gpu_type="", gpu_slots=(), now=now)
    journal.record_accepted("done", 1, gpu_type="", gpu_slots=(), now=0.5)
    journal.record_finished(
        "done", 1, state=AttemptState.SUCCEEDED, exit_code=0, message="exit code 0", now=2.0
    )
    order = [(a.job_id, a.attempt) for a in journal.unfinished_attempts()]
    assert order == [("z", 1), ("a", 1), ("a", 2), ("b", 1)]


def test_an_update_is_queued_even_for_an_attempt_never_accepted(open_journal: OpenJournal) -> None:
    """As an UPDATE of no row does in SQL: the update is what the control plane waits for."""
    journal = open_journal()
    started = journal.record_started("ghost", 1, identity="x", pid=None, now=1.0)
    lost = journal.record_finished(
        "ghost", 1, state=AttemptState.LOST, exit_code=None, message="gone", now=2.0
    )
    assert [u.state for u in journal.unacked_status()] == [JobState.RUNNING, JobState.LOST]
    assert (started.seq, lost.seq) == (1, 2)
    assert journal.get_attempt("ghost", 1) is None


def test_only_a_final_state_finishes_an_attempt(open_journal: OpenJournal) -> None:
    journal = open_journal()
    journal.record_accepted("j", 1, gpu_type="", gpu_slots=(), now=1.0)
    for state in (AttemptState.ACCEPTED, AttemptState.RUNNING):
        with pytest.raises(ValueError, match="not a final state"):
            journal.record_finished("j", 1, state=state, exit_code=None, message="", now=2.0)
    assert journal.unacked_status() == []


# -- the in-memory journal ----------------------------------------------------------------------


def test_a_memory_journal_keeps_its_records_out_of_the_collectors_way() -> None:
    """A fleet's journals keep every attempt they ever ran: once the collector has seen them,
    their records are plain tuples of strings and numbers, which it stops tracking."""
    journal = MemoryJournal()
    for n in range(100):
        journal.record_accepted(
            f"j{n}", 1, gpu_type="H100", gpu_slots=(n,), now=1.0, command=("sleep", "1")
        )
        journal.record_started(f"j{n}", 1, identity=f"sim:1:{n}", pid=None, now=2.0)
        journal.record_finished(
            f"j{n}", 1, state=AttemptState.SUCCEEDED, exit_code=0, message="exit code 0", now=3.0
        )
    gc.collect()
    gc.collect()  # a tuple is let go once the tuples in it are
    rows = journal._attempts  # what the collector would walk
    assert not any(gc.is_tracked(key) or gc.is_tracked(row) for key, row in rows.items())
    with pytest.raises(ValueError, match="journaled already"):
        journal.record_accepted("j1", 1, gpu_type="", gpu_slots=(), now=4.0)


# -- the SQLite file ----------------------------------------------------------------------------


def test_attempts_and_outbox_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    journal = Journal(path)
    journal.record_accepted("j1", 2, gpu_type="H100", gpu_slots=(0, 1), now=10.0)
    running = journal.record_started("j1", 2, identity="local:42:7", pid=42, now=11.0)
    done = journal.record_finished(
        "j1", 2, state=AttemptState.FAILED, exit_code=3, message="exit code 3", now=12.0
    )
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
    assert [u.seq for u in journal.unacked_status()] == [running.seq, done.seq]
    assert journal.ack_status([running.seq, done.seq]) == 2
    journal.close()

    # Sequence numbers are never handed out twice, even across reopening.
    journal = Journal(path)
    journal.record_accepted("j3", 1, gpu_type="", gpu_slots=(), now=14.0)
    again = journal.record_started("j3", 1, identity="local:43:8", pid=43, now=15.0)
    assert again.seq > done.seq
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
