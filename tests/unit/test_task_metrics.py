"""What ``/metrics`` reads of the core: task counts by site and state, and task latencies.

Driven through the pure core (``Core`` from test_tasks): the running counts
must equal a count of the live tasks after every step, whatever the path.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tidewater import proto as P
from tidewater import states
from tidewater.controller import lifecycle, requests
from tidewater.controller.state import Stored
from tidewater.controller.timings import LATENCY_BUCKETS, SiteHistogram, TaskTimes
from tidewater.states import TaskState as S

from .test_routing_core import core_with_sites, info, pilot, routed
from .test_tasks import ALICE, CLIENT, Core, rep, spec


def kept(core: Core) -> tuple[Counter[tuple[int, S]], Counter[tuple[int, S]]]:
    """(live, ended) as the task table keeps them, zeros left out."""
    tasks = core.state.tasks
    live = Counter({(sid, st): n for sid, c in tasks.by_site.items() for st, n in c.items() if n})
    ended = Counter({(sid, st): n for sid, c in tasks.ended.items() for st, n in c.items()})
    return live, ended


def check(core: Core, ended: dict[S, int]) -> None:
    live, kept_ended = kept(core)
    assert live == Counter((t.site_id, t.state) for t in core.state.tasks.live.values()
                           if t.state not in states.FINAL)
    site = core.state.registry.site_names[(ALICE.user_id, "s")]
    assert kept_ended == Counter({(site, st): n for st, n in ended.items() if n})


def test_counts_follow_every_path_a_task_takes() -> None:
    core = Core()
    check(core, {})
    ok, retried, doomed = core.submit(spec(), spec(max_retries=1), spec(max_retries=0))
    (child,) = core.submit(spec(parents=[ok]))
    (orphan,) = core.submit(spec(parents=[doomed]))
    (cancelled,) = core.submit(spec())
    check(core, {})
    rec = core.pilot(cores=3)
    a, b, c = core.dispatch()
    check(core, {})
    core.report(rec, rep(a, "started"), rep(b, "started"), rep(c, "started"))
    check(core, {})
    core.report(rec, rep(b, "error", exit_code=1), seq=2)  # retried: RESTART_READY
    check(core, {})
    core.report(rec, rep(a, "done", exit_code=0), seq=3)  # its child becomes runnable
    core.report(rec, rep(c, "error", exit_code=1), seq=4)  # fails, and its child with it
    check(core, {S.JOB_FINISHED: 1, S.FAILED: 2})
    core.run(requests.cancel(core.state, ALICE, CLIENT,
                             P.Cancel(req_id=3, ids=[cancelled]), Stored(), core.now))
    check(core, {S.JOB_FINISHED: 1, S.FAILED: 2, S.KILLED: 1})
    assert {core.state_of(t) for t in (child, retried)} == {S.STAGED_IN, S.RESTART_READY}
    assert core.state_of(orphan) == S.FAILED


def test_a_task_back_by_its_users_retry_is_live_again_and_counted_again_when_it_ends() -> None:
    core = Core()
    (tid,) = core.submit(spec(max_retries=0))
    t = core.state.tasks.live[tid]
    rec = core.pilot(cores=1)
    (a,) = core.dispatch()
    core.report(rec, rep(a, "started"), rep(a, "error", exit_code=1))
    check(core, {S.FAILED: 1})
    core.run(lifecycle.retry(core.state, ALICE, CLIENT, P.Retry(req_id=7, ids=[tid]),
                             lifecycle.RetryRead(roots=[t]), core.now))
    assert core.state.tasks.live[tid].state == S.RESTART_READY
    check(core, {S.FAILED: 1})
    core.run(core.state.credit(rec, P.Credit(cores=1)))
    (b,) = core.dispatch()
    assert b.attempt == 2
    core.report(rec, rep(b, "started"), rep(b, "done", exit_code=0), seq=2)
    check(core, {S.FAILED: 1, S.JOB_FINISHED: 1})
    sid = core.state.registry.site_names[(ALICE.user_id, "s")]
    # Its second attempt's start is not a submit -> start; both dispatches were timed.
    assert core.state.times.start.cumulative(sid)[1] == 1
    assert core.state.times.dispatch.cumulative(sid)[1] == 2


def test_a_task_routed_again_is_counted_on_its_new_site() -> None:
    core = core_with_sites("a", "b")
    ra = pilot(core, "a", "pa", 100, cores=8)
    pilot(core, "b", "pb", 101, cores=1)
    (tid,) = core.submit(routed(sites=["a", "b"]))
    site = core.state.registry.site_names
    assert kept(core)[0] == {(site[(1, "a")], S.STAGED_IN): 1}
    core.run(core.state.pilot_gone(ra, 100, bye=True, now=core.now))
    core.dispatch()
    assert info(core, tid).site == "b"
    assert kept(core)[0] == {(site[(1, "b")], S.STAGED_IN): 1}


def test_start_and_dispatch_latencies_are_observed_once_per_task() -> None:
    core = Core()
    sid = core.state.registry.site_names[(ALICE.user_id, "s")]
    times = core.state.times
    core.now = 1000.0
    (tid,) = core.submit(spec(max_retries=1))  # created and runnable at 1000
    rec = core.pilot(cores=2)
    core.now = 1000.5
    (a,) = core.dispatch()
    start = P.Report(task_id=tid, attempt=a.attempt, kind="started", time=1000.75)
    core.report(rec, start, rep(a, "error", exit_code=1))
    assert times.dispatch.cumulative(sid)[1:] == (1, 0.5)
    assert times.start.cumulative(sid)[1:] == (1, 0.75)
    # The retry is dispatched again, timed from when it was runnable again (its failure,
    # handled at 1000.5); its start is not a new submit -> start.
    core.now = 1002.0
    (b,) = core.dispatch()
    core.report(rec, P.Report(task_id=tid, attempt=b.attempt, kind="started", time=1003.0),
                seq=2)
    assert times.dispatch.cumulative(sid)[1:] == (2, 2.0)
    assert times.start.cumulative(sid)[1] == 1
    assert times.runnable_since == {}


def test_a_cancelled_queued_task_leaves_no_stamp_and_the_stamps_are_bounded() -> None:
    core = Core()
    (tid,) = core.submit(spec())
    assert tid in core.state.times.runnable_since
    core.run(requests.cancel(core.state, ALICE, CLIENT, P.Cancel(req_id=3, ids=[tid]),
                             Stored(), core.now))
    assert core.state.times.runnable_since == {}

    times = TaskTimes(max_timed=2)
    for i in range(5):
        times.runnable(i, 10.0 + i)
    times.runnable(0, 99.0)  # a task already stamped keeps its stamp
    assert times.runnable_since == {0: 10.0, 1: 11.0}
    for i in range(5):
        times.dispatched(i, 7, 20.0)
    assert times.dispatch.cumulative(7)[1:] == (2, 19.0)  # only the two timed ones


def test_a_clock_skewed_start_counts_as_zero() -> None:
    times = TaskTimes()
    times.started(3, created_at=100.0, started_at=99.9)
    assert times.start.cumulative(3)[1:] == (1, 0.0)


@pytest.mark.parametrize(("value", "bucket"), [
    (0.0, 0.001), (0.001, 0.001), (0.0011, 0.0025), (3600.0, 3600.0), (1e9, float("inf"))])
def test_a_value_falls_in_the_first_bucket_whose_bound_is_not_below_it(
    value: float, bucket: float
) -> None:
    h = SiteHistogram()
    h.observe(1, value)
    buckets, count, total = h.cumulative(1)
    assert (count, total) == (1, value)
    first = next(bound for bound, n in buckets if n == 1)
    assert first == bucket
    assert [b for b, _ in buckets] == [*LATENCY_BUCKETS, float("inf")]
    assert h.cumulative(2) == ([(b, 0.0) for b, _ in buckets], 0.0, 0.0)


def test_bucket_bounds_must_increase() -> None:
    with pytest.raises(ValueError, match="increase strictly"):
        SiteHistogram((1.0, 1.0, 2.0))
