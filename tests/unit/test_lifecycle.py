"""Retry, resubmit, events and logs in the pure core (:mod:`tidewater.controller.lifecycle`).

The driver's reads are played by hand: a task that left memory is the very
record it was when its final state was committed (what the store gives back).
"""

from __future__ import annotations

from typing import Any

import pytest

from tidewater import proto as P
from tidewater import states
from tidewater.controller import lifecycle
from tidewater.controller.model import LiveTask
from tidewater.controller.state import Stored
from tidewater.controller.store.base import Op
from tidewater.errors import IllegalTransition, NotFound
from tidewater.pilot import runner
from tidewater.states import TaskState as S

from .test_tasks import ALICE, CLIENT, Core, rep, spec

BOB = ALICE.__class__(user_id=2, user="bob")


def failing(core: Core, *specs: P.TaskSpec) -> tuple[list[int], dict[int, LiveTask]]:
    """Submit ``specs``; the first runs and fails for good; every record, by id."""
    ids = core.submit(*specs)
    held = {i: core.state.tasks.live[i] for i in ids}
    rec = core.pilot()
    (a, *_rest) = core.dispatch()
    assert a.task_id == ids[0]
    core.report(rec, rep(a, "started"), rep(a, "error", exit_code=1))
    assert all(i not in core.state.tasks.live or held[i].state != S.FAILED for i in ids)
    return ids, held


def retry(core: Core, read: lifecycle.RetryRead, **kw: Any) -> P.Retried:
    core.run(lifecycle.retry(core.state, ALICE, CLIENT, P.Retry(req_id=7, **kw), read,
                             core.now))
    (reply,) = core.take(CLIENT, P.Retried)
    return reply  # type: ignore[no-any-return]


def test_a_failed_task_is_retried_as_its_next_attempt() -> None:
    core = Core()
    (tid,), held = failing(core, spec(max_retries=0))
    t = held[tid]
    assert t.state == S.FAILED and t.error == "exit code 1"
    reply = retry(core, lifecycle.RetryRead(roots=[t]), ids=[tid])
    assert (reply.ids, reply.waiting, reply.more) == ([tid], [], False)
    assert core.state.tasks.live[tid] is t and t.state == S.RESTART_READY
    assert (t.error, t.exit_code, t.retries, t.finished_at) == ("", None, 0, None)
    assert core.events(tid)[-1] == ("FAILED", "RESTART_READY")
    (a,) = core.dispatch()
    assert (a.task_id, a.attempt) == (tid, 2)
    assert core.state.tasks.counters["tasks_retried_by_user"] == 1
    audit = [p for op, p in core.writes if op == Op.INSERT_AUDIT]
    assert any("task.retry" in map(str, p) for p in audit)


def test_a_child_failed_by_its_parent_waits_for_it_again_and_then_runs() -> None:
    core = Core()
    (pid,), held = failing(core, spec(max_retries=0))
    # Its parent failed (as the store says): it fails at once.
    (cid,) = core.submit(spec(parents=[pid]), stored=Stored(states={pid: S.FAILED}, read={pid}))
    child = core.state.tasks.live.get(cid)
    assert child is None and core.state_of(cid) == S.FAILED
    stored_child = LiveTask(**{**_fields(held[pid]), "id": cid, "state": S.FAILED,
                               "error": f"parent task {pid} failed", "attempt": 0,
                               "parent_ids": [pid]})
    assert lifecycle.parent_failure(stored_child) == pid
    reply = retry(core, lifecycle.RetryRead(roots=[held[pid]], children=[stored_child]),
                  ids=[pid])
    assert (reply.ids, reply.waiting) == ([pid], [cid])
    assert stored_child.state == S.AWAITING_PARENTS and stored_child.waiting == 1
    assert core.events(cid)[-1] == ("FAILED", "AWAITING_PARENTS")
    rec = core.pilot()
    (a,) = core.dispatch()
    core.report(rec, rep(a, "started"), rep(a, "done", exit_code=0), seq=2)
    assert core.state_of(pid) == S.JOB_FINISHED
    assert core.state_of(cid) == S.STAGED_IN  # released in its parent's commit
    (b,) = core.dispatch()
    assert (b.task_id, b.attempt) == (cid, 1)


def test_a_task_whose_other_parent_is_killed_stays_failed() -> None:
    core = Core()
    (pid,), held = failing(core, spec(max_retries=0))
    child = LiveTask(**{**_fields(held[pid]), "id": 50, "state": S.FAILED,
                        "error": f"parent task {pid} failed", "parent_ids": [pid, 40]})
    reply = retry(core, lifecycle.RetryRead(roots=[held[pid]], children=[child],
                                            states={40: S.KILLED}), ids=[pid])
    assert (reply.ids, reply.waiting) == ([pid], [])
    assert child.state == S.FAILED and 50 not in core.state.tasks.live


def test_tasks_not_failed_or_already_back_are_left_alone() -> None:
    core = Core()
    (tid,), held = failing(core, spec(max_retries=0))
    done = LiveTask(**{**_fields(held[tid]), "id": 60, "state": S.JOB_FINISHED})
    killed = LiveTask(**{**_fields(held[tid]), "id": 61, "state": S.KILLED})
    assert retry(core, lifecycle.RetryRead(roots=[done, killed]), ids=[60, 61]).ids == []
    assert retry(core, lifecycle.RetryRead(roots=[held[tid]]), ids=[tid]).ids == [tid]
    # A second retry read the same FAILED record meanwhile: the task is already back.
    assert retry(core, lifecycle.RetryRead(roots=[held[tid]]), ids=[tid]).ids == []


def test_another_users_ids_are_not_found() -> None:
    core = Core()
    (tid,), held = failing(core, spec(max_retries=0))
    with pytest.raises(NotFound, match=f"no task with id {tid}"):
        lifecycle.check_retry_ids(core.state, BOB, [tid], [])
    assert lifecycle.check_retry_ids(core.state, ALICE, [tid], [held[tid]]) == [held[tid]]


def test_a_filter_without_failed_matches_nothing() -> None:
    core = Core()
    msg = P.Retry(req_id=1, filter=P.TaskFilter(states=["KILLED"]))
    assert lifecycle.retry_query(core.state, ALICE, msg) is None
    q, limit = lifecycle.retry_query(core.state, ALICE, P.Retry(
        req_id=1, filter=P.TaskFilter(tags={"a": "b"}, since=5.0), limit=10**9)) or (None, 0)
    assert q is not None and q.states == ("FAILED",) and q.since == 5.0
    assert limit == core.state.limits.max_query_limit


def test_the_spec_of_a_stored_task_submits_the_same_task() -> None:
    core = Core()
    original = spec(params={}, tags={"run": "3"}, priority=2, timeout=5.0, max_retries=1,
                    env={"A": "1"}, wall_time=60.0,
                    resources=P.Resources(cores=4, ranks_per_node=2, threads_per_rank=2),
                    inputs=[P.Input(path="a", url="file:///data/a"),
                            P.Input(path="b", data=b"bee")],
                    outputs=[P.Output(path="out"), P.Output(path="far", url="file:///x/far")])
    (tid,) = core.submit(original)
    t = core.state.tasks.live[tid]
    again = lifecycle.spec_of(t, "s", {"b": b"bee"})
    assert again == original
    (copy,) = core.submit(again)
    c = core.state.tasks.live[copy]
    assert (c.cores, c.extra_j, c.files, c.in_data) == (t.cores, t.extra_j, t.files, t.in_data)


def test_an_event_page_says_where_to_go_on() -> None:
    core = Core()
    core.state.notify.committed_event = 500
    msg = P.ListEvents(req_id=3, since_event=10, limit=2)
    q, limit, upto = lifecycle.events_request(core.state, ALICE, msg)
    assert (limit, upto) == (2, 10 + 2 * lifecycle.EVENT_SCAN)
    ev = [P.TaskEvent(id=i, task_id=1, from_state="READY", to_state="STAGED_IN", time=1.0)
          for i in (12, 14)]
    core.run(lifecycle.events_reply(core.state, CLIENT, msg, ev, limit, upto))
    (page,) = core.take(CLIENT, P.EventList)
    assert (page.next_event, page.more) == (14, True)
    core.run(lifecycle.events_reply(core.state, CLIENT, msg, ev[:1], limit, upto))
    (page,) = core.take(CLIENT, P.EventList)
    assert (page.next_event, page.more) == (upto, True)  # the range read held no more
    core.state.notify.committed_event = upto
    core.run(lifecycle.events_reply(core.state, CLIENT, msg, [], limit, upto))
    (page,) = core.take(CLIENT, P.EventList)
    assert (page.events, page.next_event, page.more) == ([], upto, False)
    by_ids = P.ListEvents(req_id=3, filter=P.TaskFilter(ids=[1], states=["READY"]))
    q, _limit, upto = lifecycle.events_request(core.state, ALICE, by_ids)
    assert upto is None and q.states == ()  # states name the events, not the tasks


def test_logs_of_a_task_that_never_ran_are_refused() -> None:
    core = Core()
    (tid,) = core.submit(spec())
    with pytest.raises(Exception, match="has not run") as exc:
        lifecycle.read_log(core.state, CLIENT, P.ReadLog(req_id=1, task_id=tid),
                           core.state.tasks.live[tid])
    assert getattr(exc.value, "code", "") == "not_ready"


def test_log_file_names_are_the_pilots() -> None:
    assert lifecycle.LOG_FILES == {False: runner.STDOUT, True: runner.STDERR}


def test_only_a_retry_leaves_failed_and_only_failed() -> None:
    assert states.can_retry(S.FAILED, S.RESTART_READY)
    assert not states.can_transition(S.FAILED, S.RESTART_READY)
    for final in (S.JOB_FINISHED, S.KILLED):
        for dst in S:
            assert not states.can_retry(final, dst)
    assert states.check_path(S.FAILED, [S.READY, S.STAGED_IN], retry=True) == [
        (S.FAILED, S.READY), (S.READY, S.STAGED_IN)]
    with pytest.raises(IllegalTransition):
        states.check_path(S.FAILED, [S.READY])
    with pytest.raises(IllegalTransition):
        states.check_path(S.FAILED, [S.RUNNING], retry=True)


def _fields(t: LiveTask) -> dict[str, Any]:
    names = ("id", "owner_id", "site_id", "app", "state", "params_j", "tags_j", "priority",
             "cores", "gpus", "timeout", "max_retries", "retries", "attempt", "pilot",
             "argv_j", "shell", "env_j", "workdir", "exit_code", "error", "stdout_tail",
             "stderr_tail", "created_at", "started_at", "finished_at", "extra_j", "files")
    return {n: getattr(t, n) for n in names}


def test_a_watch_refuses_a_time_window() -> None:
    from tidewater.controller import requests
    from tidewater.errors import InvalidRequest

    core = Core()
    msg = P.Watch(req_id=1, filter=P.TaskFilter(since=5.0))
    with pytest.raises(InvalidRequest, match="no time window"):
        requests.watch(core.state, ALICE, CLIENT, msg, Stored())
    assert not core.state.notify.watchers


def test_a_time_that_is_not_a_time_is_refused() -> None:
    from tidewater.controller import requests
    from tidewater.errors import InvalidRequest

    core = Core()
    for bad in (float("inf"), float("nan")):
        with pytest.raises(InvalidRequest, match="seconds since the epoch"):
            requests.task_query(core.state, ALICE, P.TaskFilter(until=bad))
    q = requests.task_query(core.state, ALICE, P.TaskFilter(since=5.0, until=9.0))
    assert (q.since, q.until) == (5.0, 9.0)


async def test_the_client_refuses_a_retry_of_everything_or_of_both() -> None:
    from tidewater.client import Client
    from tidewater.errors import InvalidRequest

    client = Client("ws://127.0.0.1:9", "twu_x")  # never connected: refused before sending
    with pytest.raises(InvalidRequest, match="name the tasks"):
        await client.retry()
    with pytest.raises(InvalidRequest, match="not both"):
        await client.retry([1], state="FAILED")
