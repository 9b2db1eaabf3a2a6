"""Routing policies on recorded site states: pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidewater.controller.health import DEGRADED, DOWN, UP
from tidewater.controller.routing import (
    DEFAULT_QUEUE_WAIT,
    Measures,
    Need,
    SiteState,
    choose,
    earliest_start,
    queue_wait,
    round_robin,
    shortest_backlog,
)
from tidewater.errors import InvalidRequest

NOW = 1000.0


def site(name: str, **kw: object) -> SiteState:
    return SiteState(name=name, health=kw.pop("health", UP), **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- earliest-start

def test_idle_site_beats_faster_site_with_long_queue_wait() -> None:
    idle = site("slow", cores=8, free_cores=8, run_time=120.0)
    fast = site("fast", cores=0, can_grow=True, run_time=10.0, queue_wait=3600.0)
    r = earliest_start([fast, idle], Need(), NOW)
    assert r.chosen == "slow"
    est = {e.site: e for e in r.candidates}
    assert est["slow"].start == 0 and est["slow"].finish == 120.0
    assert est["fast"].start == 3600.0 and est["fast"].finish == 3610.0


def test_faster_site_wins_when_both_have_free_cores() -> None:
    r = earliest_start([site("slow", cores=8, free_cores=8, run_time=120.0),
                        site("fast", cores=8, free_cores=8, run_time=10.0)], Need(), NOW)
    assert r.chosen == "fast"


def test_no_pilots_and_no_autoscaler_loses_to_any_live_one() -> None:
    # The live site is badly backed up and slow; the other could never start the task.
    live = site("busy", health=DEGRADED, cores=1, free_cores=0, queued_tasks=500,
                queued_cores=500, run_time=600.0)
    dead_end = site("aaa-empty", cores=0, can_grow=False, run_time=1.0)
    for policy in ("earliest-start",):
        r, _ = choose(policy, [dead_end, live], Need(), NOW)
        assert r.chosen == "busy"
        est = {e.site: e for e in r.candidates}
        assert est["aaa-empty"].start is None and "no pilot and no agent" in est["aaa-empty"].note


def test_a_down_site_is_never_chosen() -> None:
    down = site("aaa", health=DOWN, run_time=0.001)
    up = site("zzz", cores=1, free_cores=0, queued_tasks=100, queued_cores=100)
    for policy in ("earliest-start", "shortest-backlog", "round-robin"):
        for cursor in range(4):
            r, _ = choose(policy, [down, up], Need(), NOW, cursor)
            assert r.chosen == "zzz", (policy, cursor)


def test_every_candidate_down_takes_the_first_and_says_so() -> None:
    r = earliest_start([site("b", health=DOWN), site("a", health=DOWN)], Need(), NOW)
    assert r.chosen == "a" and r.reason == "every candidate is down"


def test_transfer_time_moves_large_input_task_to_the_site_holding_its_data() -> None:
    # Without data to move, "fast" wins by a little.
    fast = site("fast", cores=4, free_cores=4, run_time=30.0, transfer_rate=10e6)
    home = site("home", cores=4, free_cores=4, run_time=60.0, transfer_rate=10e6)
    assert earliest_start([fast, home], Need(), NOW).chosen == "fast"
    # 10 GB already at "home": moving it to "fast" costs 1,000 s.
    need = Need(input_bytes=10_000_000_000, held={"home": 10_000_000_000})
    r = earliest_start([fast, home], need, NOW)
    assert r.chosen == "home"
    est = {e.site: e for e in r.candidates}
    assert est["fast"].transfer == pytest.approx(1000.0) and est["home"].transfer == 0


def test_unknown_queue_wait_assumes_the_default() -> None:
    r = earliest_start([site("a", can_grow=True)], Need(wall_time=5.0), NOW)
    assert r.candidates[0].start == DEFAULT_QUEUE_WAIT
    assert r.candidates[0].finish == DEFAULT_QUEUE_WAIT + 5.0


def test_backlog_on_connected_pilots_delays_the_start() -> None:
    r = earliest_start([site("a", cores=4, free_cores=0, queued_cores=8, run_time=10.0)],
                       Need(cores=4), NOW)
    # 12 cores short of 4 cores: three rounds of 10 s.
    assert r.candidates[0].start == pytest.approx(30.0)


# ---------------------------------------------------------------- other policies

def test_round_robin_cycles_by_name_and_returns_its_cursor() -> None:
    sites = [site("c"), site("a"), site("b")]
    cursor, picks = 0, []
    for _ in range(6):
        r, cursor = round_robin(sites, Need(), NOW, cursor)
        picks.append(r.chosen)
    assert picks == ["a", "b", "c", "a", "b", "c"] and cursor == 6


def test_shortest_backlog_picks_the_least_loaded_per_core() -> None:
    sites = [site("big", cores=64, queued_tasks=100, running_tasks=60),   # 2.5 per core
             site("small", cores=4, queued_tasks=4, running_tasks=4),     # 2 per core
             site("tiny", cores=1, queued_tasks=3)]                        # 3 per core
    r = shortest_backlog(sites, Need(), NOW)
    assert r.chosen == "small"
    # What it divided by is recorded, so the choice can be checked from the route alone.
    assert {(e.site, e.backlog, e.cores) for e in r.candidates} == {
        ("big", 160, 64), ("small", 8, 4), ("tiny", 3, 1)}
    tie = [site("b", cores=2, queued_tasks=2), site("a", cores=1, queued_tasks=1)]
    assert shortest_backlog(tie, Need(), NOW).chosen == "a"


def test_unknown_policy_and_no_candidates_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="unknown routing policy 'fastest'"):
        choose("fastest", [site("a")], Need(), NOW)
    with pytest.raises(InvalidRequest, match="no candidate site"):
        choose("earliest-start", [], Need(), NOW)


def test_routing_is_deterministic_given_states_and_now() -> None:
    sites = [site("a", cores=2, free_cores=1, run_time=3.0), site("b", can_grow=True)]
    assert earliest_start(sites, Need(), NOW) == earliest_start(list(reversed(sites)), Need(), NOW)


def test_measured_means() -> None:
    m = Measures()
    m.ran(1, "x", 10.0)
    m.ran(1, "x", 20.0)
    assert m.run[(1, "x")] == pytest.approx(13.0)
    assert queue_wait([]) is None
    assert queue_wait([100.0, 200.0]) == pytest.approx(130.0)


_states = st.builds(
    SiteState, name=st.sampled_from("abcdef"), health=st.sampled_from([UP, DEGRADED, DOWN]),
    cores=st.integers(0, 64), free_cores=st.integers(0, 64), queued_tasks=st.integers(0, 99),
    queued_cores=st.integers(0, 99), running_tasks=st.integers(0, 99),
    run_time=st.none() | st.floats(0.001, 1e5), queue_wait=st.none() | st.floats(0, 1e5),
    can_grow=st.booleans(), transfer_rate=st.none() | st.floats(1.0, 1e10))


@given(st.lists(_states, min_size=1, max_size=6, unique_by=lambda s: s.name),
       st.sampled_from(["earliest-start", "shortest-backlog", "round-robin"]),
       st.integers(0, 20), st.integers(0, 10**10))
def test_property_a_candidate_is_chosen_never_a_down_one_unless_all_are(
        sites: list[SiteState], policy: str, cursor: int, size: int) -> None:
    r, _ = choose(policy, sites, Need(input_bytes=size, held={"a": size}), NOW, cursor)
    by_name = {s.name: s for s in sites}
    assert r.chosen in by_name
    assert {e.site for e in r.candidates} == set(by_name)
    if any(s.health != DOWN for s in sites):
        assert by_name[r.chosen].health != DOWN
    if policy == "earliest-start":
        finish = {e.site: e.finish for e in r.candidates}
        finite = [f for n, f in finish.items() if by_name[n].health != DOWN and f is not None]
        if finite:
            best = finish[r.chosen]
            assert best is not None and best <= min(finite)
