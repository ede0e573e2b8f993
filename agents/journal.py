"""The agent's journal: a small SQLite file of the attempts it has seen and its unacked updates.

It lets a restarted agent keep refusing duplicate and stale attempts, resend the status updates
the control plane has not acknowledged, and find the attempts that were running when it went
down. Every change is one short transaction; a state change of an attempt and the status update
reporting it are written in the same transaction, so neither can exist without the other.

Tables::

    attempts(job_id, attempt, state, dispatched, identity, pid, gpu_type, gpu_slots,
             accepted_at, started_at, finished_at, exit_code, message, command, max_runtime)
    outbox(seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id, attempt, state, exit_code, message,
           time)

``seq`` comes from AUTOINCREMENT, so a number is never handed out twice, even after the updates
holding the highest numbers were acknowledged and deleted. An unfinished attempt's row holds
what a restarted agent needs to re-adopt its process: identity, start time, GPU slots, command
and max runtime. Columns added since the first version are added to older files on opening.

``MemoryJournal`` gives the same answers from this process's memory only, without SQL or a
transaction per change: for simulated sites (``agents.fleet``), whose attempts end with the
process anyway, so that there is nothing for a restart to read. Both are ``AttemptJournal``s,
the interface the agent's runtime uses.
"""

from __future__ import annotations

import enum
import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from orchestrator.states import JobState

__all__ = [
    "AttemptJournal",
    "AttemptRecord",
    "AttemptState",
    "Journal",
    "MemoryJournal",
    "StatusRecord",
]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
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
    command     TEXT    NOT NULL DEFAULT '[]',
    max_runtime REAL,
    PRIMARY KEY (job_id, attempt)
);
CREATE TABLE IF NOT EXISTS outbox (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id    TEXT    NOT NULL,
    attempt   INTEGER NOT NULL,
    state     INTEGER NOT NULL,
    exit_code INTEGER,
    message   TEXT    NOT NULL,
    time      REAL    NOT NULL
);
"""
# Columns added to ``attempts`` after the first version: ALTER TABLE'd into older files.
_ADDED_COLUMNS = {
    "command": "TEXT NOT NULL DEFAULT '[]'",
    "max_runtime": "REAL",
}


class AttemptState(enum.StrEnum):
    """State of an attempt at this agent."""

    ACCEPTED = "accepted"
    """Taken (GPU slots reserved), process not started yet."""
    RUNNING = "running"
    """Started."""
    SUCCEEDED = "succeeded"
    """Exited 0."""
    FAILED = "failed"
    """Exited non-zero, was killed, timed out, or could not be started."""
    CANCELLED = "cancelled"
    """Stopped on request, or cancelled before it was ever dispatched here."""
    LOST = "lost"
    """Stopped by the agent itself because its lease ran out (not the job's failure)."""

    def is_finished(self) -> bool:
        """True once the attempt has ended."""
        return self in _FINISHED


_FINISHED = frozenset(
    {AttemptState.SUCCEEDED, AttemptState.FAILED, AttemptState.CANCELLED, AttemptState.LOST}
)

_JOB_STATE = {
    AttemptState.LOST: JobState.LOST,
    AttemptState.RUNNING: JobState.RUNNING,
    AttemptState.SUCCEEDED: JobState.SUCCEEDED,
    AttemptState.FAILED: JobState.FAILED,
    AttemptState.CANCELLED: JobState.CANCELLED,
}


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt as journaled."""

    job_id: str
    """Job id."""
    attempt: int
    """Attempt number."""
    state: AttemptState
    """Current state."""
    dispatched: bool
    """False for an attempt that was only cancelled here, never dispatched."""
    identity: str
    """Executor identity of the running attempt ("" before start)."""
    pid: int | None
    """Leader pid, for local attempts."""
    gpu_type: str
    """GPU type held ("" for none)."""
    gpu_slots: tuple[int, ...]
    """GPU slots held."""
    accepted_at: float
    """When it was accepted (or cancelled unseen), epoch seconds."""
    started_at: float | None
    """When its process started."""
    finished_at: float | None
    """When it ended."""
    exit_code: int | None
    """Exit code, when it exited by itself."""
    message: str
    """Last status message."""
    command: tuple[str, ...]
    """Program and arguments (empty for attempts journaled before this was recorded)."""
    max_runtime_seconds: float | None
    """Longest the attempt may run, counted from ``started_at``; None for no limit."""


@dataclass(frozen=True)
class StatusRecord:
    """One status update in the outbox, kept until the control plane acknowledges its ``seq``."""

    seq: int
    """Agent-local sequence number, increasing, never reused."""
    job_id: str
    """Job id."""
    attempt: int
    """Attempt number."""
    state: JobState
    """RUNNING, SUCCEEDED, FAILED or CANCELLED."""
    exit_code: int | None
    """Exit code, when the attempt exited by itself."""
    message: str
    """Human-readable detail."""
    time: float
    """When it happened, epoch seconds."""


class AttemptJournal(Protocol):
    """What the agent's runtime keeps through a journal (``Journal``, ``MemoryJournal``).

    A state change of an attempt and the status update reporting it are recorded together: each
    ``record_*`` returning a ``StatusRecord`` has queued that update, numbered by a ``seq`` that
    is never handed out twice.
    """

    def close(self) -> None:
        """Release the journal; it is unusable afterwards."""
        ...

    def get_attempt(self, job_id: str, attempt: int) -> AttemptRecord | None:
        """The journaled attempt, or None if never seen."""
        ...

    def latest_attempt(self, job_id: str) -> int | None:
        """Highest attempt number seen for ``job_id``, or None."""
        ...

    def unfinished_attempts(self) -> list[AttemptRecord]:
        """Attempts accepted or running, by acceptance time (then job id and attempt)."""
        ...

    def record_accepted(
        self,
        job_id: str,
        attempt: int,
        *,
        gpu_type: str,
        gpu_slots: Iterable[int],
        now: float,
        command: Sequence[str] = (),
        max_runtime_seconds: float | None = None,
    ) -> None:
        """Record a newly accepted attempt (its GPU slots reserved, not started yet)."""
        ...

    def record_started(
        self, job_id: str, attempt: int, *, identity: str, pid: int | None, now: float
    ) -> StatusRecord:
        """Mark an attempt running and queue its RUNNING update."""
        ...

    def record_finished(
        self,
        job_id: str,
        attempt: int,
        *,
        state: AttemptState,
        exit_code: int | None,
        message: str,
        now: float,
    ) -> StatusRecord:
        """Mark an attempt ended and queue its terminal update."""
        ...

    def record_cancelled_unseen(
        self, job_id: str, attempt: int, *, message: str, now: float
    ) -> StatusRecord:
        """Record a cancel for an attempt never dispatched here, and queue its CANCELLED update."""
        ...

    def unacked_status(self) -> list[StatusRecord]:
        """Every status update not yet acknowledged, in ``seq`` order."""
        ...

    def ack_status(self, seqs: Iterable[int]) -> int:
        """Forget acknowledged updates; returns how many were still held."""
        ...


class Journal:
    """The SQLite journal of one agent. Use from one thread (the agent's event loop)."""

    def __init__(self, path: str | Path) -> None:
        """Open (creating if needed) the journal at ``path``."""
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self._path, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a crash of the agent; only an OS crash can lose the last
        # transactions, and then the attempts' processes are gone as well.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._add_missing_columns()

    @property
    def path(self) -> Path:
        """The journal file."""
        return self._path

    def close(self) -> None:
        """Close the file. The journal is unusable afterwards."""
        self._conn.close()

    def _add_missing_columns(self) -> None:
        with _transaction(self._conn):
            present = {row[1] for row in self._conn.execute("PRAGMA table_info(attempts)")}
            for name, definition in _ADDED_COLUMNS.items():
                if name not in present:
                    log.info("journal %s: adding column attempts.%s", self._path, name)
                    self._conn.execute(f"ALTER TABLE attempts ADD COLUMN {name} {definition}")

    # --- attempts --------------------------------------------------------------------------------

    def get_attempt(self, job_id: str, attempt: int) -> AttemptRecord | None:
        """The journaled attempt, or None if never seen."""
        row = self._conn.execute(
            f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE job_id = ? AND attempt = ?",  # noqa: S608
            (job_id, attempt),
        ).fetchone()
        return _attempt(row) if row else None

    def latest_attempt(self, job_id: str) -> int | None:
        """Highest attempt number seen for ``job_id``, or None."""
        row = self._conn.execute(
            "SELECT MAX(attempt) FROM attempts WHERE job_id = ?", (job_id,)
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def unfinished_attempts(self) -> list[AttemptRecord]:
        """Attempts accepted or running (after a restart: the ones the last process left)."""
        rows = self._conn.execute(
            f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE state IN (?, ?) "  # noqa: S608
            "ORDER BY accepted_at, job_id, attempt",
            (AttemptState.ACCEPTED.value, AttemptState.RUNNING.value),
        ).fetchall()
        return [_attempt(row) for row in rows]

    def record_accepted(
        self,
        job_id: str,
        attempt: int,
        *,
        gpu_type: str,
        gpu_slots: Iterable[int],
        now: float,
        command: Sequence[str] = (),
        max_runtime_seconds: float | None = None,
    ) -> None:
        """Record a newly accepted attempt (its GPU slots reserved, not started yet).

        ``command`` and ``max_runtime_seconds`` are kept for re-adopting the attempt's process
        after a restart.
        """
        with _transaction(self._conn):
            self._conn.execute(
                "INSERT INTO attempts (job_id, attempt, state, dispatched, gpu_type, gpu_slots, "
                "accepted_at, command, max_runtime) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    attempt,
                    AttemptState.ACCEPTED.value,
                    gpu_type,
                    ",".join(map(str, gpu_slots)),
                    now,
                    json.dumps(list(command)),
                    max_runtime_seconds,
                ),
            )

    def record_started(
        self, job_id: str, attempt: int, *, identity: str, pid: int | None, now: float
    ) -> StatusRecord:
        """Mark an attempt running and queue its RUNNING update, in one transaction."""
        with _transaction(self._conn):
            self._conn.execute(
                "UPDATE attempts SET state = ?, identity = ?, pid = ?, started_at = ? "
                "WHERE job_id = ? AND attempt = ?",
                (AttemptState.RUNNING.value, identity, pid, now, job_id, attempt),
            )
            return self._append(
                job_id=job_id,
                attempt=attempt,
                state=JobState.RUNNING,
                exit_code=None,
                message="started",
                now=now,
            )

    def record_finished(
        self,
        job_id: str,
        attempt: int,
        *,
        state: AttemptState,
        exit_code: int | None,
        message: str,
        now: float,
    ) -> StatusRecord:
        """Mark an attempt ended and queue its terminal update, in one transaction."""
        if not state.is_finished():
            raise ValueError(f"{state} is not a final state")
        with _transaction(self._conn):
            self._conn.execute(
                "UPDATE attempts SET state = ?, finished_at = ?, exit_code = ?, message = ? "
                "WHERE job_id = ? AND attempt = ?",
                (state.value, now, exit_code, message, job_id, attempt),
            )
            return self._append(
                job_id=job_id,
                attempt=attempt,
                state=_JOB_STATE[state],
                exit_code=exit_code,
                message=message,
                now=now,
            )

    def record_cancelled_unseen(
        self, job_id: str, attempt: int, *, message: str, now: float
    ) -> StatusRecord:
        """Record a cancel for an attempt never dispatched here, and queue its CANCELLED update."""
        with _transaction(self._conn):
            self._conn.execute(
                "INSERT INTO attempts (job_id, attempt, state, dispatched, accepted_at, "
                "finished_at, message) VALUES (?, ?, ?, 0, ?, ?, ?)",
                (job_id, attempt, AttemptState.CANCELLED.value, now, now, message),
            )
            return self._append(
                job_id=job_id,
                attempt=attempt,
                state=JobState.CANCELLED,
                exit_code=None,
                message=message,
                now=now,
            )

    # --- outbox ----------------------------------------------------------------------------------

    def unacked_status(self) -> list[StatusRecord]:
        """Every status update not yet acknowledged, in ``seq`` order."""
        rows = self._conn.execute(
            "SELECT seq, job_id, attempt, state, exit_code, message, time FROM outbox ORDER BY seq"
        ).fetchall()
        return [
            StatusRecord(
                seq=int(seq),
                job_id=job_id,
                attempt=int(attempt),
                state=JobState(state),
                exit_code=exit_code,
                message=message,
                time=float(time),
            )
            for seq, job_id, attempt, state, exit_code, message, time in rows
        ]

    def ack_status(self, seqs: Iterable[int]) -> int:
        """Forget acknowledged updates; returns how many were still held."""
        params = [(int(seq),) for seq in seqs]
        if not params:
            return 0
        with _transaction(self._conn):
            before = self._conn.total_changes
            self._conn.executemany("DELETE FROM outbox WHERE seq = ?", params)
            return self._conn.total_changes - before

    def _append(
        self,
        *,
        job_id: str,
        attempt: int,
        state: JobState,
        exit_code: int | None,
        message: str,
        now: float,
    ) -> StatusRecord:
        cursor = self._conn.execute(
            "INSERT INTO outbox (job_id, attempt, state, exit_code, message, time) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, attempt, state.value, exit_code, message, now),
        )
        seq = cursor.lastrowid
        if seq is None:
            raise RuntimeError("sqlite returned no rowid for an outbox insert")
        return StatusRecord(
            seq=seq,
            job_id=job_id,
            attempt=attempt,
            state=state,
            exit_code=exit_code,
            message=message,
            time=now,
        )


# An attempt in a ``MemoryJournal``: ``AttemptRecord``'s fields in order, the state as its string.
# A tuple of strings, numbers and tuples of them, which the garbage collector stops tracking: a
# fleet keeps one per attempt it ever ran, and the collector would otherwise walk them all.
_Row = tuple[
    str, int, str, bool, str, int | None, str, tuple[int, ...], float, float | None,
    float | None, int | None, str, tuple[str, ...], float | None,
]  # fmt: skip


class MemoryJournal:
    """An ``AttemptJournal`` in this process's memory only: gone with the process.

    For agents whose attempts cannot outlive their process either (simulated sites, see
    ``agents.fleet``): a restart would find nothing to resend or re-adopt, so the records need
    no file, and each change is a few dictionary operations instead of an SQL transaction. It
    answers as ``Journal`` does (``tests/agents/test_agent_journal.py`` runs both); every attempt
    ever journaled is kept, so that duplicates and stale attempts are refused for the process's
    life. Use from one thread (the agent's event loop).
    """

    def __init__(self) -> None:
        self._attempts: dict[tuple[str, int], _Row] = {}
        self._latest: dict[str, int] = {}
        self._outbox: dict[int, StatusRecord] = {}
        self._seq = 0

    def close(self) -> None:
        """Drop every record. The journal is unusable afterwards."""
        self._attempts, self._latest, self._outbox = {}, {}, {}

    # --- attempts --------------------------------------------------------------------------------

    def get_attempt(self, job_id: str, attempt: int) -> AttemptRecord | None:
        """The journaled attempt, or None if never seen."""
        row = self._attempts.get((job_id, attempt))
        return None if row is None else _record(row)

    def latest_attempt(self, job_id: str) -> int | None:
        """Highest attempt number seen for ``job_id``, or None."""
        return self._latest.get(job_id)

    def unfinished_attempts(self) -> list[AttemptRecord]:
        """Attempts accepted or running, by acceptance time (then job id and attempt)."""
        unfinished = (AttemptState.ACCEPTED.value, AttemptState.RUNNING.value)
        rows = [row for row in self._attempts.values() if row[2] in unfinished]
        rows.sort(key=lambda row: (row[8], row[0], row[1]))
        return [_record(row) for row in rows]

    def record_accepted(
        self,
        job_id: str,
        attempt: int,
        *,
        gpu_type: str,
        gpu_slots: Iterable[int],
        now: float,
        command: Sequence[str] = (),
        max_runtime_seconds: float | None = None,
    ) -> None:
        """Record a newly accepted attempt (its GPU slots reserved, not started yet).
        ``ValueError`` if the attempt is journaled already."""
        self._insert(
            (job_id, attempt, _ACCEPTED, True, "", None, gpu_type, tuple(gpu_slots), now,
             None, None, None, "", tuple(command), max_runtime_seconds)
        )  # fmt: skip

    def record_started(
        self, job_id: str, attempt: int, *, identity: str, pid: int | None, now: float
    ) -> StatusRecord:
        """Mark an attempt running and queue its RUNNING update."""
        key = (job_id, attempt)
        row = self._attempts.get(key)
        if row is not None:
            self._attempts[key] = (*row[:2], _RUNNING, row[3], identity, pid, *row[6:9], now,
                                   *row[10:])  # fmt: skip
        return self._append(job_id, attempt, JobState.RUNNING, None, "started", now)

    def record_finished(
        self,
        job_id: str,
        attempt: int,
        *,
        state: AttemptState,
        exit_code: int | None,
        message: str,
        now: float,
    ) -> StatusRecord:
        """Mark an attempt ended and queue its terminal update."""
        if not state.is_finished():
            raise ValueError(f"{state} is not a final state")
        key = (job_id, attempt)
        row = self._attempts.get(key)
        if row is not None:
            self._attempts[key] = (*row[:2], state.value, *row[3:10], now, exit_code, message,
                                   *row[13:])  # fmt: skip
        return self._append(job_id, attempt, _JOB_STATE[state], exit_code, message, now)

    def record_cancelled_unseen(
        self, job_id: str, attempt: int, *, message: str, now: float
    ) -> StatusRecord:
        """Record a cancel for an attempt never dispatched here, and queue its CANCELLED update.
        ``ValueError`` if the attempt is journaled already."""
        self._insert(
            (job_id, attempt, AttemptState.CANCELLED.value, False, "", None, "", (), now, None,
             now, None, message, (), None)
        )  # fmt: skip
        return self._append(job_id, attempt, JobState.CANCELLED, None, message, now)

    def _insert(self, row: _Row) -> None:
        job_id, attempt = row[0], row[1]
        key = (job_id, attempt)
        if key in self._attempts:
            raise ValueError(f"attempt {attempt} of job {job_id!r} is journaled already")
        self._attempts[key] = row
        latest = self._latest.get(job_id)
        if latest is None or attempt > latest:
            self._latest[job_id] = attempt

    # --- outbox ----------------------------------------------------------------------------------

    def unacked_status(self) -> list[StatusRecord]:
        """Every status update not yet acknowledged, in ``seq`` order."""
        return list(self._outbox.values())

    def ack_status(self, seqs: Iterable[int]) -> int:
        """Forget acknowledged updates; returns how many were still held."""
        outbox, held = self._outbox, 0
        for seq in seqs:
            if outbox.pop(int(seq), None) is not None:
                held += 1
        return held

    def _append(
        self,
        job_id: str,
        attempt: int,
        state: JobState,
        exit_code: int | None,
        message: str,
        now: float,
    ) -> StatusRecord:
        self._seq += 1
        record = StatusRecord(self._seq, job_id, attempt, state, exit_code, message, now)
        self._outbox[self._seq] = record
        return record


_ACCEPTED = AttemptState.ACCEPTED.value
_RUNNING = AttemptState.RUNNING.value


def _record(row: _Row) -> AttemptRecord:
    return AttemptRecord(row[0], row[1], AttemptState(row[2]), *row[3:])


_ATTEMPT_COLUMNS = (
    "job_id, attempt, state, dispatched, identity, pid, gpu_type, gpu_slots, accepted_at, "
    "started_at, finished_at, exit_code, message, command, max_runtime"
)


def _attempt(row: tuple[Any, ...]) -> AttemptRecord:
    (job_id, attempt, state, dispatched, identity, pid, gpu_type, gpu_slots) = row[:8]
    (accepted_at, started_at, finished_at, exit_code, message, command, max_runtime) = row[8:]
    return AttemptRecord(
        job_id=job_id,
        attempt=int(attempt),
        state=AttemptState(state),
        dispatched=bool(dispatched),
        identity=identity,
        pid=pid,
        gpu_type=gpu_type,
        gpu_slots=tuple(int(s) for s in gpu_slots.split(",")) if gpu_slots else (),
        accepted_at=float(accepted_at),
        started_at=started_at,
        finished_at=finished_at,
        exit_code=exit_code,
        message=message,
        command=tuple(json.loads(command)),
        max_runtime_seconds=max_runtime,
    )


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
