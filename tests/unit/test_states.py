"""The task state table: every transition is either allowed or refused, exhaustively."""

from __future__ import annotations

import itertools
from collections import deque

import pytest

from tidewater.errors import IllegalTransition
from tidewater.states import (
    FINAL,
    JOB_FINAL,
    JOB_STATES,
    RUNNABLE,
    STORED,
    TRANSITIONS,
    JobState,
    TaskState,
    can_transition,
    check,
    check_path,
    failure_path,
    finish_path,
    is_final,
    job_step,
    submit_path,
)

S = TaskState
ALL_PAIRS = list(itertools.product(TaskState, TaskState))
NON_FINAL = [s for s in TaskState if s not in FINAL]


def test_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(TaskState)
    assert len(ALL_PAIRS) == 225
    for dsts in TRANSITIONS.values():
        assert dsts <= set(TaskState)


@pytest.mark.parametrize(("src", "dst"), ALL_PAIRS, ids=[f"{a}->{b}" for a, b in ALL_PAIRS])
def test_check_raises_iff_not_in_table(src: TaskState, dst: TaskState) -> None:
    allowed = dst in TRANSITIONS[src]
    assert can_transition(src, dst) is allowed
    if allowed:
        check(src, dst)  # must not raise
    else:
        with pytest.raises(IllegalTransition) as info:
            check(src, dst)
        assert info.value.src == src.value
        assert info.value.dst == dst.value
        assert f"{src.value} -> {dst.value}" in str(info.value)


def test_final_states() -> None:
    assert {S.JOB_FINISHED, S.FAILED, S.KILLED} == FINAL
    for s in TaskState:
        assert is_final(s) is (s in FINAL)
    for s in FINAL:
        assert TRANSITIONS[s] == frozenset(), f"{s} must have no exits"


def _reachable(src: TaskState) -> set[TaskState]:
    seen = {src}
    todo = deque([src])
    while todo:
        cur = todo.popleft()
        for nxt in TRANSITIONS[cur]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.parametrize("state", NON_FINAL)
def test_every_non_final_state_can_reach_a_final_state(state: TaskState) -> None:
    assert _reachable(state) & FINAL


@pytest.mark.parametrize("state", NON_FINAL)
def test_every_non_final_state_can_finish_or_fail(state: TaskState) -> None:
    # Not only some final state: a live task can always still be failed.
    assert S.FAILED in _reachable(state)


def test_job_finished_reachable_from_created() -> None:
    assert S.JOB_FINISHED in _reachable(S.CREATED)


@pytest.mark.parametrize("state", [s for s in TaskState if s in STORED - FINAL])
def test_killed_one_step_from_every_non_final_stored_state(state: TaskState) -> None:
    check(state, S.KILLED)


def test_created_cannot_be_killed_directly() -> None:
    with pytest.raises(IllegalTransition):
        check(S.CREATED, S.KILLED)


def test_created_is_only_a_pseudo_state() -> None:
    assert S.CREATED not in STORED
    assert STORED == set(TaskState) - {S.CREATED}


@pytest.mark.parametrize("src", list(TaskState))
def test_nothing_goes_back_to_created(src: TaskState) -> None:
    assert S.CREATED not in TRANSITIONS[src]
    with pytest.raises(IllegalTransition):
        check(src, S.CREATED)


def test_runnable_states_lead_to_running() -> None:
    for s in RUNNABLE:
        check(s, S.RUNNING)


@pytest.mark.parametrize(
    ("has_parents", "expected"),
    [(False, [S.READY, S.STAGED_IN]), (True, [S.AWAITING_PARENTS])],
)
def test_submit_path(has_parents: bool, expected: list[TaskState]) -> None:
    path = submit_path(has_parents=has_parents)
    assert path == expected
    steps = check_path(S.CREATED, path)
    assert steps[0][0] == S.CREATED
    assert len(steps) == len(path)


def test_submit_path_without_parents_ends_runnable() -> None:
    assert submit_path()[-1] in RUNNABLE


def test_finish_path_from_running() -> None:
    path = finish_path()
    steps = check_path(S.RUNNING, path)
    assert steps == [
        (S.RUNNING, S.RUN_DONE),
        (S.RUN_DONE, S.STAGED_OUT),
        (S.STAGED_OUT, S.JOB_FINISHED),
    ]
    assert is_final(path[-1])


@pytest.mark.parametrize("kind", [S.RUN_ERROR, S.RUN_TIMEOUT])
@pytest.mark.parametrize(("retries", "max_retries"), [(0, 1), (0, 3), (2, 3)])
def test_failure_path_retries_while_retries_remain(
    kind: TaskState, retries: int, max_retries: int
) -> None:
    path = failure_path(kind, retries=retries, max_retries=max_retries)
    assert path == [kind, S.RESTART_READY]
    check_path(S.RUNNING, path)
    # and the retry really leads back to running
    check_path(S.RUNNING, [*path, S.RUNNING])


@pytest.mark.parametrize("kind", [S.RUN_ERROR, S.RUN_TIMEOUT])
@pytest.mark.parametrize(("retries", "max_retries"), [(0, 0), (3, 3), (5, 3)])
def test_failure_path_fails_when_retries_exhausted(
    kind: TaskState, retries: int, max_retries: int
) -> None:
    path = failure_path(kind, retries=retries, max_retries=max_retries)
    assert path == [kind, S.FAILED]
    check_path(S.RUNNING, path)
    assert is_final(path[-1])


@pytest.mark.parametrize("kind", [s for s in TaskState if s not in (S.RUN_ERROR, S.RUN_TIMEOUT)])
def test_failure_path_rejects_non_failure_states(kind: TaskState) -> None:
    with pytest.raises(ValueError, match="not a failure state"):
        failure_path(kind, retries=0, max_retries=3)


def test_check_path_returns_steps_and_rejects_illegal_hop() -> None:
    assert check_path(S.READY, []) == []
    with pytest.raises(IllegalTransition) as info:
        check_path(S.READY, [S.STAGED_IN, S.RUN_DONE])
    assert (info.value.src, info.value.dst) == ("STAGED_IN", "RUN_DONE")


def test_full_lifecycle_with_retry_is_legal() -> None:
    path = [
        *submit_path(),
        S.RUNNING,
        *failure_path(S.RUN_TIMEOUT, retries=0, max_retries=1),
        S.RUNNING,
        *finish_path(),
    ]
    steps = check_path(S.CREATED, path)
    assert steps[-1] == (S.STAGED_OUT, S.JOB_FINISHED)


# ------------------------------------------------------------------ batch jobs

J = JobState
# What a report of each state does to a job in each state (None: nothing).
JOB_FORWARD = {
    J.PENDING_SUBMISSION: {J.QUEUED, J.RUNNING, J.FINISHED, J.SUBMIT_FAILED, J.PENDING_DELETION},
    J.QUEUED: {J.RUNNING, J.FINISHED, J.PENDING_DELETION},
    J.RUNNING: {J.FINISHED, J.PENDING_DELETION},
    J.PENDING_DELETION: {J.FINISHED},
    J.FINISHED: set(),
    J.SUBMIT_FAILED: set(),
}


def test_batch_job_states_are_the_stored_and_sent_names() -> None:
    assert [str(s) for s in JOB_STATES] == [
        "pending_submission", "queued", "running", "pending_deletion", "finished",
        "submit_failed",
    ]
    assert set(JOB_STATES) == set(JobState)
    assert JOB_FINAL == {"finished", "submit_failed"}
    assert J.QUEUED == "queued" and f"{J.QUEUED}" == "queued"


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(JobState, JobState)))
def test_job_step_moves_only_forward(src: JobState, dst: JobState) -> None:
    expected = dst if dst in JOB_FORWARD[src] else None
    assert job_step(src, dst) == expected
    assert job_step(src.value, dst.value) == expected  # plain strings, as rows and messages hold


def test_job_step_gives_the_state_itself() -> None:
    nxt = job_step("queued", "running")
    assert nxt is J.RUNNING


def test_a_final_batch_job_never_leaves() -> None:
    for final in JOB_FINAL:
        assert all(job_step(final, s) is None for s in JobState)


@pytest.mark.parametrize(("src", "dst"), [("queued", "lost"), ("lost", "queued"),
                                          ("QUEUED", "running")])
def test_job_step_refuses_unknown_state_names(src: str, dst: str) -> None:
    bad = dst if dst == "lost" else src
    with pytest.raises(ValueError, match=f"unknown batch-job state '{bad}'"):
        job_step(src, dst)
