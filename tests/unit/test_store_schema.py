"""The named row codecs: what a write binds reads back as the same record, for every table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import pytest

from tidewater import proto as P
from tidewater.controller.model import AppRec, Event, JobRec, LiveTask, PilotRow, TokenRow
from tidewater.controller.store import schema
from tidewater.controller.store.base import Op, Write
from tidewater.states import TaskState


def stored(write: Write, read: Sequence[str], **defaults: Any) -> tuple[Any, ...]:
    """The row a table would give back for ``read`` columns after ``write`` (by column name)."""
    op, params = write
    cols = schema.INSERT_COLUMNS[op]
    assert len(cols) == len(params), f"{op} binds {len(params)} values for {len(cols)} columns"
    row = dict(zip(cols, params, strict=True)) | defaults
    return tuple(row[c] for c in read)


def a_task(**kw: Any) -> LiveTask:
    base: dict[str, Any] = dict(
        id=7, owner_id=1, site_id=2, app="echo", state=TaskState.RUNNING, params_j='{"x":1}',
        tags_j='{"run":"a"}', priority=3, cores=2, gpus=1, timeout=30.0, max_retries=2,
        retries=1, attempt=2, pilot="p1", argv_j='["echo","1"]', shell="", env_j='{"A":"b"}',
        workdir="w", exit_code=None, error="", stdout_tail="out", stderr_tail="", created_at=1.5,
        started_at=2.5, finished_at=None, extra_j='{"num_nodes":2,"wall_time":60.0}',
        func="m:f", args=b"\x01\x02", result=None,
        files=[P.FileInfo(direction="in", path="a.txt", state="inline", size=3)],
    )
    t = LiveTask(**(base | kw))
    t.apply_extra()
    return t


def test_task_insert_reads_back_equal() -> None:
    t = a_task()
    back = schema.task_from_row(stored(schema.insert_task(t), schema.TASK_COLUMNS))
    assert back == t
    assert (back.num_nodes, back.wall_time) == (2, 60.0)


def test_task_update_sets_exactly_the_update_columns() -> None:
    t = a_task()
    row = dict(zip(schema.TASK_COLUMNS, schema.insert_task(t)[1], strict=True))
    t.state, t.exit_code, t.finished_at, t.result = TaskState.JOB_FINISHED, 0, 9.0, b"r"
    t.files = None
    op, params = schema.update_task(t)
    assert op is Op.UPDATE_TASK and params[-1] == t.id
    row |= dict(zip(schema.TASK_UPDATE_COLUMNS, params[:-1], strict=True))
    assert schema.task_from_row(tuple(row[c] for c in schema.TASK_COLUMNS)) == t


def test_event_reads_back_with_its_tasks_tags() -> None:
    e = Event(5, "READY", "RUNNING", 3.25, {"pilot": "p1"})
    back = schema.stored_event_from_row(
        stored(schema.insert_event(7, e), schema.STORED_EVENT_COLUMNS, tags='{"run":"a"}'))
    assert (back.id, back.task_id, back.src, back.dst, back.time, back.data, back.tags) == (
        5, 7, "READY", "RUNNING", 3.25, {"pilot": "p1"}, {"run": "a"})
    empty = schema.insert_event(7, Event(6, "A", "B", 1.0, {}))
    assert empty[1][5] is None  # no payload is stored as NULL
    assert schema.stored_event_from_row(
        stored(empty, schema.STORED_EVENT_COLUMNS, tags="{}")).data == {}


def test_job_reads_back_equal() -> None:
    j = JobRec(id=4, site_id=2, owner_id=1, state="running", nodes=3, wall_time_min=10,
               queue="debug", project="p", created_at=1.0, scheduler_id="123", autoscaled=True,
               request_key="k", submitted_at=2.0, started_at=3.0, reason="r", error="")
    assert schema.job_from_row(stored(schema.upsert_job(j), schema.JOB_COLUMNS)) == j


def test_token_reads_back_equal() -> None:
    t = TokenRow(id="abc", kind="pilot", user_id=1, site_id=2, batch_job=4, salt="s" * 32,
                 hash="h", name="n", created_at=1.0, expires_at=None, revoked_at=None)
    assert schema.token_from_row(stored(schema.insert_token(t), schema.TOKEN_COLUMNS)) == t


def test_user_reads_back_and_disable_sets_the_time() -> None:
    w = schema.insert_user(3, "carol", "tid", 1.5, True)
    u = schema.user_from_row(stored(w, schema.USER_COLUMNS, disabled_at=None))
    assert (u.id, u.name, u.is_admin, u.created_at, u.disabled_at) == (3, "carol", True, 1.5, None)
    assert stored(w, ["token_hash"]) == ("token:tid",)
    assert schema.disable_user(3, 9.0) == (Op.DISABLE_USER, (9.0, 3))


def test_site_reads_back_with_limits() -> None:
    w = schema.insert_site(2, 1, "hpc", "tid", 1.0)
    site = schema.site_from_row(stored(w, schema.SITE_COLUMNS, limits=""))
    assert (site.id, site.owner_id, site.name, site.created_at, site.limits_json) == (
        2, 1, "hpc", 1.0, "")
    limits = P.SiteLimits(cores_per_node=8)
    op, (text, sid) = schema.update_site_limits(2, limits)
    assert op is Op.UPDATE_SITE_LIMITS and sid == 2
    assert msgspec.json.decode(text, type=P.SiteLimits) == limits


@pytest.mark.parametrize("hooks", [None, P.AppHooks(on_timeout="m:h")])
def test_app_reads_back_equal(hooks: P.AppHooks | None) -> None:
    a = AppRec(site_id=2, name="echo", command="echo {x}",
               params=[P.ParamSpec(name="x", type="int")], description="d", function="",
               hooks=hooks)
    assert schema.app_from_row(stored(schema.upsert_app(a, 1.0), schema.APP_COLUMNS)) == a


def test_pilot_reads_back_equal() -> None:
    p = PilotRow(pilot_id="p1", site_id=2, owner_id=1, batch_job=4)
    assert schema.pilot_from_row(stored(schema.upsert_pilot(p, 5.0), schema.PILOT_COLUMNS)) == p
    assert schema.delete_pilot("p1") == (Op.DELETE_PILOT, ("p1",))


def test_small_rows_bind_their_columns() -> None:
    assert stored(schema.upsert_data(7, "out", "a", b"x"), ["task_id", "direction", "path",
                                                            "data"]) == (7, "out", "a", b"x")
    assert stored(schema.insert_parent(8, 7), ["child", "parent"]) == (8, 7)
    assert stored(schema.insert_tag("k", "v", 7, 1), ["owner_id", "key", "value", "task_id"]) == (
        1, "k", "v", 7)
    sub = schema.insert_submission(1, "key", 10, 5, 2.0)
    (ids,) = stored(sub, ["ids"])
    assert schema.decode_submission(ids) == (10, 5)
    audit = schema.insert_audit(1, "alice", "tid", "1.2.3.4", "task.submit", "1-2",
                                {"count": 2}, now=3.0)
    assert stored(audit, schema.AUDIT_COLUMNS[1:], user_id=1) == (
        3.0, "alice", "tid", "1.2.3.4", "task.submit", "1-2", '{"count":2}')


def test_every_op_has_a_rank_and_every_insert_names_its_columns() -> None:
    assert set(schema.OP_ORDER) == set(Op)
    for op, cols in schema.INSERT_COLUMNS.items():
        assert len(set(cols)) == len(cols), op
