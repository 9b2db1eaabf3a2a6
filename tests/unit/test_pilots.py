"""The pilot book, synchronously: every row of the Hello reconciliation table and the restart hold."""

from __future__ import annotations

from typing import Any

import pytest

from tidewater import proto as P
from tidewater.controller.model import LiveTask, PilotRow
from tidewater.controller.pilots import (
    RECONNECT_ALLOWANCE,
    Decision,
    PilotBook,
    check_hello,
    reconcile,
)
from tidewater.errors import InvalidRequest
from tidewater.states import TaskState as S
from tidewater.transport import backoff


def task(tid: int, state: S = S.STAGED_IN, *, pilot: str = "", attempt: int = 0,
         site: int = 1) -> LiveTask:
    return LiveTask(
        id=tid, owner_id=1, site_id=site, app="a", state=state, params_j="{}", tags_j="{}",
        priority=0, cores=1, gpus=0, timeout=None, max_retries=0, retries=0, attempt=attempt,
        pilot=pilot, argv_j="[]", shell="", env_j="{}", workdir="", exit_code=None, error="",
        stdout_tail="", stderr_tail="", created_at=0.0, started_at=None, finished_at=None)


def decide(tasks: list[LiveTask], assigned: set[int], held: dict[int, int],
           pilot: str = "p", site: int = 1) -> list[tuple[Decision, int, int]]:
    by_id = {t.id: t for t in tasks}
    return reconcile(pilot, site, assigned, held, by_id.get)


def hello(**kw: Any) -> P.Hello:
    fields: dict[str, Any] = {"pilot_id": "p", "cores": 2, **kw}
    return P.Hello(role="pilot", proto_version=1, token="", **fields)


# ---------------------------------------------------------------------- the table, row by row

def test_keep_what_both_sides_agree_on() -> None:
    t = task(1, S.RUNNING, pilot="p", attempt=2)
    assert decide([t], {1}, {1: 2}) == [(Decision.KEEP, 1, 2)]


def test_a_running_task_the_pilot_no_longer_has_is_lost() -> None:
    t = task(1, S.RUNNING, pilot="p", attempt=2)
    assert decide([t], {1}, {}) == [(Decision.LOSE, 1, 2)]


def test_a_running_task_held_under_another_attempt_is_lost_and_that_attempt_killed() -> None:
    t = task(1, S.RUNNING, pilot="p", attempt=2)
    assert decide([t], {1}, {1: 1}) == [(Decision.LOSE, 1, 2), (Decision.KILL, 1, 1)]


def test_a_sent_but_unstarted_task_the_pilot_never_got_is_requeued() -> None:
    t = task(1, S.STAGED_IN, pilot="p", attempt=1)
    assert decide([t], {1}, {}) == [(Decision.REQUEUE, 1, 1)]


def test_after_a_controller_crash_a_task_the_pilot_already_ran_is_adopted() -> None:
    """The crash case: dispatched in memory (attempt 3), run and finished on the pilot,
    its reports unacknowledged; the restarted controller has the task runnable at the
    attempt last stored (2). The pilot's Hello names it: it is adopted, never resent."""
    t = task(1, S.STAGED_IN, attempt=2)
    assert decide([t], set(), {1: 3}) == [(Decision.ADOPT, 1, 3)]


def test_a_held_task_of_a_stored_older_attempt_is_killed() -> None:
    t = task(1, S.RESTART_READY, attempt=2)  # attempt 2 failed and was recorded
    assert decide([t], set(), {1: 2}) == [(Decision.KILL, 1, 2)]


@pytest.mark.parametrize(("state", "pilot", "site"), [
    (S.JOB_FINISHED, "", 1),   # final already
    (S.RUNNING, "q", 1),       # running on another pilot
    (S.STAGED_IN, "q", 1),     # sent to another pilot
    (S.STAGED_IN, "", 2),      # another site's task
    (S.AWAITING_PARENTS, "", 1),  # not runnable
    (S.READY, "", 1),          # inputs not staged
])
def test_anything_else_the_pilot_holds_is_killed(state: S, pilot: str, site: int) -> None:
    t = task(1, state, pilot=pilot, attempt=1, site=site)
    assert decide([t], set(), {1: 2}) == [(Decision.KILL, 1, 2)]


def test_a_held_task_the_controller_does_not_know_is_killed() -> None:
    assert decide([], set(), {99: 1}) == [(Decision.KILL, 99, 1)]


def test_assigned_tasks_that_moved_on_are_not_judged() -> None:
    done = task(1, S.JOB_FINISHED, pilot="p", attempt=1)
    elsewhere = task(2, S.RUNNING, pilot="q", attempt=1)
    assert decide([done, elsewhere], {1, 2, 3}, {}) == []


# ---------------------------------------------------------------------- the restart hold

def test_a_site_is_held_until_every_stored_pilot_is_back() -> None:
    book = PilotBook(lease_timeout=30)
    running = task(7, S.RUNNING, pilot="b", attempt=1)
    book.load([PilotRow("a", 1, 1), PilotRow("b", 1, 1), PilotRow("c", 2, 1)], [running], 0.0)
    assert book.held_sites() == {1, 2}
    assert book.pilots["b"].assigned == {7}

    rec, replaced = book.hello(hello(pilot_id="a"), site_id=1, owner_id=1, batch_job=0, peer=10,
                               now=1.0)
    assert replaced is None
    book.make_slot(rec, hello(pilot_id="a"))
    assert book.slot_ready("a", 10) == []  # "b" is still expected: no dispatch on site 1
    assert book.held_sites() == {1, 2}

    rec_b, _ = book.hello(hello(pilot_id="b"), site_id=1, owner_id=1, batch_job=0, peer=11,
                          now=2.0)
    book.make_slot(rec_b, hello(pilot_id="b"))
    freed = book.slot_ready("b", 11)
    assert sorted(s.pilot_id for s in freed) == ["a", "b"]
    assert book.held_sites() == {2}


def test_a_pilot_that_never_comes_back_releases_the_hold_when_its_lease_ends() -> None:
    book = PilotBook(lease_timeout=30)
    book.load([PilotRow("a", 1, 1), PilotRow("gone", 1, 1)], [], 0.0)
    rec, _ = book.hello(hello(pilot_id="a"), site_id=1, owner_id=1, batch_job=0, peer=10,
                        now=1.0)
    book.make_slot(rec, hello(pilot_id="a"))
    assert book.slot_ready("a", 10) == []
    # After a restart a stored pilot has its lease plus the longest reconnect delay.
    assert [r.pilot_id for r in book.expired(30.0)] == []
    book.leases.touch("a", 30.0)
    (lost,) = book.expired(30.0 + RECONNECT_ALLOWANCE)
    assert lost.pilot_id == "gone"
    freed = book.remove(lost)
    assert [s.pilot_id for s in freed] == ["a"]
    assert book.held_sites() == set()


def test_new_pilots_get_credit_at_once_when_nothing_is_expected() -> None:
    book = PilotBook(lease_timeout=30)
    rec, _ = book.hello(hello(credit_cores=3), site_id=1, owner_id=1, batch_job=0, peer=5,
                        now=0.0)
    slot = book.make_slot(rec, hello(credit_cores=3))
    assert book.slot_ready("p", 5) == [slot]
    assert slot.credit_cores == 3
    # A ready signal from a connection that has since been replaced changes nothing.
    assert book.slot_ready("p", 4) == []


def test_a_reconnection_replaces_the_old_connection() -> None:
    book = PilotBook(lease_timeout=30)
    book.hello(hello(), site_id=1, owner_id=1, batch_job=0, peer=5, now=0.0)
    rec, replaced = book.hello(hello(), site_id=1, owner_id=1, batch_job=0, peer=6, now=1.0)
    assert replaced == 5 and rec.peer == 6
    assert book.away(rec, 5) is False  # the old connection's end is not the pilot's
    assert book.away(rec, 6) is True and rec.peer is None


def test_a_pilot_id_of_another_site_is_refused() -> None:
    book = PilotBook(lease_timeout=30)
    book.hello(hello(), site_id=1, owner_id=1, batch_job=0, peer=5, now=0.0)
    with pytest.raises(InvalidRequest, match="in use by another site"):
        book.hello(hello(), site_id=2, owner_id=1, batch_job=0, peer=6, now=0.0)


@pytest.mark.parametrize(("kw", "message"), [
    ({"pilot_id": ""}, "pilot_id of 1-128"),
    ({"pilot_id": "x" * 129}, "pilot_id of 1-128"),
    ({"cores": -1}, "must not be negative"),
    ({"nodes": [P.NodeInfo(host="n", cores=-2, gpus=0)]}, "invalid node list"),
])
def test_malformed_hellos_are_refused(kw: dict[str, Any], message: str) -> None:
    base = {"role": "pilot", "proto_version": 1, "token": "", "pilot_id": "p", "cores": 1}
    with pytest.raises(InvalidRequest, match=message):
        check_hello(P.Hello(**{**base, **kw}))


def test_idle_and_busy_nodes_count_connected_pilots_only() -> None:
    book = PilotBook(lease_timeout=30)
    a, _ = book.hello(hello(pilot_id="a"), site_id=1, owner_id=1, batch_job=0, peer=1, now=0)
    b, _ = book.hello(hello(pilot_id="b", nodes=[P.NodeInfo(host="x", cores=1, gpus=0)] * 3),
                      site_id=1, owner_id=1, batch_job=0, peer=2, now=0)
    book.assign(b, 5)
    c, _ = book.hello(hello(pilot_id="c"), site_id=1, owner_id=1, batch_job=0, peer=3, now=0)
    book.away(c, 3)
    assert book.nodes(1) == (1, 3)
    assert a.node_count == 1


def test_the_restart_allowance_covers_every_reconnect_delay() -> None:
    import random

    delays = backoff(rng=random.Random(7))
    assert max(next(delays) for _ in range(2000)) <= RECONNECT_ALLOWANCE
