"""Task state machine: one table, pure functions, no I/O.

State names follow Balsam so its users feel at home; unlike Balsam, every
transition is checked against :data:`TRANSITIONS` and an illegal one raises
:class:`~tidewater.errors.IllegalTransition`.

::

    CREATED -> AWAITING_PARENTS -> READY -> STAGED_IN -> (PREPROCESSED) -> RUNNING
    RUNNING -> RUN_DONE -> (POSTPROCESSED) -> STAGED_OUT -> JOB_FINISHED
    RUNNING -> RUN_ERROR | RUN_TIMEOUT -> RESTART_READY -> RUNNING
                                       -> FAILED
    any non-final state -> KILLED (cancel); most -> FAILED
    FAILED -> READY | RESTART_READY | AWAITING_PARENTS      (a user's retry only)

A final state is never left by the system. The one way back is a user's
retry (:data:`RETRY`, checked by :func:`check_path` with ``retry=True``):
a FAILED task runs again under the same id, as a new attempt.

``CREATED`` is the pseudo-state a task comes from in its first event row; no
task is ever stored in it.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from .errors import IllegalTransition


class TaskState(StrEnum):
    CREATED = "CREATED"
    AWAITING_PARENTS = "AWAITING_PARENTS"
    READY = "READY"
    STAGED_IN = "STAGED_IN"
    PREPROCESSED = "PREPROCESSED"
    RUNNING = "RUNNING"
    RUN_DONE = "RUN_DONE"
    POSTPROCESSED = "POSTPROCESSED"
    STAGED_OUT = "STAGED_OUT"
    JOB_FINISHED = "JOB_FINISHED"
    RUN_ERROR = "RUN_ERROR"
    RUN_TIMEOUT = "RUN_TIMEOUT"
    RESTART_READY = "RESTART_READY"
    FAILED = "FAILED"
    KILLED = "KILLED"


S = TaskState

TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    S.CREATED: frozenset({S.AWAITING_PARENTS, S.READY}),
    S.AWAITING_PARENTS: frozenset({S.READY, S.FAILED, S.KILLED}),
    S.READY: frozenset({S.STAGED_IN, S.FAILED, S.KILLED}),
    S.STAGED_IN: frozenset({S.PREPROCESSED, S.RUNNING, S.FAILED, S.KILLED}),
    S.PREPROCESSED: frozenset({S.RUNNING, S.FAILED, S.KILLED}),
    S.RUNNING: frozenset({S.RUN_DONE, S.RUN_ERROR, S.RUN_TIMEOUT, S.KILLED}),
    S.RUN_DONE: frozenset({S.POSTPROCESSED, S.STAGED_OUT, S.FAILED, S.KILLED}),
    S.POSTPROCESSED: frozenset({S.STAGED_OUT, S.FAILED, S.KILLED}),
    S.STAGED_OUT: frozenset({S.JOB_FINISHED, S.FAILED, S.KILLED}),
    S.RUN_ERROR: frozenset({S.RESTART_READY, S.FAILED, S.KILLED}),
    S.RUN_TIMEOUT: frozenset({S.RESTART_READY, S.FAILED, S.KILLED}),
    S.RESTART_READY: frozenset({S.RUNNING, S.FAILED, S.KILLED}),
    S.JOB_FINISHED: frozenset(),
    S.FAILED: frozenset(),
    S.KILLED: frozenset(),
}

FINAL: frozenset[TaskState] = frozenset({S.JOB_FINISHED, S.FAILED, S.KILLED})
"""States a task never leaves."""

RUNNABLE: frozenset[TaskState] = frozenset({S.STAGED_IN, S.PREPROCESSED, S.RESTART_READY})
"""States from which a task may be pushed to a pilot."""

STORED: frozenset[TaskState] = frozenset(TaskState) - {S.CREATED}

RETRY: dict[TaskState, frozenset[TaskState]] = {
    S.FAILED: frozenset({S.READY, S.RESTART_READY, S.AWAITING_PARENTS}),
}
"""The steps out of a final state a user's retry may take, and only it: to READY
(inputs to stage again), RESTART_READY (run again) or AWAITING_PARENTS (a child
that failed because its parent failed, now waiting for the parent's retry).
KILLED is left alone: a cancel is the user's decision (resubmit to run it again)."""


def can_retry(src: TaskState, dst: TaskState) -> bool:
    """Whether a user's retry may move a task from ``src`` to ``dst``."""
    return dst in RETRY.get(src, frozenset())


def can_transition(src: TaskState, dst: TaskState) -> bool:
    return dst in TRANSITIONS[src]


def check(src: TaskState, dst: TaskState) -> None:
    """Raise :class:`IllegalTransition` unless ``src -> dst`` is in the table."""
    if dst not in TRANSITIONS[src]:
        raise IllegalTransition(src.value, dst.value)


def check_path(src: TaskState, path: Iterable[TaskState], *, retry: bool = False
               ) -> list[tuple[TaskState, TaskState]]:
    """Check a chain of transitions starting at ``src``; return its steps.

    ``retry``: the first step is a user's retry out of a final state (:data:`RETRY`).
    Raises :class:`IllegalTransition` naming the first step not allowed.
    """
    steps: list[tuple[TaskState, TaskState]] = []
    cur = src
    for nxt in path:
        if retry and not steps:
            if not can_retry(cur, nxt):
                raise IllegalTransition(cur.value, nxt.value)
        else:
            check(cur, nxt)
        steps.append((cur, nxt))
        cur = nxt
    return steps


def is_final(state: TaskState) -> bool:
    return state in FINAL


def submit_path(*, has_parents: bool = False) -> list[TaskState]:
    """States a new task passes through in its creating commit.

    With no parents and no inputs to stage, a task is runnable at once.
    """
    if has_parents:
        return [S.AWAITING_PARENTS]
    return [S.READY, S.STAGED_IN]


def finish_path() -> list[TaskState]:
    """States after a successful run when there is nothing to stage out."""
    return [S.RUN_DONE, S.STAGED_OUT, S.JOB_FINISHED]


def failure_path(kind: TaskState, *, retries: int, max_retries: int) -> list[TaskState]:
    """After ``RUN_ERROR`` or ``RUN_TIMEOUT``: retry while retries remain, else fail."""
    if kind not in (S.RUN_ERROR, S.RUN_TIMEOUT):
        raise ValueError(f"not a failure state: {kind}")
    if retries < max_retries:
        return [kind, S.RESTART_READY]
    return [kind, S.FAILED]


# --------------------------------------------------------------------------
# Batch jobs (DESIGN.md): pending_submission -> queued -> running -> finished,
# plus submit_failed and pending_deletion. The scheduler's listing may skip
# states (a short job goes from queued straight to finished between two looks),
# so every forward step is allowed; nothing goes backwards.

class JobState(StrEnum):
    """A batch job's state. Each member is its own lower-case string value, so it
    compares equal to (and is stored and sent as) the plain name."""

    PENDING_SUBMISSION = "pending_submission"
    QUEUED = "queued"
    RUNNING = "running"
    PENDING_DELETION = "pending_deletion"
    FINISHED = "finished"
    SUBMIT_FAILED = "submit_failed"


J = JobState

JOB_STATES: tuple[JobState, ...] = tuple(JobState)
JOB_FINAL: frozenset[JobState] = frozenset({J.FINISHED, J.SUBMIT_FAILED})
"""States a batch job never leaves."""

_JOB_NEXT: dict[JobState, frozenset[JobState]] = {
    J.PENDING_SUBMISSION: frozenset(
        {J.QUEUED, J.RUNNING, J.FINISHED, J.SUBMIT_FAILED, J.PENDING_DELETION}
    ),
    J.QUEUED: frozenset({J.RUNNING, J.FINISHED, J.PENDING_DELETION}),
    J.RUNNING: frozenset({J.FINISHED, J.PENDING_DELETION}),
    J.PENDING_DELETION: frozenset({J.FINISHED}),
    J.FINISHED: frozenset(),
    J.SUBMIT_FAILED: frozenset(),
}


def job_step(src: str, dst: str) -> JobState | None:
    """The batch-job state after the agent reports ``dst`` for a job in ``src``.

    ``src`` and ``dst`` are state names (plain strings or :class:`JobState`).
    Returns None when the report changes nothing (same state, or a stale
    report that would go backwards: a job being deleted stays so until it is
    gone). Raises ValueError for an unknown state name.
    """
    if dst not in _JOB_NEXT or src not in _JOB_NEXT:
        raise ValueError(f"unknown batch-job state {dst if dst not in _JOB_NEXT else src!r}")
    if dst == src or dst not in _JOB_NEXT[JobState(src)]:
        return None
    return JobState(dst)
