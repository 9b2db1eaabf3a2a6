"""A dispatch round's work does not grow with the pilots of a site.

Counted, not timed: ``Dispatcher.examined`` is how many pilot slots
``match`` looked at, and the pilot book's node counts (what every round's
Demand carries) are read without looking at a single pilot.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

from tidewater import proto as P
from tidewater.controller.dispatch import Dispatcher, PilotSlot, Queued
from tidewater.controller.pilots import PilotBook, PilotRec

MANY = 2_000


def task(task_id: int, *, cores: int = 1, gpus: int = 0) -> Queued:
    return Queued(task_id=task_id, site_id=1, priority=0, cores=cores, gpus=gpus)


def site_of(n: int, *, credit: int) -> Dispatcher:
    """``n`` four-core pilots of site 1 with ``credit`` cores of credit each."""
    d = Dispatcher()
    for k in range(n):
        d.add_pilot(PilotSlot(pilot_id=f"p{k}", site_id=1, cores=4, gpus=0, credit_cores=credit,
                              batch_job=1 + k // 100))
    return d


def work_of_one_match(d: Dispatcher) -> tuple[list[tuple[str, int]], int]:
    before = d.examined
    got = d.match(now=0.0)
    return got, d.examined - before


@pytest.mark.parametrize("n", [10, MANY])
def test_pilots_whose_credit_is_used_up_cost_a_round_nothing(n: int) -> None:
    d = site_of(n, credit=1)
    for tid in range(n):
        d.push(task(tid))
    assert len(d.match(now=0.0)) == n  # every pilot is full now
    assert d.ready(1) == 0
    d.push(task(n))
    got, looked = work_of_one_match(d)
    assert got == []
    assert looked == 0
    assert n in d


@pytest.mark.parametrize("n", [10, MANY])
def test_one_task_looks_at_one_pilot_however_many_are_idle(n: int) -> None:
    d = site_of(n, credit=3)
    d.push(task(1))
    got, looked = work_of_one_match(d)
    assert [t for _, t in got] == [1]
    assert looked == 1


def test_a_stream_of_tasks_costs_the_same_with_10_or_2000_idle_pilots() -> None:
    def work(n: int) -> int:
        d = site_of(n, credit=3)
        total = 0
        next_id = 0
        for _round in range(50):  # a few tasks per round, their credit coming back
            batch = list(range(next_id, next_id + 4))
            next_id += 4
            for tid in batch:
                d.push(task(tid))
            got, looked = work_of_one_match(d)
            assert sorted(t for _, t in got) == batch
            total += looked
            for pilot_id, _ in got:
                d.task_left(pilot_id)
                d.grant(pilot_id, 1, 0)
        return total

    assert work(10) == work(MANY) == 200


def test_the_fullest_pilot_still_gets_the_task() -> None:
    d = site_of(MANY, credit=1)
    d.grant("p1234", 5, 0)
    d.push(task(1, cores=2))
    got, looked = work_of_one_match(d)
    assert got == [("p1234", 1)]
    assert looked == 1
    assert d.ready(1) == MANY  # p1234 still has 4 cores of credit


def test_a_task_too_big_for_every_pilot_looks_at_none() -> None:
    d = site_of(MANY, credit=3)
    d.push(task(1, cores=4))  # fits a pilot's node, not its credit
    got, looked = work_of_one_match(d)
    assert got == []
    assert looked == 0


# ----------------------------------------------------------------- the pilots' node counts


class NoScan(dict[str, PilotRec]):
    """The book's pilots, refusing to be looked through (lookups by id are fine)."""

    def _refuse(self, *_: Any) -> NoReturn:
        raise AssertionError("the node counts looked through every pilot")

    def __iter__(self) -> Iterator[str]:
        self._refuse()

    values = items = keys = _refuse


def hello(pilot_id: str, nodes: int = 1) -> P.Hello:
    return P.Hello(role="pilot", proto_version=1, token="", pilot_id=pilot_id, cores=2,
                   nodes=[P.NodeInfo(host=f"n{i}", cores=2) for i in range(nodes)]
                   if nodes > 1 else [])


def brute_force(book: PilotBook, site_id: int) -> tuple[int, int]:
    idle = busy = 0
    for p in dict.values(book.pilots):
        if p.site_id != site_id or p.peer is None:
            continue
        if p.assigned or p.draining:
            busy += max(1, p.node_count)
        else:
            idle += max(1, p.node_count)
    return idle, busy


def test_node_counts_are_read_without_looking_at_the_pilots() -> None:
    book = PilotBook(lease_timeout=30)
    for k in range(MANY):
        book.hello(hello(f"p{k}"), site_id=1, owner_id=1, batch_job=0, peer=k, now=0.0)
    book.pilots = NoScan(book.pilots)
    assert book.nodes(1) == (MANY, 0)
    book.assign(book.pilots["p7"], 70)
    book.drain(book.pilots["p8"])
    assert book.nodes(1) == (MANY - 2, 2)


@pytest.mark.parametrize("seed", range(20))
def test_node_counts_follow_every_change(seed: int) -> None:
    rng = random.Random(seed)
    book = PilotBook(lease_timeout=30)
    peers = iter(range(1, 10_000))
    for _ in range(300):
        pilot_id = f"p{rng.randrange(12)}"
        site = 1 + int(pilot_id[1:]) % 2
        rec = book.pilots.get(pilot_id)
        op = rng.choice(["hello", "assign", "unassign", "drain", "away", "remove"])
        if op == "hello" or rec is None:
            book.hello(hello(pilot_id, nodes=rng.choice([1, 1, 3])), site_id=site, owner_id=1,
                       batch_job=0, peer=next(peers), now=0.0)
        elif op == "assign":
            book.assign(rec, rng.randrange(5))
        elif op == "unassign":
            book.unassign(rec, rng.randrange(5))
        elif op == "drain":
            book.drain(rec)
        elif op == "away" and rec.peer is not None:
            book.away(rec, rec.peer)
        elif op == "remove":
            book.remove(rec)
        for s in (1, 2):
            assert book.nodes(s) == brute_force(book, s)


def test_site_counts_follow_every_change() -> None:
    rng = random.Random(7)
    book = PilotBook(lease_timeout=30)
    peers = iter(range(1, 10_000))
    for _ in range(500):
        pilot_id = f"p{rng.randrange(12)}"
        rec = book.pilots.get(pilot_id)
        op = rng.choice(["hello", "away", "remove", "drain"])
        if op == "hello" or rec is None:
            book.hello(hello(pilot_id), site_id=1 + int(pilot_id[1:]) % 2, owner_id=1,
                       batch_job=0, peer=next(peers), now=0.0)
        elif op == "away" and rec.peer is not None:
            book.away(rec, rec.peer)
        elif op == "remove":
            book.remove(rec)
        elif op == "drain":
            book.drain(rec)
        for s in (1, 2):
            mine = [p for p in dict.values(book.pilots) if p.site_id == s]
            assert book.count(s) == (sum(1 for p in mine if p.peer is not None), len(mine))
            assert sorted(p.pilot_id for p in book.of_site(s)) == sorted(p.pilot_id for p in mine)


def test_submit_dispatch_and_demand_never_look_through_2000_pilots() -> None:
    from .test_tasks import ALICE, Core, spec

    agent = 99
    core = Core()
    (site,) = core.state.registry.owned_sites(ALICE)
    core.state.jobs.agents[site.id] = agent  # the site has an agent: Demand every round
    for k in range(MANY):
        rec, fx = core.state.pilot_hello(
            ALICE, 1000 + k, P.Hello(role="pilot", proto_version=1, token="", site="s",
                                     pilot_id=f"p{k}", cores=1, credit_cores=3),
            P.Welcome(proto_version=1, server_id="x"), core.now)
        core.run(fx)
    core.run(core.state.dispatch(core.now))
    assert core.take(agent, P.Demand)[-1].idle_nodes == MANY
    core.state.pilots.pilots = NoScan(core.state.pilots.pilots)

    (tid,) = core.submit(spec())
    looked = core.state.dispatcher.examined
    core.run(core.state.dispatch(core.now))
    assert core.state.dispatcher.examined - looked == 1
    (peer, run), = [(p, m) for p, msgs in core.sent.items() for m in msgs
                    if isinstance(m, P.RunTasks)]
    assert [a.task_id for a in run.tasks] == [tid]
    (demand,) = core.take(agent, P.Demand)
    assert (demand.idle_nodes, demand.busy_nodes) == (MANY - 1, 1)

    rec = core.state.pilots.pilots[f"p{peer - 1000}"]
    core.run(core.state.reports(rec, P.Reports(seq=1, reports=[
        P.Report(task_id=tid, attempt=1, kind="started", time=core.now),
        P.Report(task_id=tid, attempt=1, kind="done", time=core.now, exit_code=0)]),
        core.now))
    core.run(core.state.dispatch(core.now))
    (demand,) = core.take(agent, P.Demand)
    assert (demand.idle_nodes, demand.busy_nodes) == (MANY, 0)
