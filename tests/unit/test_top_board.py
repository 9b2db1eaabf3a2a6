"""``tidewater top``'s board: refreshes, pushed events on top of them, the last minute. Pure."""

from __future__ import annotations

from tidewater import proto as P
from tidewater.cli_top import SEED_LIMIT, Board


def ev(i: int, task: int, src: str, dst: str, t: float = 100.0) -> P.TaskEvent:
    return P.TaskEvent(id=i, task_id=task, from_state=src, to_state=dst, time=t)


def counts(**by_site: dict[str, int]) -> P.TaskCounts:
    by_state: dict[str, int] = {}
    for states in by_site.values():
        for k, v in states.items():
            by_state[k] = by_state.get(k, 0) + v
    return P.TaskCounts(by_state=by_state, by_site=by_site)


def test_events_move_counts_and_those_the_refresh_counted_are_not_applied_twice() -> None:
    b = Board()
    b.refresh(counts(a={"STAGED_IN": 2}), [P.SiteInfo(name="a", created_at=0)], [], mark=10,
              now=100.0)
    b.apply("a", ev(9, 1, "READY", "STAGED_IN"))  # already in the counts
    b.apply("a", ev(11, 1, "STAGED_IN", "RUNNING"))
    b.apply("a", ev(12, 3, "CREATED", "READY"))  # a new task
    b.apply("b", ev(13, 4, "CREATED", "READY"))  # a site the last refresh did not have
    snap = b.snapshot(100.0)
    assert snap["tasks"] == {"total": 4, "by_state": {"READY": 2, "STAGED_IN": 1,
                                                      "RUNNING": 1}}
    assert [(s["name"], s["tasks"]) for s in snap["sites"]] == [
        ("a", {"READY": 1, "STAGED_IN": 1, "RUNNING": 1}), ("b", {"READY": 1})]
    assert snap["events"] == 3
    # The next refresh replaces everything the events built.
    b.refresh(counts(a={"JOB_FINISHED": 3}), [], [], mark=13, now=105.0)
    assert b.snapshot(105.0)["tasks"] == {"total": 3, "by_state": {"JOB_FINISHED": 3}}


def test_a_count_never_goes_below_zero() -> None:
    b = Board()
    b.apply("a", ev(1, 1, "RUNNING", "RUN_DONE"))  # its RUNNING was never counted
    assert b.snapshot(0.0)["tasks"]["by_state"] == {"RUN_DONE": 1}


def test_the_last_minute_counts_each_ended_task_once_and_forgets_older_ones() -> None:
    b = Board()
    seeded = [P.TaskInfo(id=1, app="x", site="a", state="JOB_FINISHED", finished_at=50.0),
              P.TaskInfo(id=2, app="x", site="a", state="FAILED", finished_at=95.0),
              P.TaskInfo(id=3, app="x", site="a", state="RUNNING")]
    b.seed(seeded)
    b.apply("a", ev(5, 2, "RUN_ERROR", "FAILED", t=95.0))  # the seed had it already
    b.apply("a", ev(6, 7, "STAGED_OUT", "JOB_FINISHED", t=100.0))
    b.apply("b", ev(7, 8, "RUNNING", "KILLED", t=101.0))
    lm = b.snapshot(105.0)["last_minute"]
    assert lm["ended"] == {"JOB_FINISHED": 2, "FAILED": 1, "KILLED": 1}
    assert lm["at_least"] is False
    lm = b.snapshot(156.0)["last_minute"]  # task 1 (at 50) and 2 (at 95) are out
    assert lm["ended"] == {"JOB_FINISHED": 1, "KILLED": 1}
    assert lm["finished_per_second"] == 1 / 60
    b.seed([P.TaskInfo(id=i, app="x", site="a", state="FAILED", finished_at=150.0)
            for i in range(SEED_LIMIT)])
    assert b.snapshot(156.0)["last_minute"]["at_least"] is True


def test_site_capacity_and_jobs_come_from_the_refresh() -> None:
    b = Board()
    site = P.SiteInfo(name="a", created_at=0, pilots=2, cores=6, health="up", pilot_list=[
        P.PilotInfo(pilot_id="p1", cores=4, connected=True, running=3),
        P.PilotInfo(pilot_id="p2", cores=2, connected=True, running=0, draining=True),
        P.PilotInfo(pilot_id="p3", cores=8, connected=False)])
    jobs = [P.BatchJobInfo(id=i, site="a", state=s, nodes=1, wall_time_min=5)
            for i, s in enumerate(["queued", "running", "queued"])]
    b.refresh(counts(), [site], jobs, mark=0, now=0.0)
    (s,) = b.snapshot(0.0)["sites"]
    assert (s["pilots"], s["pilots_held"], s["busy"], s["free"]) == (2, 3, 3, 1)
    assert s["jobs"] == {"queued": 2, "running": 1}
