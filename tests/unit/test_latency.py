"""Latency accounting: phases from recorded event lists, and the reports."""

from __future__ import annotations

import pytest

from tidewater import proto as P
from tidewater.latency import latency_table, phases, route_label, throughput, utilization

# Recorded event lists as the controller writes them: (from, to, time).
PLAIN = [  # no staging, no parents: READY and STAGED_IN in the submitting commit
    ("CREATED", "READY", 100.0), ("READY", "STAGED_IN", 100.0),
    ("STAGED_IN", "RUNNING", 102.5),
    ("RUNNING", "RUN_DONE", 112.5), ("RUN_DONE", "STAGED_OUT", 112.5),
    ("STAGED_OUT", "JOB_FINISHED", 112.5),
]
STAGED = [  # inputs and outputs through the site agent
    ("CREATED", "READY", 0.0), ("READY", "STAGED_IN", 25.0),
    ("STAGED_IN", "RUNNING", 27.0), ("RUNNING", "RUN_DONE", 129.0),
    ("RUN_DONE", "STAGED_OUT", 139.0), ("STAGED_OUT", "JOB_FINISHED", 139.5),
]
RETRIED = [  # failed once, retried, then finished
    ("CREATED", "READY", 0.0), ("READY", "STAGED_IN", 0.0),
    ("STAGED_IN", "RUNNING", 1.0), ("RUNNING", "RUN_ERROR", 4.0),
    ("RUN_ERROR", "RESTART_READY", 4.0), ("RESTART_READY", "RUNNING", 6.0),
    ("RUNNING", "RUN_DONE", 16.0), ("RUN_DONE", "STAGED_OUT", 16.0),
    ("STAGED_OUT", "JOB_FINISHED", 16.0),
]
FAILED = [  # timed out on its only attempt
    ("CREATED", "READY", 0.0), ("READY", "STAGED_IN", 0.0),
    ("STAGED_IN", "RUNNING", 2.0), ("RUNNING", "RUN_TIMEOUT", 7.0),
    ("RUN_TIMEOUT", "FAILED", 7.0),
]
CHILD = [  # waited for a parent
    ("CREATED", "AWAITING_PARENTS", 0.0), ("AWAITING_PARENTS", "READY", 30.0),
    ("READY", "STAGED_IN", 30.0), ("STAGED_IN", "RUNNING", 31.0),
    ("RUNNING", "RUN_DONE", 33.0), ("RUN_DONE", "STAGED_OUT", 33.0),
    ("STAGED_OUT", "JOB_FINISHED", 33.0),
]


def test_plain_task_has_zero_staging_and_phases_sum_to_total() -> None:
    p = phases(PLAIN)
    assert (p.parents, p.stage_in, p.run_delay, p.run, p.stage_out, p.total) == (
        0.0, 0.0, 2.5, 10.0, 0.0, 12.5)
    assert p.attempts == 1
    assert p.created == 100.0
    assert p.ended == 112.5
    assert p.runs == ((102.5, 112.5),)


def test_staged_task_matches_the_papers_columns() -> None:
    p = phases(STAGED)
    assert (p.stage_in, p.run_delay, p.run, p.stage_out, p.total) == (
        25.0, 2.0, 102.0, 10.5, 139.5)


def test_retry_counts_the_last_run_and_the_whole_wait() -> None:
    p = phases(RETRIED)
    assert p.attempts == 2
    assert p.run == 10.0  # the last attempt
    assert p.run_delay == 6.0  # staged in at 0, last attempt started at 6
    assert p.runs == ((1.0, 4.0), (6.0, 16.0))
    assert p.total == 16.0
    parts = [p.parents, p.stage_in, p.run_delay, p.run, p.stage_out]
    assert sum(x or 0.0 for x in parts) == p.total


def test_failed_task_has_its_run_but_no_stage_out() -> None:
    p = phases(FAILED)
    assert p.run == 5.0
    assert p.stage_out is None
    assert p.total == 7.0
    assert p.ended == 7.0


def test_parents_wait_is_its_own_phase() -> None:
    p = phases(CHILD)
    assert (p.parents, p.stage_in, p.run_delay, p.run, p.total) == (30.0, 0.0, 1.0, 2.0, 33.0)


def test_killed_before_running_and_still_running() -> None:
    killed = phases([("CREATED", "READY", 0.0), ("READY", "STAGED_IN", 0.0),
                     ("STAGED_IN", "KILLED", 3.0)])
    assert (killed.run_delay, killed.run, killed.stage_out, killed.total) == (
        None, None, None, 3.0)
    assert killed.attempts == 0
    running = phases(PLAIN[:3])
    assert running.run is None
    assert running.total is None
    assert running.ended is None
    assert running.runs == ((102.5, None),)
    killed_running = phases([*PLAIN[:3], ("RUNNING", "KILLED", 110.0)])
    assert killed_running.run == 7.5
    assert killed_running.runs == ((102.5, 110.0),)


def test_no_events_and_unknown_states() -> None:
    p = phases([])
    assert p.total is None
    assert p.attempts == 0
    with pytest.raises(ValueError, match="NOPE"):
        phases([("CREATED", "NOPE", 0.0)])


def _row(tid: int, site: str, events: list[tuple[str, str, float]], *,
         tags: dict[str, str] | None = None, cores: int = 1) -> P.TaskPhases:
    p = phases(events)
    final = events[-1][1] if p.ended is not None else "RUNNING"
    return P.TaskPhases(id=tid, site=site, app="a", state=final, tags=tags or {}, cores=cores,
                        stage_in=p.stage_in, run_delay=p.run_delay, run=p.run,
                        stage_out=p.stage_out, total=p.total, attempts=p.attempts,
                        ended=p.ended, runs=list(p.runs))


def _shift(events: list[tuple[str, str, float]], by: float, scale: float = 1.0
           ) -> list[tuple[str, str, float]]:
    t0 = events[0][2]
    return [(a, b, by + (t - t0) * scale) for a, b, t in events]


def test_latency_table_medians_per_site_and_tag() -> None:
    rows = [
        _row(1, "theta", STAGED, tags={"instrument": "aps"}),
        _row(2, "theta", _shift(STAGED, 0.0, 2.0), tags={"instrument": "aps"}),
        _row(3, "theta", _shift(STAGED, 0.0, 4.0), tags={"instrument": "aps"}),
        _row(4, "cori", PLAIN, tags={"instrument": "als"}),
        _row(5, "cori", FAILED, tags={"instrument": "als"}),  # not finished: left out
        _row(6, "cori", PLAIN),  # no instrument tag
    ]
    table = latency_table(rows)
    assert [(r.site, r.tasks) for r in table] == [("cori", 2), ("theta", 3)]
    theta = table[1]
    assert (theta.stage_in, theta.run_delay, theta.run, theta.stage_out, theta.total) == (
        50.0, 4.0, 204.0, 21.0, 279.0)
    by = latency_table(rows, by_tag="instrument")
    assert [(r.site, r.tag, r.tasks) for r in by] == [
        ("cori", "", 1), ("cori", "als", 1), ("theta", "aps", 3)]
    assert [route_label(r, "instrument") for r in by] == [
        "(none)→cori", "als→cori", "aps→theta"]
    everything = latency_table(rows, finished_only=False)
    assert everything[0].tasks == 3
    assert latency_table([]) == []


def test_throughput_bins_cumulative_and_per_bin() -> None:
    ends = [10.0, 11.0, 25.0, 31.0]
    rows = [_row(i, "theta", _shift(PLAIN, e - 12.5)) for i, e in enumerate(ends)]
    rows.append(_row(9, "cori", _shift(PLAIN, 20.0 - 12.5)))
    rows.append(_row(10, "cori", FAILED))  # failed tasks are not throughput
    cum = throughput(rows, bin_seconds=10.0)
    assert cum["theta"] == [(10.0, 0.0), (20.0, 2.0), (30.0, 3.0), (40.0, 4.0)]
    assert cum["cori"] == [(10.0, 0.0), (20.0, 0.0), (30.0, 1.0), (40.0, 1.0)]
    per_bin = throughput(rows, bin_seconds=10.0, cumulative=False)
    assert per_bin["theta"] == [(10.0, 0.0), (20.0, 2.0), (30.0, 1.0), (40.0, 1.0)]
    assert throughput([]) == {}
    with pytest.raises(ValueError, match="positive"):
        throughput(rows, bin_seconds=0)


def test_utilization_averages_busy_cores_over_each_bin() -> None:
    a = _row(1, "theta", [("CREATED", "READY", 0.0), ("READY", "STAGED_IN", 0.0),
                          ("STAGED_IN", "RUNNING", 0.0), ("RUNNING", "RUN_DONE", 15.0),
                          ("RUN_DONE", "STAGED_OUT", 15.0), ("STAGED_OUT", "JOB_FINISHED", 15.0)],
             cores=4)
    b = _row(2, "theta", RETRIED)  # runs 1-4 and 6-16
    c = _row(3, "cori", PLAIN[:3])  # still running since 102.5
    cores = utilization([a, b], now=20.0, bin_seconds=10.0)
    # [0,10): 4 cores * 10 s + 1 core * (3 + 4) s = 47 core-seconds; [10,20): 4*5 + 6
    assert cores["theta"] == [(0.0, 4.7), (10.0, 2.6)]
    tasks = utilization([a, b], now=20.0, bin_seconds=10.0, unit="tasks")
    assert tasks["theta"] == [(0.0, 1.7), (10.0, pytest.approx(1.1))]
    frac = utilization([a, b], now=20.0, bin_seconds=10.0, capacity={"theta": 8.0})
    assert frac["theta"][0] == (0.0, pytest.approx(4.7 / 8))
    open_ = utilization([c], now=122.5, bin_seconds=10.0, unit="tasks")
    assert open_["cori"] == [(102.5, 1.0), (112.5, 1.0)]
    assert utilization([], now=0.0) == {}
    with pytest.raises(ValueError, match="unit"):
        utilization([a], now=0.0, unit="gpus")


def test_the_controller_answers_phases_a_frame_at_a_time() -> None:
    from tidewater.config import Limits
    from tidewater.controller import requests
    from tidewater.controller.effects import Send

    from .test_tasks import CLIENT, Core

    core = Core()
    ids = core.submit(*[P.TaskSpec(app="t", site="s", tags={"k": "v" * 600}) for _ in range(8)])
    rows = [core.state.tasks.live[i] for i in ids]
    events = {i: PLAIN for i in ids}
    msg = P.ListPhases(req_id=4, limit=100)

    def reply(limit: int) -> P.PhaseList:
        fx = requests.phases_reply(core.state, CLIENT, msg, rows[:limit], events, limit)
        (out,) = [o.msg for o in fx.out if isinstance(o, Send) and isinstance(o.msg, P.PhaseList)]
        return out

    whole = reply(100)
    assert [t.id for t in whole.tasks] == ids and not whole.more
    first = whole.tasks[0]
    assert (first.site, first.app, first.state, first.run, first.total) == (
        "s", "t", "STAGED_IN", 10.0, 12.5)
    assert reply(8).more  # the limit was reached: there may be more
    core.state.limits = Limits(max_frame_bytes=4096)  # two tasks' tags fill half a frame
    part = reply(100)
    assert part.more and 1 <= len(part.tasks) < len(ids)


def test_phases_in_a_creation_window_and_where_to_continue() -> None:
    from tidewater.controller import requests
    from tidewater.controller.effects import Send

    from .test_tasks import CLIENT, Core

    core = Core()
    ids = []
    for when in (10.0, 20.0, 30.0, 40.0):
        core.now = when
        ids += core.submit(P.TaskSpec(app="t", site="s"))
    rows = [core.state.tasks.live[i] for i in ids]

    def reply(msg: P.ListPhases, limit: int) -> P.PhaseList:
        events = {t.id: PLAIN for t in requests.phases_window(msg, rows[:limit])}
        fx = requests.phases_reply(core.state, CLIENT, msg, rows[:limit], events, limit)
        (out,) = [o.msg for o in fx.out if isinstance(o, Send) and isinstance(o.msg, P.PhaseList)]
        return out

    window = reply(P.ListPhases(req_id=1, since=15.0, until=35.0), 100)
    assert [t.id for t in window.tasks] == ids[1:3]
    assert not window.more
    # A full page whose tasks all fall before the window: nothing sent, continue after it.
    early = reply(P.ListPhases(req_id=1, since=35.0), 2)
    assert early.tasks == [] and early.more and early.next_after == ids[1]
    # A page that reaches past ``until`` ends the listing.
    ended = reply(P.ListPhases(req_id=1, until=25.0), 3)
    assert [t.id for t in ended.tasks] == ids[:2] and not ended.more
