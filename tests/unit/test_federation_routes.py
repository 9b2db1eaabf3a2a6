"""The routing rules the federation example checks each recorded route against."""

from __future__ import annotations

from tidewater.examples.federation import route_problems
from tidewater.proto import Route, RouteEstimate


def est(site: str, *, finish: float | None = 1.0, backlog: int = 0, cores: int = 1,
        health: str = "up") -> RouteEstimate:
    return RouteEstimate(site=site, health=health, start=0.0, finish=finish, backlog=backlog,
                         cores=cores)


def route(policy: str, chosen: str, *cands: RouteEstimate) -> Route:
    return Route(policy=policy, chosen=chosen, time=0.0, candidates=list(cands))


def test_earliest_start_must_take_the_soonest_finish_of_the_sites_not_down() -> None:
    ok = route("earliest-start", "b", est("a", finish=5.0), est("b", finish=2.0),
               est("c", finish=None, health="down"))
    assert route_problems("earliest-start", [(1, ok)]) == []
    bad = route("earliest-start", "a", est("a", finish=5.0), est("b", finish=2.0))
    assert route_problems("earliest-start", [(2, bad)]) == [
        "task 2 went to a (est. finish 5 s) though another finished at 2 s"]
    down = route("earliest-start", "a", est("a", finish=5.0), est("b", finish=None))
    assert route_problems("earliest-start", [(3, down)]) == []  # no finish: never


def test_shortest_backlog_divides_by_connected_cores_at_least_one() -> None:
    ok = route("shortest-backlog", "big", est("big", backlog=4, cores=4),
               est("none", backlog=2, cores=0))
    assert route_problems("shortest-backlog", [(1, ok)]) == []
    bad = route("shortest-backlog", "none", est("big", backlog=4, cores=4),
                est("none", backlog=2, cores=0))
    assert route_problems("shortest-backlog", [(2, bad)]) == [
        "task 2 went to none (2 tasks per core) though another had 1"]


def test_round_robin_cycles_the_candidates_by_name_in_task_order() -> None:
    cands = (est("a"), est("b"), est("c"))
    cycle = [(i, route("round-robin", "abc"[(i + 1) % 3], *cands)) for i in range(7)]
    assert route_problems("round-robin", list(reversed(cycle))) == []  # sorted by task id
    skipped = [(1, route("round-robin", "a", *cands)), (2, route("round-robin", "c", *cands))]
    assert route_problems("round-robin", skipped) == [
        "task 2 went to c after a; round-robin over ['a', 'b', 'c'] gives b"]
    other = [(5, route("earliest-start", "a", *cands))]
    assert route_problems("round-robin", other) == [
        "task 5 was routed by earliest-start, not round-robin"]
