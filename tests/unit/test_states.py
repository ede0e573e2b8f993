"""The job state machine table, and that the Lua scripts only perform transitions in it."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from orchestrator.states import TRANSITIONS, JobState, is_legal


def test_terminal_states() -> None:
    assert {s for s in JobState if s.is_terminal()} == {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.CANCELLED,
    }


def test_terminal_states_have_no_way_out() -> None:
    for src, _ in TRANSITIONS:
        assert not src.is_terminal()


def test_every_non_terminal_state_can_end() -> None:
    for state in JobState:
        if not state.is_terminal():
            assert any(src == state for src, _ in TRANSITIONS), state


def test_from_name() -> None:
    assert JobState.from_name("running") is JobState.RUNNING
    with pytest.raises(ValueError, match="unknown job state 'runing'"):
        JobState.from_name("runing")


def _lua(name: str) -> str:
    return (resources.files("orchestrator.store") / "lua" / f"{name}.lua").read_text()


@pytest.mark.parametrize(
    ("script", "src", "dst"),
    [
        ("commit", JobState.PENDING, JobState.SCHEDULED),
        ("take_outbox", JobState.SCHEDULED, JobState.DISPATCHED),
        ("status", JobState.DISPATCHED, JobState.RUNNING),
        ("cancel", JobState.PENDING, JobState.CANCELLED),
        ("cancel", JobState.SCHEDULED, JobState.CANCELLED),
        # preempt.lua and withdraw.lua stop attempts with stop_attempt, a shared helper
        ("_lib", JobState.RUNNING, JobState.PREEMPTED),
    ],
)
def test_scripts_check_the_source_state_of_their_transition(
    script: str, src: JobState, dst: JobState
) -> None:
    assert is_legal(src, dst)
    text = _lua(script)
    # the script compares the current state with the source state before writing the new one
    assert re.search(rf"(state|cur) [=~]= '{src.value}'", text), (script, src)
    assert f"'{dst.value}'" in text


@pytest.mark.parametrize("script", ["preempt", "withdraw"])
def test_scripts_that_stop_attempts_go_through_the_checked_helper(script: str) -> None:
    assert "stop_attempt(p, " in _lua(script)
