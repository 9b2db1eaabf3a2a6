"""Watchers and waiters, synchronously: filters, replay ordering, aggregation, limits."""

from __future__ import annotations

import pytest

from tidewater import proto as P
from tidewater.controller.effects import Send
from tidewater.controller.model import Event, LiveTask, StoredEvent
from tidewater.controller.notify import Notify
from tidewater.errors import LimitExceeded, NotFound
from tidewater.states import TaskState as S


def task(tid: int, *, owner: int = 1, app: str = "a", tags: str = '{"run":"1"}') -> LiveTask:
    return LiveTask(
        id=tid, owner_id=owner, site_id=1, app=app, state=S.READY, params_j="{}", tags_j=tags,
        priority=0, cores=1, gpus=0, timeout=None, max_retries=0, retries=0, attempt=0,
        pilot="", argv_j="[]", shell="", env_j="{}", workdir="", exit_code=None, error="",
        stdout_tail="", stderr_tail="", created_at=0.0, started_at=None, finished_at=None)


def ev(eid: int, dst: str = "READY") -> Event:
    return Event(eid, "CREATED", dst, 1.0, {})


def events_to(out: list[Send | object], peer: int) -> list[tuple[int, int]]:
    """(watch id, event id) of every event sent to ``peer``, in order."""
    return [(o.msg.watch_id, e.id) for o in out if isinstance(o, Send) and o.peer == peer
            and isinstance(o.msg, P.Events) for e in o.msg.events]


def test_a_watch_sees_only_its_owners_matching_events() -> None:
    n = Notify(max_watches=10, max_frame_bytes=1 << 20)
    by_tag = n.watch(1, peer=5, flt=P.TaskFilter(tags={"run": "1"}), replay=False)
    by_app = n.watch(1, peer=5, flt=P.TaskFilter(app="b"), replay=False)
    by_state = n.watch(1, peer=6, flt=P.TaskFilter(states=["STAGED_IN"]), replay=False)
    by_site = n.watch(1, peer=6, flt=P.TaskFilter(site="elsewhere"), replay=False)
    n.emit(task(1), [ev(1), ev(2, "STAGED_IN")], "s")
    n.emit(task(2, app="b", tags='{"run":"2"}'), [ev(3)], "s")
    n.emit(task(3, owner=2), [ev(4)], "s")  # another user's: nobody here hears it
    out = n.flush()
    assert events_to(out, 5) == [(by_tag.watch_id, 1), (by_tag.watch_id, 2),
                                 (by_app.watch_id, 3)]
    assert events_to(out, 6) == [(by_state.watch_id, 2)]
    assert by_site.watch_id not in {w for w, _ in events_to(out, 6)}
    assert n.flush() == []  # flushed once


def test_a_replaying_watch_gets_history_then_held_live_events_once_in_order() -> None:
    n = Notify(max_watches=10, max_frame_bytes=1 << 20)
    sub = n.watch(1, peer=5, flt=P.TaskFilter(), replay=True)
    # Committed while the history is read: held back, not sent.
    n.emit(task(1), [ev(5), ev(6)], "s")
    assert events_to(n.flush(), 5) == []
    stored = [StoredEvent(i, 1, "CREATED", "READY", 1.0, {}, {}) for i in (3, 4, 5)]
    out = n.replayed(sub, since=2, stored=stored)
    assert events_to(out, 5) == [(sub.watch_id, i) for i in (3, 4, 5, 6)]
    # Live from now on.
    n.emit(task(1), [ev(7)], "s")
    assert events_to(n.flush(), 5) == [(sub.watch_id, 7)]


def test_waiters_hear_each_final_record_once_aggregated_per_request() -> None:
    n = Notify(max_watches=10, max_frame_bytes=1 << 20)
    n.wait(5, 1, [10, 11])
    info = P.TaskInfo(id=10, app="a", site="s", state="JOB_FINISHED")
    n.answer(10, info)
    n.answer(11, P.TaskInfo(id=11, app="a", site="s", state="FAILED"))
    n.answer(10, info)  # no one waits for it any more
    (o,) = n.flush()
    assert isinstance(o, Send) and isinstance(o.msg, P.Results)
    assert [i.id for i in o.msg.tasks] == [10, 11]


def test_a_gone_client_leaves_no_watch_or_waiter_behind() -> None:
    n = Notify(max_watches=10, max_frame_bytes=1 << 20)
    n.watch(1, peer=5, flt=P.TaskFilter(), replay=False)
    n.wait(5, 1, [10])
    n.wait(6, 1, [10])
    n.client_gone(1, 5)
    assert n.waiters == {10: [(6, 1)]}
    n.emit(task(1), [ev(1)], "s")
    assert events_to(n.flush(), 5) == []


def test_watch_limits_and_unknown_unwatch_say_so() -> None:
    n = Notify(max_watches=2, max_frame_bytes=1 << 20)
    n.watch(1, peer=5, flt=P.TaskFilter(), replay=False)
    sub = n.watch(1, peer=5, flt=P.TaskFilter(), replay=False)
    with pytest.raises(LimitExceeded, match="2 watches are open"):
        n.watch(1, peer=5, flt=P.TaskFilter(), replay=False)
    n.watch(1, peer=6, flt=P.TaskFilter(), replay=False)  # another connection has its own
    n.unwatch(1, 5, sub.watch_id)
    with pytest.raises(NotFound, match=f"no watch {sub.watch_id}"):
        n.unwatch(1, 5, sub.watch_id)
