"""The task table and its cascade, driven through the pure core: no event loop, no store.

A tiny harness plays the driver: it keeps what each handler asked to write,
"commits" it by handing the ``after`` items back to ``committed``, and
collects every frame by connection.
"""

from __future__ import annotations

from typing import Any

import pytest

from tidewater import proto as P
from tidewater.config import ControllerConfig
from tidewater.controller import admin, requests
from tidewater.controller.effects import Close, Effects, Send
from tidewater.controller.model import Principal
from tidewater.controller.state import ControllerState, NeedsRead, Stored
from tidewater.controller.store import schema
from tidewater.controller.store.base import Op, Recovered
from tidewater.errors import InvalidRequest, NotFound
from tidewater.states import TaskState as S

CLIENT, PILOT, OTHER = 1, 2, 3
ALICE = Principal(user_id=1, user="alice")


class Core:
    def __init__(self, **limits: Any) -> None:
        self.state = ControllerState(ControllerConfig())
        self.now = 1000.0
        self.writes: list[tuple[Op, Any]] = []
        self.sent: dict[int, list[P.Msg]] = {}
        self.run(self.state.load(Recovered(next_task=1, next_event=1, sites=[], apps=[],
                                           live=[], parents=[], jobs=[], pilots=[]), self.now))
        self.run(admin.add_site(self.state, ALICE, CLIENT, P.AddSite(req_id=1, name="s"),
                                self.now))
        self.run(admin.add_app(self.state, ALICE, CLIENT,
                               P.AddApp(req_id=2, site="s", name="t", command="/bin/true"),
                               self.now))

    def run(self, fx: Effects) -> None:
        """Deliver, commit, deliver what follows, and flush -- as the driver does."""
        for o in fx.out:
            self._deliver(o)
        self.writes += [(op, params) for op, params in fx.writes]
        if fx.after:
            self.run(self.state.committed(fx.after, self.now))
        for o in self.state.flush():
            self._deliver(o)

    def _deliver(self, o: Send | Close) -> None:
        if isinstance(o, Send):
            self.sent.setdefault(o.peer, []).append(o.msg)

    def take(self, peer: int, kind: type) -> list[Any]:
        msgs = [m for m in self.sent.get(peer, []) if isinstance(m, kind)]
        self.sent[peer] = [m for m in self.sent.get(peer, []) if not isinstance(m, kind)]
        return msgs

    def submit(self, *specs: P.TaskSpec, key: str = "", stored: Stored | None = None
               ) -> list[int]:
        msg = P.Submit(req_id=9, tasks=list(specs), key=key)
        plan = requests.plan_submit(self.state, ALICE, msg, self.now)
        self.run(requests.submit(self.state, ALICE, CLIENT, msg, plan, stored or Stored(),
                                  self.now))
        (reply,) = self.take(CLIENT, P.Submitted)
        return list(reply.ids)

    def pilot(self, cores: int = 4, **kw: Any) -> Any:
        rec, fx = self.state.pilot_hello(
            ALICE, PILOT, P.Hello(role="pilot", proto_version=1, token="", site="s",
                                  pilot_id="p", cores=cores, credit_cores=cores, **kw),
            P.Welcome(proto_version=1, server_id="x"), self.now)
        self.run(fx)
        return rec

    def dispatch(self) -> list[P.Assignment]:
        self.run(self.state.dispatch(self.now))
        return [a for m in self.take(PILOT, P.RunTasks) for a in m.tasks]

    def report(self, rec: Any, *reports: P.Report, seq: int = 1) -> None:
        self.run(self.state.reports(rec, P.Reports(seq=seq, reports=list(reports)), self.now))

    def state_of(self, tid: int) -> S:
        t = self.state.tasks.live.get(tid)
        if t is not None:
            return t.state
        written = [p[0] if op == Op.UPDATE_TASK else p[4] for op, p in self.writes
                   if (op == Op.UPDATE_TASK and p[-1] == tid)
                   or (op == Op.INSERT_TASK and p[0] == tid)]
        return S(written[-1])

    def events(self, tid: int) -> list[tuple[str, str]]:
        return [(p[2], p[3]) for op, p in self.writes if op == Op.INSERT_EVENT and p[1] == tid]


def spec(**kw: Any) -> P.TaskSpec:
    return P.TaskSpec(app="t", site="s", **kw)


def rep(a: P.Assignment, kind: str, **kw: Any) -> P.Report:
    return P.Report(task_id=a.task_id, attempt=a.attempt, kind=kind, time=1000.0, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the happy path

def test_submit_started_done_writes_every_transition_and_answers_the_waiter() -> None:
    core = Core()
    (tid,) = core.submit(spec(tags={"run": "1"}))
    ops = [op for op, _ in core.writes]
    assert Op.INSERT_TASK in ops and Op.INSERT_TAG in ops and Op.INSERT_AUDIT in ops
    assert core.events(tid) == [("CREATED", "READY"), ("READY", "STAGED_IN")]
    # A waiter registered while the task is live hears its final record, once.
    fx, left = requests.wait(core.state, ALICE, OTHER, P.Wait(req_id=5, ids=[tid]), Stored())
    assert left == []
    core.run(fx)
    rec = core.pilot()
    (a,) = core.dispatch()
    assert (a.task_id, a.attempt) == (tid, 1)
    core.report(rec, rep(a, "started"), rep(a, "done", exit_code=0))
    assert core.take(PILOT, P.Ack) == [P.Ack(seq=1)]
    assert core.events(tid)[2:] == [("STAGED_IN", "RUNNING"), ("RUNNING", "RUN_DONE"),
                                    ("RUN_DONE", "STAGED_OUT"), ("STAGED_OUT", "JOB_FINISHED")]
    assert tid not in core.state.tasks.live
    (results,) = core.take(OTHER, P.Results)
    assert [(i.id, i.state, i.pilot) for i in results.tasks] == [(tid, "JOB_FINISHED", "p")]
    assert core.state.tasks.counters["tasks_finished"] == 1


def test_a_resent_submit_with_its_key_creates_nothing() -> None:
    core = Core()
    ids = core.submit(spec(), spec(), key="k")
    msg = P.Submit(req_id=10, tasks=[spec(), spec()], key="k")
    plan = requests.plan_submit(core.state, ALICE, msg, core.now)
    core.run(requests.submit(core.state, ALICE, CLIENT, msg, plan, Stored(), core.now))
    (reply,) = core.take(CLIENT, P.Submitted)
    assert reply.ids == ids
    assert sum(1 for op, _ in core.writes if op == Op.INSERT_TASK) == 2


# ---------------------------------------------------------------------- failures and retries

def test_a_failed_attempt_is_retried_then_fails_for_good() -> None:
    core = Core()
    (tid,) = core.submit(spec(max_retries=1))
    rec = core.pilot()
    (a,) = core.dispatch()
    core.report(rec, rep(a, "started"), rep(a, "error", exit_code=3))
    assert core.state_of(tid) == S.RESTART_READY
    (b,) = core.dispatch()
    assert b.attempt == 2
    core.report(rec, rep(b, "started"), rep(b, "error", exit_code=4), seq=2)
    assert core.state_of(tid) == S.FAILED
    assert ("RUN_ERROR", "FAILED") in core.events(tid)
    assert core.state.tasks.counters["tasks_retried"] == 1


def test_what_a_function_raised_is_kept_for_its_attempt_only_and_bounded() -> None:
    core = Core()
    (tid,) = core.submit(spec(max_retries=1))
    rec = core.pilot()
    (a,) = core.dispatch()
    huge = P.RemoteError(type="m." + "X" * 10_000, builtins=["ValueError"] * 100,
                         message="m" * 10_000, traceback="start" + "t" * 100_000 + "end")
    core.report(rec, rep(a, "started"), rep(a, "error", exit_code=1, exception=huge))
    kept = core.state.tasks.live[tid].exception
    assert kept is not None and core.state_of(tid) == S.RESTART_READY
    assert len(kept.type) == 512 and len(kept.builtins) == 32 and len(kept.message) == 4096
    assert len(kept.traceback) == 8192 and kept.traceback.endswith("end")
    # The next attempt forgets it; it ends otherwise (timed out): none is reported.
    (b,) = core.dispatch()
    assert core.state.tasks.live[tid].exception is None
    core.report(rec, rep(b, "started"), rep(b, "timeout"), seq=2)
    (written,) = [p for op, p in core.writes if op == Op.UPDATE_TASK and p[-1] == tid][-1:]
    assert core.state_of(tid) == S.FAILED and written[-2] is None
    # A failure with one is stored with it; a cancelled task has none.
    small = P.RemoteError(type="builtins.KeyError", builtins=["KeyError", "LookupError"],
                          message="'k'", traceback="Traceback ...")
    (t2,) = core.submit(spec(max_retries=0))
    (c,) = core.dispatch()
    core.report(rec, rep(c, "started"), rep(c, "error", exit_code=1, exception=small), seq=3)
    assert core.state_of(t2) == S.FAILED
    (stored,) = [p for op, p in core.writes if op == Op.UPDATE_TASK and p[-1] == t2][-1:]
    assert schema.decode_exception(stored[-2]) == small
    (t3,) = core.submit(spec(max_retries=1))
    (d,) = core.dispatch()
    core.report(rec, rep(d, "started"), rep(d, "error", exit_code=1, exception=small), seq=4)
    core.run(requests.cancel(core.state, ALICE, CLIENT, P.Cancel(req_id=3, ids=[t3]),
                             Stored(), core.now))
    (killed,) = [p for op, p in core.writes if op == Op.UPDATE_TASK and p[-1] == t3][-1:]
    assert killed[0] == "KILLED" and killed[-2] is None


def test_the_app_handler_choosing_fail_gives_up_whatever_retries_remain() -> None:
    core = Core()
    (tid,) = core.submit(spec(max_retries=5))
    rec = core.pilot()
    (a,) = core.dispatch()
    core.report(rec, rep(a, "started"), rep(a, "timeout", hook="fail"))
    assert core.state_of(tid) == S.FAILED
    assert core.state.tasks.counters["tasks_retried"] == 0


def test_reports_of_a_superseded_attempt_or_another_pilot_are_ignored_but_acknowledged() -> None:
    core = Core()
    (tid,) = core.submit(spec())
    rec = core.pilot()
    (a,) = core.dispatch()
    core.report(rec, P.Report(task_id=tid, attempt=a.attempt + 1, kind="done", time=1.0))
    assert core.take(PILOT, P.Ack) == [P.Ack(seq=1)]
    assert core.state_of(tid) == S.STAGED_IN
    assert core.state.tasks.counters["stale_reports"] == 1


def test_a_pilot_lost_with_a_running_task_retries_it_as_a_recorded_attempt() -> None:
    core = Core()
    (tid,) = core.submit(spec(max_retries=2))
    rec = core.pilot()
    (a,) = core.dispatch()
    core.report(rec, rep(a, "started"))
    core.run(core.state.pilot_gone(rec, PILOT, bye=True, now=core.now))
    assert core.state_of(tid) == S.RESTART_READY
    assert ("RUNNING", "RUN_TIMEOUT") in core.events(tid)
    assert any(op == Op.DELETE_PILOT for op, _ in core.writes)


def test_a_closed_connection_loses_the_pilot_after_the_grace_not_the_lease() -> None:
    core = Core()
    t = core.state.timeouts
    (tid,) = core.submit(spec(max_retries=2))
    rec = core.pilot()
    (a,) = core.dispatch()
    core.report(rec, rep(a, "started"))
    core.run(core.state.pilot_gone(rec, PILOT, bye=False, now=core.now))
    assert core.state_of(tid) == S.RUNNING  # it may be back soon
    assert core.state.pilots.leases.next_deadline() == core.now + t.grace() < core.now + \
        t.lease_timeout
    core.run(core.state.lease_expired(core.now + t.grace() - 0.01))
    assert core.state_of(tid) == S.RUNNING
    core.run(core.state.lease_expired(core.now + t.grace()))
    assert core.state_of(tid) == S.RESTART_READY
    (lost,) = [p for op, p in core.writes if op == Op.INSERT_EVENT and p[3] == "RUN_TIMEOUT"]
    assert "connection closed" in str(lost) and "not back within" in str(lost)


def test_a_silent_pilot_keeps_its_tasks_for_the_whole_lease() -> None:
    core = Core()
    t = core.state.timeouts
    (tid,) = core.submit(spec(max_retries=2))
    rec = core.pilot()
    (a,) = core.dispatch()
    core.report(rec, rep(a, "started"))
    core.run(core.state.lease_expired(core.now + t.lease_timeout - 0.01))
    assert core.state_of(tid) == S.RUNNING
    core.run(core.state.lease_expired(core.now + t.lease_timeout))
    assert core.state_of(tid) == S.RESTART_READY
    (lost,) = [p for op, p in core.writes if op == Op.INSERT_EVENT and p[3] == "RUN_TIMEOUT"]
    assert f"silent for {t.lease_timeout:g}s" in str(lost)


def test_a_pilot_back_within_the_grace_keeps_its_running_task() -> None:
    core = Core()
    t = core.state.timeouts
    (tid,) = core.submit(spec(max_retries=2))
    rec = core.pilot()
    (a,) = core.dispatch()
    core.report(rec, rep(a, "started"))
    core.run(core.state.pilot_gone(rec, PILOT, bye=False, now=core.now))
    core.now += t.grace() / 2
    rec2 = core.pilot(held=[(tid, a.attempt)])
    assert rec2 is rec
    core.run(core.state.lease_expired(core.now + t.grace()))
    assert core.state_of(tid) == S.RUNNING
    core.report(rec, rep(a, "done", exit_code=0), seq=2)
    assert core.state_of(tid) == S.JOB_FINISHED
    assert [e for e in core.events(tid) if e[1] == "RUN_TIMEOUT"] == []

def test_a_pilot_lost_before_it_reported_a_start_leaves_that_attempt_on_record() -> None:
    """It may have started the task and died before its report left (or, cut off,
    started it from its prefetch queue): the attempt is recorded, never requeued unseen."""
    core = Core()
    (tid,) = core.submit(spec(max_retries=2))
    rec = core.pilot()
    (a,) = core.dispatch()
    core.run(core.state.pilot_gone(rec, PILOT, bye=False, now=core.now))
    core.now += core.state.timeouts.lease_timeout + 1
    core.run(core.state.lease_expired(core.now))
    assert core.state_of(tid) == S.RESTART_READY
    assert core.events(tid)[-3:] == [("STAGED_IN", "RUNNING"), ("RUNNING", "RUN_TIMEOUT"),
                                     ("RUN_TIMEOUT", "RESTART_READY")]
    data = [p[5] for op, p in core.writes if op == Op.INSERT_EVENT and p[1] == tid][-3:]
    assert f'"attempt":{a.attempt}' in str(data[0]) and "unconfirmed" in str(data[0])
    assert "may have started" in str(data[1])
    core.pilot()
    (b,) = core.dispatch()
    assert (b.task_id, b.attempt) == (tid, a.attempt + 1)


def test_a_pilot_that_said_bye_hands_back_unstarted_tasks_without_an_attempt() -> None:
    core = Core()
    (tid,) = core.submit(spec())
    rec = core.pilot()
    core.dispatch()
    core.run(core.state.pilot_gone(rec, PILOT, bye=True, now=core.now))
    assert core.state_of(tid) == S.STAGED_IN
    assert core.events(tid) == [("CREATED", "READY"), ("READY", "STAGED_IN")]


# ---------------------------------------------------------------------- parents

def test_a_child_becomes_ready_in_the_same_commit_as_its_last_parent_finishes() -> None:
    core = Core()
    p1, p2 = core.submit(spec(), spec())
    (child,) = core.submit(spec(parents=[p1, p2]))
    assert core.state_of(child) == S.AWAITING_PARENTS
    rec = core.pilot()
    a, b = core.dispatch()
    core.report(rec, rep(a, "started"), rep(a, "done", exit_code=0))
    assert core.state_of(child) == S.AWAITING_PARENTS
    core.report(rec, rep(b, "started"), rep(b, "done", exit_code=0), seq=2)
    assert core.events(child)[-2:] == [("AWAITING_PARENTS", "READY"), ("READY", "STAGED_IN")]
    (c,) = core.dispatch()
    assert c.task_id == child


def test_a_failed_parent_fails_its_children_and_theirs() -> None:
    core = Core()
    (parent,) = core.submit(spec(max_retries=0))
    (child,) = core.submit(spec(parents=[parent]))
    (grandchild,) = core.submit(spec(parents=[child]))
    rec = core.pilot()
    (a,) = core.dispatch()
    core.report(rec, rep(a, "started"), rep(a, "error", exit_code=1))
    assert core.state_of(parent) == S.FAILED
    assert core.state_of(child) == S.FAILED
    assert core.state_of(grandchild) == S.FAILED
    assert core.state.tasks.live == {}


def test_a_child_of_an_already_failed_parent_fails_at_submit() -> None:
    core = Core()
    stored = Stored(states={77: S.FAILED}, read={77})
    (child,) = core.submit(spec(parents=[77]), stored=stored)
    assert core.state_of(child) == S.FAILED
    assert core.events(child) == [("CREATED", "AWAITING_PARENTS"), ("AWAITING_PARENTS", "FAILED")]


def test_a_parent_not_in_memory_must_be_read_first() -> None:
    core = Core()
    msg = P.Submit(req_id=1, tasks=[spec(parents=[55])])
    plan = requests.plan_submit(core.state, ALICE, msg, core.now)
    assert plan.unread_parents == [55]
    with pytest.raises(NeedsRead):
        requests.submit(core.state, ALICE, CLIENT, msg, plan, Stored(), core.now)
    with pytest.raises(NotFound, match="parent task 55 not found"):
        requests.submit(core.state, ALICE, CLIENT, msg, plan, Stored(read={55}), core.now)


# ---------------------------------------------------------------------- cancel

@pytest.mark.parametrize("where", ["queued", "sent", "running", "awaiting"])
def test_cancel_kills_a_task_in_every_live_state(where: str) -> None:
    core = Core()
    (first,) = core.submit(spec())
    tid = first
    rec = core.pilot(cores=1) if where != "queued" else None
    if where == "awaiting":
        (tid,) = core.submit(spec(parents=[first]))
    elif where in ("sent", "running"):
        (a,) = core.dispatch()
        if where == "running":
            core.report(rec, rep(a, "started"))
    core.run(requests.cancel(core.state, ALICE, CLIENT, P.Cancel(req_id=3, ids=[tid]), Stored(),
                               core.now))
    (reply,) = core.take(CLIENT, P.Cancelled)
    assert reply.ids == [tid]
    assert core.state_of(tid) == S.KILLED
    kills = core.take(PILOT, P.Kill)
    assert bool(kills) == (where in ("sent", "running"))
    if where == "queued":
        assert core.dispatch() == []


def test_cancel_of_another_users_task_is_not_found() -> None:
    core = Core()
    (tid,) = core.submit(spec())
    bob = Principal(user_id=2, user="bob")
    with pytest.raises(NotFound, match=f"no task with id {tid}"):
        requests.cancel(core.state, bob, CLIENT, P.Cancel(req_id=1, ids=[tid]), Stored(read={tid}),
                          core.now)
    assert core.state_of(tid) == S.STAGED_IN


def test_bad_input_is_refused_before_anything_changes() -> None:
    core = Core()
    before = list(core.writes)
    with pytest.raises(InvalidRequest, match="unknown app 'nope'"):
        requests.plan_submit(core.state, ALICE, P.Submit(req_id=1, tasks=[P.TaskSpec(app="nope",
                                                                            site="s")]),
                               core.now)
    with pytest.raises(InvalidRequest, match="Submit carries no tasks"):
        requests.plan_submit(core.state, ALICE, P.Submit(req_id=1, tasks=[]), core.now)
    assert core.writes == before and core.state.tasks.live == {}


def test_a_wait_answers_what_it_can_and_names_tasks_that_finished_during_the_read() -> None:
    core = Core()
    a, b = core.submit(spec(), spec())
    rec = core.pilot()
    x, _y = core.dispatch()
    # The driver saw both live (so read nothing); then ``a`` finished before the handler ran.
    core.report(rec, rep(x, "started"), rep(x, "done", exit_code=0))
    fx, left = requests.wait(core.state, ALICE, OTHER, P.Wait(req_id=5, ids=[a, b]), Stored())
    assert left == [a]
    assert core.state.notify.waiters == {b: [(OTHER, 5)]}
    assert fx.out == []
    # A task id nobody has is refused, and nothing is registered for it.
    with pytest.raises(NotFound, match="no task with id 999"):
        requests.wait(core.state, ALICE, OTHER, P.Wait(req_id=6, ids=[b, 999]),
                      Stored(read={999}))
    assert core.state.notify.waiters == {b: [(OTHER, 5)]}


# ---------------------------------------------------------------------- submit and wait

def test_a_submit_that_waits_gets_its_results_pushed_under_its_own_request() -> None:
    """One round trip: Submitted, then each task's final TaskInfo under the same req_id,
    with no Wait sent."""
    core = Core()
    msg = P.Submit(req_id=7, tasks=[spec(), spec()], wait=True)
    plan = requests.plan_submit(core.state, ALICE, msg, core.now)
    core.run(requests.submit(core.state, ALICE, CLIENT, msg, plan, Stored(), core.now))
    (sub,) = core.take(CLIENT, P.Submitted)
    assert sub.req_id == 7
    rec = core.pilot()
    a, b = core.dispatch()
    core.report(rec, rep(a, "started"), rep(a, "done", exit_code=0))
    (first,) = core.take(CLIENT, P.Results)
    assert (first.req_id, [(i.id, i.state) for i in first.tasks]) == (7, [(a.task_id,
                                                                           "JOB_FINISHED")])
    core.report(rec, rep(b, "started"), rep(b, "done", exit_code=0), seq=2)
    (second,) = core.take(CLIENT, P.Results)
    assert (second.req_id, [i.id for i in second.tasks]) == (7, [b.task_id])
    assert core.take(CLIENT, P.Results) == []  # each result once


def test_a_submit_that_does_not_wait_gets_no_results() -> None:
    core = Core()
    (tid,) = core.submit(spec())
    rec = core.pilot()
    (a,) = core.dispatch()
    core.report(rec, rep(a, "started"), rep(a, "done", exit_code=0))
    assert core.state_of(tid) == S.JOB_FINISHED
    assert core.take(CLIENT, P.Results) == []
