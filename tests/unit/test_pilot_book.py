"""The pilot's book: credit, placement, the queue, held tasks and the outbox. No event loop."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tidewater import proto as P
from tidewater.pilot.book import PilotBook, Placement, Start, Stop
from tidewater.pilot.nodes import Node

NOW = 1_800_000_000.0


def task(tid: int, *, attempt: int = 1, cores: int = 1, gpus: int = 0, **kw: object) -> P.Assignment:
    return P.Assignment(task_id=tid, attempt=attempt, cores=cores, gpus=gpus,  # type: ignore[arg-type]
                        argv=["true"], **kw)


def book(cores: int = 4, gpus: int = 0, *, prefetch: int = 2, nodes: int = 1,
         accept_until: float | None = None) -> PilotBook:
    return PilotBook([Node(f"n{i}", cores, gpus) for i in range(nodes)], prefetch=prefetch,
                     accept_until=accept_until)


def done(tid: int, attempt: int = 1) -> P.Report:
    return P.Report(task_id=tid, attempt=attempt, kind="done", time=NOW, exit_code=0)


def sent(frames: list[bytes]) -> list[P.Msg]:
    return [P.pilot_decoder.decode(f) for f in frames]


def started_ids(commands: list[Start | Stop]) -> list[int]:
    return [c.assignment.task_id for c in commands if isinstance(c, Start)]


# --------------------------------------------------------------------------- credit


def test_hello_grants_what_is_free_plus_prefetch() -> None:
    b = book(cores=4, gpus=2, prefetch=2)
    assert b.hello_credit() == (6, 2)


def test_hello_credit_counts_what_is_already_queued_and_running() -> None:
    b = book(cores=2, prefetch=2)
    b.run_tasks([task(1, cores=2), task(2), task(3)], NOW)  # one runs, two wait
    assert b.hello_credit() == (0, 0)
    b.ended((1, 1), done(1), NOW)  # frees 2 cores, and task 2 and 3 start
    assert b.hello_credit() == (2, 0)


def test_every_assignment_that_leaves_gives_its_credit_back_once() -> None:
    b = book(cores=2, prefetch=1)
    b.hello_credit()
    b.run_tasks([task(1), task(2), task(3)], NOW)  # 2 run, 1 queued
    b.ended((1, 1), done(1), NOW)
    b.kill([(2, 1)], "cancelled")  # running: stopped, its credit comes when it ends
    assert b.pending_credit == (1, 0)
    b.ended((2, 1), None, NOW)
    frames = sent(b.outgoing(1 << 20))
    assert P.Credit(cores=2, gpus=0) in frames
    assert b.pending_credit == (0, 0)
    assert not any(isinstance(m, P.Credit) for m in sent(b.outgoing(1 << 20)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["push", "end", "kill", "kill_queued", "reconnect"]),
                          st.integers(1, 3)), max_size=60))
def test_credit_never_exceeds_what_is_free_plus_prefetch(ops: list[tuple[str, int]]) -> None:
    """A controller that sends only what it has credit for never overloads the pilot."""
    b = book(cores=4, prefetch=2)
    credit = b.hello_credit()[0]
    next_id = 1
    for op, n in ops:
        if op == "push" and credit >= n:
            b.run_tasks([task(next_id, cores=n)], NOW)
            credit -= n
            next_id += 1
        elif op == "end" and b.running:
            key = next(iter(b.running))
            b.ended(key, done(*key), NOW)
        elif op == "kill" and b.running:
            key = next(iter(b.running))
            b.kill([key], "cancelled")
            b.ended(key, None, NOW)
        elif op == "kill_queued" and b.queue:
            a = b.queue[-1]
            b.kill([(a.task_id, a.attempt)], "cancelled")
        elif op == "reconnect":
            credit = b.hello_credit()[0]
        for m in sent(b.outgoing(1 << 20)):
            if isinstance(m, P.Credit):
                credit += m.cores
        queued = sum(a.cores for a in b.queue)
        assert credit + queued <= b.free_cores + b.prefetch
        assert b.free_cores >= 0 and b.free_cores + sum(
            r.assignment.cores for r in b.running.values()) == b.total_cores


# --------------------------------------------------------------------------- placement


def test_tasks_start_while_they_fit_and_wait_in_order() -> None:
    b = book(cores=4)
    cmds = b.run_tasks([task(1, cores=3), task(2, cores=2), task(3, cores=1)], NOW)
    assert started_ids(cmds) == [1]  # 2 does not fit, and 3 does not overtake it
    assert [a.task_id for a in b.queue] == [2, 3]
    assert started_ids(b.ended((1, 1), done(1), NOW)) == [2, 3]


def test_gpus_are_placed_by_id_and_come_back() -> None:
    b = book(cores=4, gpus=2)
    (first,) = b.run_tasks([task(1, gpus=1)], NOW)
    (second,) = b.run_tasks([task(2, gpus=1)], NOW)
    assert isinstance(first, Start) and isinstance(second, Start)
    assert {first.placement.gpu_ids, second.placement.gpu_ids} == {(0,), (1,)}
    assert b.run_tasks([task(3, gpus=1)], NOW) == []  # no GPU left
    (third,) = b.ended((1, 1), done(1), NOW)
    assert isinstance(third, Start) and third.placement.gpu_ids == first.placement.gpu_ids


def test_a_multi_node_task_takes_whole_nodes_and_gives_them_back() -> None:
    b = book(cores=4, gpus=1, nodes=3)
    (single,) = b.run_tasks([task(1)], NOW)
    assert isinstance(single, Start) and single.placement == Placement(((0, 1),), ())
    (mpi,) = b.run_tasks([task(2, cores=8, num_nodes=2)], NOW)
    assert isinstance(mpi, Start) and mpi.placement.nodes == ((1, 4), (2, 4))
    assert b.run_tasks([task(3, cores=4, num_nodes=2)], NOW) == []  # node 0 is not whole
    (next_mpi,) = b.ended((2, 1), done(2), NOW)
    assert isinstance(next_mpi, Start) and next_mpi.placement.nodes == ((1, 4), (2, 4))
    b.ended((3, 1), done(3), NOW)
    b.ended((1, 1), done(1), NOW)
    assert [r.cores for r in b.room] == [4, 4, 4]
    assert [r.gpus for r in b.room] == [[0], [0], [0]]  # GPUs of whole nodes come back too
    (again,) = b.run_tasks([task(4, cores=12, gpus=3, num_nodes=3)], NOW)
    assert isinstance(again, Start) and len(again.placement.nodes) == 3


def test_a_task_that_cannot_finish_before_the_job_ends_is_handed_back() -> None:
    b = book(cores=4, accept_until=NOW + 60)
    b.hello_credit()
    cmds = b.run_tasks([task(1, wall_time=600.0), task(2, wall_time=30.0)], NOW)
    assert started_ids(cmds) == [2]
    (reports,) = [m for m in sent(b.outgoing(1 << 20)) if isinstance(m, P.Reports)]
    assert [(r.task_id, r.kind) for r in reports.reports] == [(1, "killed")]
    assert b.pending_credit == (0, 0)  # sent with that frame
    assert (1, 1) in b.held()  # until the controller has that report


# --------------------------------------------------------------------------- duplicates, kills


def test_a_duplicate_push_is_not_run_twice_and_its_credit_goes_back() -> None:
    b = book(cores=1, prefetch=1)
    b.hello_credit()
    b.run_tasks([task(1), task(2)], NOW)  # 1 runs, 2 queued
    cmds = b.run_tasks([task(1), task(2)], NOW)  # resent after a reconnect
    assert cmds == []
    assert [a.task_id for a in b.queue] == [2]
    assert b.pending_credit == (2, 0)


def test_a_push_of_a_task_that_ran_here_and_is_unacked_is_a_duplicate() -> None:
    b = book(cores=1)
    b.run_tasks([task(1)], NOW)
    b.ended((1, 1), done(1), NOW)
    assert b.run_tasks([task(1)], NOW) == []  # its report is not even framed yet


def test_a_new_attempt_of_a_task_is_not_a_duplicate() -> None:
    b = book(cores=2)
    b.run_tasks([task(1)], NOW)
    assert started_ids(b.run_tasks([task(1, attempt=2)], NOW)) == [1]


def test_kill_of_a_queued_task_drops_it_and_gives_its_credit_back() -> None:
    b = book(cores=1)
    b.run_tasks([task(1), task(2)], NOW)
    b.hello_credit()
    assert b.kill([(2, 1)], "cancelled") == []
    assert not b.queue and (2, 1) not in b.held()
    assert b.pending_credit == (1, 0)


def test_kill_of_a_running_task_stops_it_silently_and_it_stays_held_until_it_ends() -> None:
    b = book(cores=1)
    b.run_tasks([task(1)], NOW)
    assert b.kill([(1, 1)], "") == [Stop((1, 1), "killed by the controller", silent=True)]
    assert (1, 1) in b.held()  # the process is still being stopped
    b.ended((1, 1), None, NOW)
    assert b.held() == []
    assert not any(isinstance(m, P.Reports) for m in sent(b.outgoing(1 << 20)))


def test_kill_of_another_attempt_leaves_the_running_one_alone() -> None:
    b = book(cores=1)
    b.run_tasks([task(1, attempt=2)], NOW)
    assert b.kill([(1, 1)], "old") == []
    assert (1, 2) in b.running


def test_stopping_stops_everything_with_a_report_and_starts_nothing() -> None:
    b = book(cores=1)
    b.run_tasks([task(1), task(2)], NOW)
    assert b.stop("the pilot was stopped", NOW) == [
        Stop((1, 1), "the pilot was stopped", False)]
    assert not b.queue
    assert b.ended((1, 1), done(1), NOW) == []
    assert b.run_tasks([task(3)], NOW) == []


def handed_back(b: PilotBook) -> list[tuple[int, str, str]]:
    return [(r.task_id, r.kind, r.message) for f in sent(b.outgoing(1 << 20))
            if isinstance(f, P.Reports) for r in f.reports if r.kind != "started"]


def test_draining_hands_the_queue_back_at_once_and_lets_running_tasks_finish() -> None:
    b = book(cores=1, prefetch=2)
    b.run_tasks([task(1), task(2), task(3)], NOW)
    b.drain("the pilot was stopped", NOW)
    assert list(b.running) == [(1, 1)] and not b.queue
    assert handed_back(b) == [
        (2, "killed", "the pilot was stopped: handed back before it started"),
        (3, "killed", "the pilot was stopped: handed back before it started")]
    # What runs goes on; when it ends nothing new starts, and its report is owed as usual.
    assert b.ended((1, 1), done(1), NOW) == []
    assert handed_back(b) == [(1, "done", "")]
    assert b.hello_credit() == (0, 0)


def test_work_pushed_while_draining_is_handed_back_unstarted() -> None:
    b = book(cores=2)
    b.drain("stopping", NOW)
    assert b.run_tasks([task(7)], NOW) == []
    assert handed_back(b) == [(7, "killed", "the pilot is stopping: handed back before it started")]
    assert b.held() == [(7, 1)]  # until the controller acknowledges the report


# --------------------------------------------------------------------------- reports, held, acks


def test_started_is_reported_once() -> None:
    b = book()
    b.run_tasks([task(1)], NOW)
    b.started((1, 1), NOW)
    b.started((1, 1), NOW + 1)
    (frame,) = sent(b.outgoing(1 << 20))
    assert isinstance(frame, P.Reports)
    assert [(r.task_id, r.kind, r.time) for r in frame.reports] == [(1, "started", NOW)]


def test_held_includes_finished_tasks_until_their_report_is_acked() -> None:
    b = book(cores=2)
    b.run_tasks([task(1), task(2), task(3)], NOW)
    assert sorted(b.held()) == [(1, 1), (2, 1), (3, 1)]  # running, running, queued
    b.ended((1, 1), done(1), NOW)
    assert (1, 1) in b.held()  # finished, report not framed
    (frame,) = [m for m in sent(b.outgoing(1 << 20)) if isinstance(m, P.Reports)]
    assert (1, 1) in b.held()  # framed, not acknowledged
    b.ack(frame.seq - 1)
    assert (1, 1) in b.held()  # an older Ack does not cover it
    b.ack(frame.seq)
    assert sorted(b.held()) == [(2, 1), (3, 1)]


def test_held_lists_the_newest_attempt_of_a_task() -> None:
    b = book(cores=2)
    b.run_tasks([task(1)], NOW)
    b.ended((1, 1), P.Report(task_id=1, attempt=1, kind="error", time=NOW), NOW)
    b.run_tasks([task(1, attempt=2)], NOW)
    assert b.held() == [(1, 2)]


def test_ack_is_cumulative_over_frames() -> None:
    b = book(cores=3)
    b.run_tasks([task(1), task(2), task(3)], NOW)
    seqs = []
    for tid in (1, 2, 3):
        b.ended((tid, 1), done(tid), NOW)
        seqs += [m.seq for m in sent(b.outgoing(1 << 20)) if isinstance(m, P.Reports)]
    assert seqs == [1, 2, 3] and len(b.outbox) == 3
    b.ack(2)
    assert b.held() == [(3, 1)]
    assert len(b.outbox) == 1 and b.owes
    b.ack(3)
    assert b.held() == [] and not b.owes


def test_reports_are_split_into_frames_within_the_budget_and_resent_in_order() -> None:
    b = book(cores=3)
    b.run_tasks([task(1), task(2), task(3)], NOW)
    for tid in (1, 2, 3):
        b.ended((tid, 1), P.Report(task_id=tid, attempt=1, kind="done", time=NOW,
                                   result=b"x" * 1000), NOW)
    frames = [m for m in sent(b.outgoing(2000)) if isinstance(m, P.Reports)]
    assert [[r.task_id for r in f.reports] for f in frames] == [[1], [2], [3]]
    b.ack(frames[0].seq)
    again = [P.pilot_decoder.decode(f) for f in b.outbox.resend()]
    assert [m.seq for m in again] == [f.seq for f in frames[1:]]  # type: ignore[union-attr]


def test_kill_of_a_finished_unacked_attempt_stops_holding_it() -> None:
    b = book(cores=1)
    b.run_tasks([task(1)], NOW)
    b.ended((1, 1), done(1), NOW)
    b.kill([(1, 1)], "cancelled")
    assert b.held() == []
