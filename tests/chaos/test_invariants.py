"""The chaos checker itself, on hand-made rows: it passes a clean history and catches each
kind of violation it exists for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .invariants import assert_holds, check, read_ledger

pytestmark = pytest.mark.chaos

Row = tuple[Any, ...]


def ok_events(tid: int, *, attempts: int = 1) -> list[Row]:
    """A clean history: READY, STAGED_IN, then ``attempts - 1`` lost attempts and a success."""
    ev: list[Row] = [(tid, "CREATED", "READY", None), (tid, "READY", "STAGED_IN", None)]
    prev = "STAGED_IN"
    for a in range(1, attempts):
        ev += [(tid, prev, "RUNNING", f'{{"attempt": {a}, "pilot": "p"}}'),
               (tid, "RUNNING", "RUN_TIMEOUT", f'{{"attempt": {a}, "reason": "lost"}}'),
               (tid, "RUN_TIMEOUT", "RESTART_READY", f'{{"attempt": {a}, "reason": "lost"}}')]
        prev = "RESTART_READY"
    ev += [(tid, prev, "RUNNING", {"attempt": attempts, "pilot": "q"}),
           (tid, "RUNNING", "RUN_DONE", '{"exit_code": 0}'),
           (tid, "RUN_DONE", "STAGED_OUT", '{"exit_code": 0}'),
           (tid, "STAGED_OUT", "JOB_FINISHED", '{"exit_code": 0}')]
    return ev


def clean() -> tuple[list[int], list[Row], list[Row], list[tuple[int, int]]]:
    tasks: list[Row] = [(1, "JOB_FINISHED", 1, 0, "q"), (2, "JOB_FINISHED", 2, 1, "q")]
    events = ok_events(1) + ok_events(2, attempts=2)
    ledger = [(1, 1), (2, 1), (2, 2)]
    return [1, 2], tasks, events, ledger


def test_a_clean_history_passes_with_a_retry_counted() -> None:
    v = check(*clean())
    assert v.ok, v.summary()
    assert (v.tasks, v.retried, v.lost, v.unrecorded, v.duplicates) == (2, 1, 0, 0, 0)


def test_an_acknowledged_task_missing_from_the_store_is_lost() -> None:
    acked, tasks, events, ledger = clean()
    v = check([*acked, 3], tasks, events, ledger)
    assert v.lost == 1 and "task 3 was acknowledged but is not in the store" in v.violations


def test_a_task_left_running_is_lost() -> None:
    acked, tasks, events, ledger = clean()
    tasks[0] = (1, "RUNNING", 1, 0, "q")
    events = [e for e in events if not (e[0] == 1 and e[2] in ("RUN_DONE", "STAGED_OUT",
                                                               "JOB_FINISHED"))]
    v = check(acked, tasks, events, ledger)
    assert v.lost == 1 and any("left in RUNNING" in x for x in v.violations)


def test_an_illegal_or_broken_path_is_caught() -> None:
    acked, tasks, events, ledger = clean()
    # READY straight to RUNNING is not in the table
    bad = [e for e in events if not (e[0] == 1 and e[2] == "STAGED_IN")]
    bad = [(1, "READY", "RUNNING", e[3]) if e[0] == 1 and e[2] == "RUNNING" else e for e in bad]
    v = check(acked, tasks, bad, ledger)
    assert any("illegal transition READY->RUNNING" in x for x in v.violations)
    # an event that does not start where the last one ended
    gap = [e for e in events if not (e[0] == 1 and e[2] == "RUN_DONE")]
    v = check(acked, tasks, gap, ledger)
    assert any("does not start where the last ended" in x for x in v.violations)


def test_two_final_states_are_caught() -> None:
    acked, tasks, events, ledger = clean()
    events.append((1, "JOB_FINISHED", "FAILED", None))
    tasks[0] = (1, "FAILED", 1, 0, "q")
    v = check(acked, tasks, events, ledger)
    assert any("reached a final state 2 times" in x for x in v.violations)
    assert any("illegal transition JOB_FINISHED->FAILED" in x for x in v.violations)


def failed_then_retried(tid: int, *, marked: bool = True) -> list[Row]:
    """Attempt 1 fails for good; the user retries it; attempt 2 finishes."""
    retry = '{"reason": "retried by alice", "retry": "user"}' if marked else None
    return [(tid, "CREATED", "READY", None), (tid, "READY", "STAGED_IN", None),
            (tid, "STAGED_IN", "RUNNING", '{"attempt": 1, "pilot": "p"}'),
            (tid, "RUNNING", "RUN_ERROR", '{"attempt": 1, "reason": "exit code 1"}'),
            (tid, "RUN_ERROR", "FAILED", '{"attempt": 1, "reason": "exit code 1"}'),
            (tid, "FAILED", "RESTART_READY", retry),
            (tid, "RESTART_READY", "RUNNING", '{"attempt": 2, "pilot": "p"}'),
            (tid, "RUNNING", "RUN_DONE", '{"exit_code": 0}'),
            (tid, "RUN_DONE", "STAGED_OUT", '{"exit_code": 0}'),
            (tid, "STAGED_OUT", "JOB_FINISHED", '{"exit_code": 0}')]


def test_a_users_retry_may_leave_failed_and_run_again() -> None:
    v = check([1], [(1, "JOB_FINISHED", 2, 0, "p")], failed_then_retried(1), [(1, 1), (1, 2)])
    assert v.ok, v.summary()


def test_leaving_failed_without_a_users_retry_is_caught() -> None:
    v = check([1], [(1, "JOB_FINISHED", 2, 0, "p")], failed_then_retried(1, marked=False),
              [(1, 1), (1, 2)])
    assert any("illegal transition FAILED->RESTART_READY" in x for x in v.violations)
    assert any("reached a final state 2 times" in x for x in v.violations)


def test_a_retry_never_leaves_killed_or_finished() -> None:
    acked, tasks, events, ledger = clean()
    events.append((1, "JOB_FINISHED", "RESTART_READY", '{"retry": "user"}'))
    tasks[0] = (1, "RESTART_READY", 1, 0, "q")
    v = check(acked, tasks, events, ledger)
    assert any("illegal transition JOB_FINISHED->RESTART_READY" in x for x in v.violations)


def test_a_second_run_of_one_attempt_is_a_duplicate() -> None:
    acked, tasks, events, ledger = clean()
    v = check(acked, tasks, events, [*ledger, (1, 1)])
    assert v.duplicates == 1 and "task 1 attempt 1 ran 2 times" in v.violations


def test_a_run_no_event_records_is_unrecorded() -> None:
    acked, tasks, events, ledger = clean()
    v = check(acked, tasks, events, [*ledger, (1, 2)])
    assert v.unrecorded == 1
    assert any("task 1 ran as attempt 2, which no event records" in x for x in v.violations)
    with pytest.raises(AssertionError, match="which no event records"):
        assert_holds(v)
    assert_holds(check(*clean()))


def test_a_finished_task_that_never_ran_is_caught() -> None:
    acked, tasks, events, ledger = clean()
    v = check(acked, tasks, events, [x for x in ledger if x[0] != 1])
    assert any("task 1 finished as attempt 1 but the ledger has no run" in x
               for x in v.violations)
    # unless it does not write to the ledger
    assert check(acked, tasks, events, [x for x in ledger if x[0] != 1], ledgered=[2]).ok


def test_kept_work_must_be_attempt_one_run_once() -> None:
    v = check(*clean(), kept=[1])
    assert v.ok, v.summary()
    v = check(*clean(), kept=[2])
    assert any("task 2 should have kept its first attempt" in x for x in v.violations)
    assert any("task 2 should have run once as attempt 1" in x for x in v.violations)


def test_the_ledger_is_read_line_by_line(tmp_path: Path) -> None:
    p = tmp_path / "ledger"
    assert read_ledger(p) == []
    p.write_text("7 1\n8 2\n\n7 2\n")
    assert read_ledger(p) == [(7, 1), (8, 2), (7, 2)]
