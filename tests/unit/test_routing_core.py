"""Routing through the controller's core: a routed submit, its record, and re-routing."""

from __future__ import annotations

from typing import Any

import pytest

from tidewater import proto as P
from tidewater.controller import admin
from tidewater.controller.store.base import Op
from tidewater.errors import InvalidRequest, NotFound

from .test_tasks import ALICE, CLIENT, PILOT, Core, rep

OTHER_PILOT = 7


def core_with_sites(*names: str, app_on: tuple[str, ...] | None = None) -> Core:
    core = Core()
    for i, name in enumerate(names):
        core.run(admin.add_site(core.state, ALICE, CLIENT, P.AddSite(req_id=10 + i, name=name),
                                core.now))
        if app_on is None or name in app_on:
            core.run(admin.add_app(core.state, ALICE, CLIENT, P.AddApp(
                req_id=20 + i, site=name, name="t", command="/bin/true"), core.now))
    core.take(CLIENT, P.Msg)
    return core


def pilot(core: Core, site: str, pilot_id: str, peer: int, cores: int = 4) -> Any:
    rec, fx = core.state.pilot_hello(
        ALICE, peer, P.Hello(role="pilot", proto_version=1, token="", site=site,
                             pilot_id=pilot_id, cores=cores, credit_cores=cores),
        P.Welcome(proto_version=1, server_id="x"), core.now)
    core.run(fx)
    return rec


def routed(**kw: Any) -> P.TaskSpec:
    return P.TaskSpec(app="t", site="any", **kw)


def info(core: Core, tid: int) -> P.TaskInfo:
    return core.state.info(core.state.tasks.live[tid])


def test_a_routed_submit_records_its_route_and_runs_on_the_chosen_site() -> None:
    core = core_with_sites("a", "b")
    pilot(core, "b", "pb", PILOT)  # only b has a pilot; a and s are down
    (tid,) = core.submit(routed(sites=["a", "b"]))
    i = info(core, tid)
    assert i.site == "b"
    (route,) = i.routes
    assert route.policy == "earliest-start" and route.chosen == "b"
    est = {e.site: e for e in route.candidates}
    assert set(est) == {"a", "b"}
    assert est["a"].health == "down" and est["a"].start is None
    assert est["b"].start == 0 and est["b"].finish == 60.0
    # The route is stored with the task (read back from its row).
    (row,) = [p for op, p in core.writes if op == Op.INSERT_TASK and p[0] == tid]
    assert '"routes"' in row[26]
    (a,) = core.dispatch()
    assert a.task_id == tid


def test_any_means_every_site_of_yours_with_the_app() -> None:
    core = core_with_sites("a", "b", "c", app_on=("a", "b"))
    for k, name in enumerate(("a", "b", "c")):
        pilot(core, name, f"p{name}", 100 + k)
    ids = core.submit(*[routed(policy="round-robin") for _ in range(4)])
    sites = [info(core, t).site for t in ids]
    # "s" (Core's own site) has the app too, but is down (nothing connected): skipped.
    assert sites == ["a", "b", "a", "b"]
    assert {e.site for e in info(core, ids[0]).routes[0].candidates} == {"a", "b", "s"}


def test_a_batch_to_any_spreads_by_earliest_start() -> None:
    core = core_with_sites("a", "b")
    pilot(core, "a", "pa", 100, cores=2)
    pilot(core, "b", "pb", 101, cores=2)
    ids = core.submit(*[routed(sites=["a", "b"]) for _ in range(4)])
    sites = sorted(info(core, t).site for t in ids)
    assert sites == ["a", "a", "b", "b"]


def test_routing_refusals_name_what_is_wrong() -> None:
    core = core_with_sites("a", "b", app_on=("a",))
    with pytest.raises(InvalidRequest, match="unknown routing policy 'fastest'"):
        core.submit(routed(policy="fastest"))
    # One named site leaves nothing to choose, but a misspelt policy is still refused.
    with pytest.raises(InvalidRequest, match="unknown routing policy 'fastest'"):
        core.submit(P.TaskSpec(app="t", site="a", policy="fastest"))
    with pytest.raises(InvalidRequest, match="site 'b' has no app 't'"):
        core.submit(routed(sites=["a", "b"]))
    with pytest.raises(NotFound, match="no site named 'zz'"):
        core.submit(routed(sites=["a", "zz"]))
    with pytest.raises(InvalidRequest, match="no site of yours has an app 'nope'"):
        core.submit(P.TaskSpec(app="nope", site="any"))
    assert not core.state.tasks.live


def test_a_task_routed_to_a_site_that_goes_down_before_it_starts_is_routed_again() -> None:
    core = core_with_sites("a", "b")
    ra = pilot(core, "a", "pa", 100, cores=8)
    pilot(core, "b", "pb", 101, cores=1)
    # Both have free cores: a, first by name ...
    (tid,) = core.submit(routed(sites=["a", "b"]))
    assert info(core, tid).site == "a"
    # ... and a goes away before the task is sent (no dispatch in between).
    core.run(core.state.pilot_gone(ra, 100, bye=True, now=core.now))
    core.dispatch()
    i = info(core, tid)
    assert i.site == "b"
    assert [r.chosen for r in i.routes] == ["a", "b"]
    assert i.routes[1].reason == "site a went down"
    assert any(op == Op.REROUTE_TASK and p[2] == tid for op, p in core.writes)
    # It runs on b's pilot.
    core.run(core.state.dispatch(core.now))
    runs = [m for m in core.sent.get(101, []) if isinstance(m, P.RunTasks)]
    assert [a.task_id for m in runs for a in m.tasks] == [tid]


def test_a_started_routed_task_is_not_moved() -> None:
    core = core_with_sites("a", "b")
    ra = pilot(core, "a", "pa", PILOT, cores=8)
    pilot(core, "b", "pb", 101, cores=1)
    (tid,) = core.submit(routed(sites=["a", "b"]))
    (a,) = core.dispatch()
    core.report(ra, rep(a, "started"))
    core.run(core.state.pilot_gone(ra, PILOT, bye=False, now=core.now))
    core.dispatch()
    assert [r.chosen for r in info(core, tid).routes] == ["a"]


def test_finished_tasks_feed_the_measured_run_time() -> None:
    core = core_with_sites("a")
    ra = pilot(core, "a", "pa", PILOT)
    (tid,) = core.submit(routed(sites=["a"]))
    (a,) = core.dispatch()
    core.report(ra, P.Report(task_id=tid, attempt=1, kind="started", time=1000.0),
                P.Report(task_id=tid, attempt=1, kind="done", time=1042.0, exit_code=0))
    sid = core.state.registry.site_names[(ALICE.user_id, "a")]
    assert core.state.measures.run[(sid, "t")] == pytest.approx(42.0)
    assert not core.state.routed
    (t2,) = core.submit(routed(sites=["a"]))
    assert info(core, t2).routes[0].candidates[0].run == pytest.approx(42.0)


def test_stage_ins_feed_the_measured_transfer_rate() -> None:
    core = core_with_sites("a")
    sid = core.state.registry.site_names[(ALICE.user_id, "a")]
    core.state.jobs.agents[sid] = 50  # the site's agent is connected as peer 50
    (tid,) = core.submit(routed(sites=["a"], inputs=[P.Input(path="x", url="file:///d/x")]))
    assert core.take(50, P.StageWork)  # the agent was asked to bring the input
    core.now += 10.0
    core.run(core.state.staged(sid, 50, P.Staged(seq=1, results=[P.StageResult(
        task_id=tid, direction="in", items=[P.ItemResult(path="x", ok=True, size=10**9)])]),
        core.now))
    assert core.state.measures.rate[sid] == pytest.approx(1e8)
    assert core.state.site_state(sid, "t", core.now).transfer_rate == pytest.approx(1e8)
    assert not core.state.measures.staging_since


def test_a_task_waiting_on_a_down_site_moves_when_another_candidate_comes_up() -> None:
    core = core_with_sites("a", "b")
    (tid,) = core.submit(routed(sites=["a", "b"]))  # both down: the first, and it says so
    assert info(core, tid).site == "a"
    assert info(core, tid).routes[0].reason == "every candidate is down"
    core.dispatch()
    assert len(info(core, tid).routes) == 1  # nowhere better to go
    pilot(core, "b", "pb", 101)
    core.run(core.state.dispatch(core.now))  # routed again, queued on b after the commit
    i = info(core, tid)
    assert i.site == "b" and [r.chosen for r in i.routes] == ["a", "b"]
    core.run(core.state.dispatch(core.now))  # the round the commit's wake-up asks for
    runs = [m for m in core.sent.get(101, []) if isinstance(m, P.RunTasks)]
    assert [a.task_id for m in runs for a in m.tasks] == [tid]
