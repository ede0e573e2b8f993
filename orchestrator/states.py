"""The job state machine: states, which are terminal, and the legal transitions.

The table here is the specification; the store's Lua scripts enforce it atomically (each checks
the expected state and attempt before writing). tests/unit/test_states.py checks that every
transition a script performs is in this table.
"""

from __future__ import annotations

import enum

from orchestrator._pb.orchestrator.v1 import types_pb2

__all__ = ["TRANSITIONS", "JobState", "is_legal"]


class JobState(enum.Enum):
    """Lifecycle state of a job; values match the wire enum ``orchestrator.v1.JobState``."""

    PENDING = types_pb2.JOB_STATE_PENDING
    SCHEDULED = types_pb2.JOB_STATE_SCHEDULED
    DISPATCHED = types_pb2.JOB_STATE_DISPATCHED
    RUNNING = types_pb2.JOB_STATE_RUNNING
    SUCCEEDED = types_pb2.JOB_STATE_SUCCEEDED
    FAILED = types_pb2.JOB_STATE_FAILED
    CANCELLED = types_pb2.JOB_STATE_CANCELLED
    PREEMPTED = types_pb2.JOB_STATE_PREEMPTED
    LOST = types_pb2.JOB_STATE_LOST

    def is_terminal(self) -> bool:
        """True for states a job never leaves."""
        return self in _TERMINAL

    @classmethod
    def from_name(cls, name: str) -> JobState:
        """Parse a state name case-insensitively ("running", "RUNNING")."""
        try:
            return cls[name.strip().upper()]
        except KeyError:
            names = ", ".join(s.name.lower() for s in cls)
            raise ValueError(f"unknown job state {name!r}; expected one of {names}") from None


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

#: Every legal (from, to) pair. PREEMPTED and LOST are recorded as events on the way back to
#: PENDING with attempt+1; a job whose attempts are used up goes to FAILED instead.
TRANSITIONS: frozenset[tuple[JobState, JobState]] = frozenset(
    {
        (JobState.PENDING, JobState.SCHEDULED),
        (JobState.PENDING, JobState.CANCELLED),
        (JobState.SCHEDULED, JobState.DISPATCHED),
        (JobState.SCHEDULED, JobState.CANCELLED),
        (JobState.SCHEDULED, JobState.PENDING),  # site went away before dispatch
        (JobState.DISPATCHED, JobState.RUNNING),
        (JobState.DISPATCHED, JobState.SUCCEEDED),  # finished before the RUNNING report landed
        (JobState.DISPATCHED, JobState.FAILED),  # refused by the agent, or failed at once
        (JobState.DISPATCHED, JobState.CANCELLED),
        (JobState.DISPATCHED, JobState.PENDING),  # retry, lost or preempted: new attempt
        (JobState.RUNNING, JobState.SUCCEEDED),
        (JobState.RUNNING, JobState.FAILED),
        (JobState.RUNNING, JobState.CANCELLED),
        (JobState.RUNNING, JobState.PENDING),  # retry, lost or preempted: new attempt
        (JobState.RUNNING, JobState.PREEMPTED),
        (JobState.DISPATCHED, JobState.PREEMPTED),
        (JobState.RUNNING, JobState.LOST),  # site lost, or the agent's lease ran out
        (JobState.DISPATCHED, JobState.LOST),
        (JobState.PREEMPTED, JobState.LOST),
        (JobState.PREEMPTED, JobState.PENDING),  # the agent stopped it (or refused it)
        (JobState.PREEMPTED, JobState.CANCELLED),  # cancelled while being preempted
        (JobState.LOST, JobState.PENDING),
    }
)


def is_legal(src: JobState, dst: JobState) -> bool:
    """Whether the state machine allows going from ``src`` to ``dst``."""
    return (src, dst) in TRANSITIONS
