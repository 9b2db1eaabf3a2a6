"""The dispatcher: queued tasks meet pilot credit, never more than granted."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from tidewater.controller.dispatch import SCAN_LIMIT, Dispatcher, PilotSlot, Queued


def task(task_id: int, *, site: int = 1, priority: int = 0, cores: int = 1, gpus: int = 0) -> Queued:
    return Queued(task_id=task_id, site_id=site, priority=priority, cores=cores, gpus=gpus)


def dispatcher_with_pilot(
    *, cores: int = 8, gpus: int = 0, credit: int = 0, credit_gpus: int = 0, site: int = 1,
    pilot_id: str = "p1",
) -> Dispatcher:
    d = Dispatcher()
    d.add_pilot(PilotSlot(pilot_id=pilot_id, site_id=site, cores=cores, gpus=gpus))
    d.grant(pilot_id, credit, credit_gpus)
    return d


def matched_ids(pairs: list[tuple[str, int]]) -> list[int]:
    return [t for _, t in pairs]


# --------------------------------------------------------------------------- order


def test_highest_priority_first() -> None:
    d = dispatcher_with_pilot(credit=1)
    d.push(task(1, priority=0))
    d.push(task(2, priority=5))
    d.push(task(3, priority=1))
    d.push(task(4, priority=-3))
    order = []
    for _ in range(4):
        got = d.match()
        assert len(got) == 1
        order.extend(matched_ids(got))
        d.grant("p1", 1, 0)
    assert order == [2, 3, 1, 4]
    assert d.queued() == 0


def test_fifo_by_task_id_within_a_priority() -> None:
    d = dispatcher_with_pilot(credit=4)
    for tid in (5, 3, 9, 4):  # pushed out of order
        d.push(task(tid, priority=2))
    assert matched_ids(d.match()) == [3, 4, 5, 9]


def test_one_match_returns_tasks_in_dispatch_order() -> None:
    d = dispatcher_with_pilot(credit=8)
    d.push(task(1, priority=0))
    d.push(task(2, priority=9))
    d.push(task(3, priority=0))
    d.push(task(4, priority=9))
    assert matched_ids(d.match()) == [2, 4, 1, 3]


# --------------------------------------------------------------------------- credit


def test_never_more_than_credit() -> None:
    d = dispatcher_with_pilot(credit=3)
    for tid in range(1, 11):
        d.push(task(tid))
    assert matched_ids(d.match()) == [1, 2, 3]
    assert d.match() == []  # credit used up
    assert d.queued() == 7
    slot = d.pilot("p1")
    assert slot is not None
    assert slot.credit_cores == 0


def test_credit_increments_add_up() -> None:
    d = dispatcher_with_pilot(credit=1)
    d.grant("p1", 2, 0)
    for tid in range(1, 6):
        d.push(task(tid))
    assert matched_ids(d.match()) == [1, 2, 3]


def test_task_too_big_for_credit_is_skipped_and_smaller_ones_go() -> None:
    d = dispatcher_with_pilot(cores=8, credit=4)
    d.push(task(1, priority=10, cores=8))
    d.push(task(2, priority=0, cores=2))
    d.push(task(3, priority=0, cores=2))
    d.push(task(4, priority=0, cores=2))
    assert matched_ids(d.match()) == [2, 3]
    assert 1 in d
    assert 4 in d
    # Once enough credit is back, the big high-priority task goes first.
    d.grant("p1", 8, 0)
    assert matched_ids(d.match()) == [1]
    d.grant("p1", 2, 0)
    assert matched_ids(d.match()) == [4]


def test_task_larger_than_pilot_never_goes() -> None:
    d = dispatcher_with_pilot(cores=4, credit=100)
    d.push(task(1, cores=8))
    d.push(task(2, cores=4))
    assert matched_ids(d.match()) == [2]
    d.grant("p1", 100, 0)
    assert d.match() == []
    assert 1 in d


def test_pilot_with_zero_credit_gets_nothing() -> None:
    d = dispatcher_with_pilot(credit=0)
    d.push(task(1))
    assert d.match() == []
    d.grant("p1", 0, 0)
    assert d.match() == []
    d.grant("p1", -5, -5)  # negative grants are ignored, not debts
    assert d.match() == []
    d.grant("p1", 1, 0)
    assert d.match() == [("p1", 1)]


def test_zero_resource_task_does_not_go_to_zero_credit_pilot() -> None:
    d = dispatcher_with_pilot(credit=0)
    d.push(task(1, cores=0, gpus=0))
    assert d.match() == []


def test_negative_grant_does_not_reduce_credit() -> None:
    d = dispatcher_with_pilot(credit=2)
    d.grant("p1", -1, -1)
    d.push(task(1, cores=2))
    assert d.match() == [("p1", 1)]


def test_grant_to_unknown_pilot_is_ignored() -> None:
    d = Dispatcher()
    d.grant("ghost", 4, 1)
    d.push(task(1))
    assert d.match() == []
    assert d.pilot("ghost") is None


# --------------------------------------------------------------------------- gpus


def test_gpu_credit_respected() -> None:
    d = dispatcher_with_pilot(cores=8, gpus=2, credit=8, credit_gpus=1)
    d.push(task(1, priority=5, gpus=2))  # needs 2, only 1 granted
    d.push(task(2, priority=1, gpus=1))
    d.push(task(3, priority=0, gpus=1))  # no gpu credit left for this one
    d.push(task(4, priority=0, gpus=0))
    assert matched_ids(d.match()) == [2, 4]
    slot = d.pilot("p1")
    assert slot is not None
    assert (slot.credit_cores, slot.credit_gpus) == (6, 0)
    d.grant("p1", 0, 2)
    assert matched_ids(d.match()) == [1]


def test_gpu_task_never_goes_to_cpu_only_pilot() -> None:
    d = dispatcher_with_pilot(cores=8, gpus=0, credit=8, credit_gpus=4)
    d.push(task(1, gpus=1))
    assert d.match() == []
    assert 1 in d


def test_gpu_only_credit_serves_gpu_task_with_enough_cores() -> None:
    d = dispatcher_with_pilot(cores=4, gpus=1, credit=0, credit_gpus=1)
    d.push(task(1, cores=1, gpus=1))
    assert d.match() == []  # a core is needed too
    d.grant("p1", 1, 0)
    assert d.match() == [("p1", 1)]


# --------------------------------------------------------------------------- sites and pilots


def test_tasks_only_go_to_pilots_of_their_site() -> None:
    d = dispatcher_with_pilot(site=1, credit=8)
    d.push(task(1, site=2))
    d.push(task(2, site=1))
    assert d.match() == [("p1", 2)]
    assert d.queued(2) == 1
    d.add_pilot(PilotSlot(pilot_id="p2", site_id=2, cores=4, gpus=0))
    d.grant("p2", 4, 0)
    assert d.match() == [("p2", 1)]
    assert d.queued() == 0


def test_prefers_pilot_with_most_free_cores() -> None:
    d = Dispatcher()
    d.add_pilot(PilotSlot(pilot_id="small", site_id=1, cores=8, gpus=0))
    d.add_pilot(PilotSlot(pilot_id="big", site_id=1, cores=8, gpus=0))
    d.grant("small", 2, 0)
    d.grant("big", 6, 0)
    d.push(task(1, cores=1))
    assert d.match() == [("big", 1)]


def test_work_spreads_over_pilots_when_one_runs_out() -> None:
    d = Dispatcher()
    for pid in ("a", "b"):
        d.add_pilot(PilotSlot(pilot_id=pid, site_id=1, cores=2, gpus=0))
        d.grant(pid, 2, 0)
    for tid in range(1, 6):
        d.push(task(tid))
    got = d.match()
    assert len(got) == 4
    assert sorted(p for p, _ in got) == ["a", "a", "b", "b"]
    assert 5 in d


def test_remove_pilot() -> None:
    d = dispatcher_with_pilot(credit=4)
    d.remove_pilot("p1")
    assert d.pilot("p1") is None
    d.push(task(1))
    assert d.match() == []
    assert 1 in d
    d.remove_pilot("p1")  # removing twice is harmless
    d.remove_pilot("never-added")
    assert d.queued() == 1


def test_re_adding_a_pilot_replaces_its_credit() -> None:
    d = dispatcher_with_pilot(credit=4)
    d.add_pilot(PilotSlot(pilot_id="p1", site_id=1, cores=8, gpus=0, credit_cores=1))
    for tid in range(1, 4):
        d.push(task(tid))
    assert matched_ids(d.match()) == [1]


def test_pilot_moving_site_leaves_old_site() -> None:
    d = dispatcher_with_pilot(site=1, credit=4)
    d.add_pilot(PilotSlot(pilot_id="p1", site_id=2, cores=8, gpus=0, credit_cores=4))
    d.push(task(1, site=1))
    d.push(task(2, site=2))
    assert d.match() == [("p1", 2)]


# --------------------------------------------------------------------------- queue bookkeeping


def test_push_is_idempotent() -> None:
    d = dispatcher_with_pilot(credit=4)
    t = task(1)
    d.push(t)
    d.push(t)
    d.push(task(1, priority=99))  # same id: still the one queued task
    assert d.queued() == 1
    assert d.match() == [("p1", 1)]
    assert d.match() == []
    assert d.queued() == 0


def test_discard_removes_a_queued_task() -> None:
    d = dispatcher_with_pilot(credit=4)
    d.push(task(1))
    d.push(task(2))
    assert d.discard(1) is True
    assert 1 not in d
    assert d.discard(1) is False
    assert d.discard(12345) is False
    assert d.queued() == 1
    assert d.match() == [("p1", 2)]


def test_discarded_task_can_be_pushed_again() -> None:
    d = dispatcher_with_pilot(credit=4)
    d.push(task(1))
    d.discard(1)
    d.push(task(1))
    assert d.match() == [("p1", 1)]
    assert d.match() == []


def test_re_pushed_task_takes_its_new_priority() -> None:
    d = dispatcher_with_pilot(credit=1)
    d.push(task(1, priority=10))
    d.discard(1)
    d.push(task(1, priority=0))
    d.push(task(2, priority=5))
    assert matched_ids(d.match()) == [2]


def test_matched_task_can_be_requeued_for_retry() -> None:
    d = dispatcher_with_pilot(credit=1)
    d.push(task(1))
    assert d.match() == [("p1", 1)]
    d.push(task(1))  # e.g. RESTART_READY after a lost pilot
    d.grant("p1", 1, 0)
    assert d.match() == [("p1", 1)]


def test_queued_counts_per_site() -> None:
    d = Dispatcher()
    d.push(task(1, site=1))
    d.push(task(2, site=1))
    d.push(task(3, site=2))
    assert (d.queued(), d.queued(1), d.queued(2), d.queued(3)) == (3, 2, 1, 0)


def test_unfittable_tasks_beyond_scan_limit_are_not_lost() -> None:
    d = dispatcher_with_pilot(cores=64, credit=1)
    n = SCAN_LIMIT + 10
    for tid in range(1, n + 1):
        d.push(task(tid, priority=1, cores=2))
    d.push(task(n + 1, priority=0, cores=1))
    d.match()
    assert all(tid in d for tid in range(1, n + 1))
    d.grant("p1", 2 * n + 10, 0)
    got = matched_ids(d.match())
    assert got[:n] == list(range(1, n + 1))  # set aside, yet still in priority order
    assert d.queued() == 0


# --------------------------------------------------------------------------- property


@dataclass
class PilotModel:
    site: int
    cores: int
    gpus: int
    credit_cores: int = 0
    credit_gpus: int = 0


pilot_st = st.tuples(
    st.integers(1, 2), st.integers(1, 8), st.integers(0, 2)
)  # site, cores, gpus
task_st = st.tuples(
    st.integers(1, 2), st.integers(-2, 3), st.integers(1, 10), st.integers(0, 3)
)  # site, priority, cores, gpus
op_st = st.one_of(
    st.tuples(st.just("grant"), st.integers(0, 7), st.integers(-2, 9), st.integers(-1, 3)),
    st.tuples(st.just("match")),
    st.tuples(st.just("discard"), st.integers(0, 39)),
    st.tuples(st.just("push"), st.integers(0, 39)),
)


@settings(database=None, deadline=None, max_examples=300)
@given(
    pilots=st.lists(pilot_st, min_size=1, max_size=8),
    tasks=st.lists(task_st, min_size=0, max_size=40),
    ops=st.lists(op_st, min_size=1, max_size=60),
)
def test_property_credit_never_exceeded(
    pilots: list[tuple[int, int, int]],
    tasks: list[tuple[int, int, int, int]],
    ops: list[tuple],  # type: ignore[type-arg]
) -> None:
    d = Dispatcher()
    model: dict[str, PilotModel] = {}
    for i, (site, cores, gpus) in enumerate(pilots):
        pid = f"p{i}"
        d.add_pilot(PilotSlot(pilot_id=pid, site_id=site, cores=cores, gpus=gpus))
        model[pid] = PilotModel(site, cores, gpus)
    specs = {
        tid: task(tid, site=s, priority=p, cores=c, gpus=g)
        for tid, (s, p, c, g) in enumerate(tasks)
    }
    queued: set[int] = set()
    for tid, t in specs.items():
        d.push(t)
        queued.add(tid)
    ever_matched: set[int] = set()

    for op in ops:
        if op[0] == "grant":
            pid = f"p{op[1] % len(pilots)}"
            d.grant(pid, op[2], op[3])
            model[pid].credit_cores += max(op[2], 0)
            model[pid].credit_gpus += max(op[3], 0)
        elif op[0] == "discard":
            assert d.discard(op[1]) is (op[1] in queued)
            queued.discard(op[1])
        elif op[0] == "push":
            if op[1] in specs and op[1] not in ever_matched:
                d.push(specs[op[1]])
                queued.add(op[1])
        else:
            pairs = d.match()
            tids = [t for _, t in pairs]
            assert len(tids) == len(set(tids)), "a task was sent twice"
            for pid, tid in pairs:
                assert tid in queued, "a task not queued (or discarded) was sent"
                t, p = specs[tid], model[pid]
                assert t.site_id == p.site, "task sent to another site's pilot"
                assert t.cores <= p.cores and t.gpus <= p.gpus, "task larger than pilot"
                p.credit_cores -= t.cores
                p.credit_gpus -= t.gpus
                assert p.credit_cores >= 0 and p.credit_gpus >= 0, "credit exceeded"
                queued.discard(tid)
                ever_matched.add(tid)
            # Work-conserving: whatever is still queued fits no pilot of its site now.
            for tid in queued:
                t = specs[tid]
                for p in model.values():
                    if p.site != t.site_id:
                        continue
                    assert not (
                        t.cores <= min(p.cores, p.credit_cores)
                        and t.gpus <= min(p.gpus, p.credit_gpus)
                    ), f"task {tid} fits an idle pilot but was left queued"
        # The dispatcher's own books agree with the model at every step.
        assert d.queued() == len(queued)
        for pid, p in model.items():
            slot = d.pilot(pid)
            assert slot is not None
            assert (slot.credit_cores, slot.credit_gpus) == (p.credit_cores, p.credit_gpus)


# ---------------------------------------------------------------- nodes, packing, wall time


def test_packing_takes_a_share_of_the_node() -> None:
    d = Dispatcher()
    d.add_pilot(PilotSlot(pilot_id="p", site_id=1, cores=8, gpus=0, credit_cores=8))
    for i in range(1, 4):
        d.push(Queued(task_id=i, site_id=1, priority=0, cores=1, gpus=0, packing=4))
    # Each takes 8/4 = 2 cores: all three fit in 8, and 2 cores of credit are left.
    assert [t for _, t in d.match()] == [1, 2, 3]
    slot = d.pilot("p")
    assert slot is not None and slot.credit_cores == 2


def test_wall_time_estimate_must_fit_before_the_batch_job_ends() -> None:
    d = Dispatcher()
    d.add_pilot(PilotSlot(pilot_id="p", site_id=1, cores=4, gpus=0, credit_cores=4,
                          batch_job=1, end_time=1000.0))
    d.push(Queued(task_id=1, site_id=1, priority=5, cores=1, gpus=0, wall_time=600.0))
    d.push(Queued(task_id=2, site_id=1, priority=0, cores=1, gpus=0, wall_time=100.0))
    d.push(Queued(task_id=3, site_id=1, priority=0, cores=1, gpus=0))
    assert sorted(t for _, t in d.match(now=700.0)) == [2, 3]
    assert 1 in d  # still queued for a pilot with more time left
    assert d.match(now=1000.0) == []


def test_multi_node_task_reserves_idle_pilots_of_one_batch_job() -> None:
    d = Dispatcher()
    for name, job in (("a1", 1), ("b1", 2), ("a2", 1)):
        d.add_pilot(PilotSlot(pilot_id=name, site_id=1, cores=4, gpus=0, credit_cores=6,
                              batch_job=job))
    d.push(Queued(task_id=1, site_id=1, priority=0, cores=2, gpus=0, num_nodes=2))
    assert d.match() == [("a1", 1)]
    assert d.reserved(1) == ["a2"]
    # Both nodes (and their prefetch credit) are the task's: other work goes elsewhere.
    for i in range(2, 10):
        d.push(Queued(task_id=i, site_id=1, priority=0, cores=1, gpus=0))
    assert {p for p, _ in d.match()} == {"b1"}
    d.release(1)
    d.task_left("a1")
    d.grant("a1", 4, 0)  # the first pilot returns its node's share itself
    assert {p for p, _ in d.match()} == {"a1", "a2"}


def test_multi_node_task_waits_for_enough_idle_nodes() -> None:
    d = Dispatcher()
    d.add_pilot(PilotSlot(pilot_id="a1", site_id=1, cores=4, gpus=0, credit_cores=4,
                          batch_job=1))
    d.push(Queued(task_id=1, site_id=1, priority=0, cores=1, gpus=0, num_nodes=2))
    assert d.match() == []
    d.add_pilot(PilotSlot(pilot_id="a2", site_id=1, cores=4, gpus=0, credit_cores=4,
                          batch_job=1))
    assert d.match() == [("a1", 1)]


def test_head_pilot_takes_multi_node_task_with_whole_nodes_of_credit() -> None:
    d = Dispatcher()
    d.add_pilot(PilotSlot(pilot_id="h", site_id=1, cores=16, gpus=0, credit_cores=16,
                          batch_job=1, nodes=4))
    d.push(Queued(task_id=1, site_id=1, priority=0, cores=2, gpus=0, num_nodes=3))
    d.push(Queued(task_id=2, site_id=1, priority=0, cores=2, gpus=0, num_nodes=2))
    assert d.match() == [("h", 1)]  # 12 of 16 cores; 2 more nodes do not fit in 4
    slot = d.pilot("h")
    assert slot is not None and slot.credit_cores == 4


def test_demand_counts_queued_work_per_site() -> None:
    d = Dispatcher()
    d.push(Queued(task_id=1, site_id=1, priority=0, cores=2, gpus=1))
    d.push(Queued(task_id=2, site_id=1, priority=0, cores=1, gpus=0, num_nodes=3))
    d.push(Queued(task_id=3, site_id=2, priority=0, cores=1, gpus=0))
    assert d.demand(1) == (2, 2, 1, 3)
    d.discard(2)
    assert d.demand(1) == (1, 2, 1, 0)
    d.add_pilot(PilotSlot(pilot_id="p", site_id=1, cores=4, gpus=1, credit_cores=4, credit_gpus=1))
    d.match()
    assert d.demand(1) == (0, 0, 0, 0)
    assert d.demand(2) == (1, 1, 0, 0)


def test_longest_wall_time_of_queued_tasks() -> None:
    d = Dispatcher()
    d.push(Queued(task_id=1, site_id=1, priority=0, cores=1, gpus=0, wall_time=60.0))
    d.push(Queued(task_id=2, site_id=1, priority=0, cores=1, gpus=0, wall_time=600.0))
    d.push(Queued(task_id=3, site_id=1, priority=0, cores=1, gpus=0))
    assert d.longest_wall_time(1) == 600.0 and d.longest_wall_time(2) is None
    d.discard(2)
    assert d.longest_wall_time(1) == 60.0
    d.discard(1)
    assert d.longest_wall_time(1) is None
