"""The controller's task record and the dispatcher's queue keys stay small and behave alike."""

from __future__ import annotations

import sys
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tidewater import proto as P
from tidewater.controller.dispatch import heap_key
from tidewater.controller.model import LiveTask
from tidewater.states import TaskState


def a_task(**kw: Any) -> LiveTask:
    base: dict[str, Any] = dict(
        id=7, owner_id=1, site_id=2, app="echo", state=TaskState.READY, params_j="{}",
        tags_j="{}", priority=0, cores=1, gpus=0, timeout=None, max_retries=3, retries=0,
        attempt=0, pilot="", argv_j="[]", shell="", env_j="{}", workdir="", exit_code=None,
        error="", stdout_tail="", stderr_tail="", created_at=1.0, started_at=None,
        finished_at=None)
    return LiveTask(**(base | kw))


def test_a_queued_task_with_defaults_keeps_no_second_record() -> None:
    t = a_task()
    assert t._cold is None
    assert sys.getsizeof(t) <= 144
    assert (t.retries, t.pilot, t.files, t.num_nodes, t.waiting, t.env_j) == (
        0, "", None, 1, 0, "{}")


def test_fields_set_read_back_and_compare() -> None:
    t = a_task()
    t.pilot, t.attempt, t.error = "p1", 1, "boom"
    t.in_data = {}
    t.in_data["x"] = b"1"
    files = [P.FileInfo(direction="in", path="a", state="inline", size=1)]
    u = a_task(pilot="p1", attempt=1, error="boom", in_data={"x": b"1"}, files=files)
    assert (t.pilot, t.attempt, t.error, t.in_data) == ("p1", 1, "boom", {"x": b"1"})
    assert t != u  # files differ
    t.files = files
    assert t == u
    t.attempt = 0  # back to the default: reads as it
    assert t.attempt == 0 and t != u
    assert "pilot='p1'" in repr(t)


def test_constructor_keeps_every_field() -> None:
    t = a_task(timeout=5.0, max_retries=0, num_nodes=2, wall_time=60.0, started_at=2.0,
               result=b"r", extra_j='{"num_nodes":2}')
    assert (t.timeout, t.max_retries, t.num_nodes, t.wall_time, t.started_at, t.result,
            t.extra_j) == (5.0, 0, 2, 60.0, 2.0, b"r", '{"num_nodes":2}')


@given(st.lists(st.tuples(st.integers(-(1 << 62), 1 << 62), st.integers(1, (1 << 63) - 1)),
                min_size=2, max_size=30))
def test_heap_keys_order_as_priority_then_id(pairs: list[tuple[int, int]]) -> None:
    by_key = sorted(pairs, key=lambda p: heap_key(*p))
    by_pair = sorted(pairs, key=lambda p: (-p[0], p[1]))
    assert by_key == by_pair
    assert all(heap_key(p, i) & ((1 << 64) - 1) == i for p, i in pairs)
