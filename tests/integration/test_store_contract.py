"""The Store contract, on each backend: what is written reads back, in order, once.

Every test runs on SQLite (a file) and on PostgreSQL (a fresh database on the
private cluster of `scripts/services.sh start`; marked ``postgres``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from tidewater import proto as P
from tidewater.controller.model import Event, JobRec, LiveTask, PilotRow, TokenRow
from tidewater.controller.store import schema
from tidewater.controller.store.base import Store, TaskQuery, Write
from tidewater.controller.store.open import open_store
from tidewater.controller.tasks import add_route, routes_of
from tidewater.errors import StoreError
from tidewater.states import TaskState as S

from . import pg


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'store.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


def a_task(tid: int, *, state: S = S.READY, owner: int = 1, site: int = 1, app: str = "echo",
           tags: str = "{}", files: list[P.FileInfo] | None = None) -> LiveTask:
    t = LiveTask(
        id=tid, owner_id=owner, site_id=site, app=app, state=state, params_j="{}", tags_j=tags,
        priority=0, cores=1, gpus=0, timeout=None, max_retries=0, retries=0, attempt=0,
        pilot="", argv_j="[]", shell="", env_j="{}", workdir="", exit_code=None, error="",
        stdout_tail="", stderr_tail="", created_at=1.0, started_at=None, finished_at=None,
        files=files)
    t.apply_extra()
    return t


def a_token(tid: str, user: int, *, kind: str = "user", job: int | None = None,
            salt: str = "s") -> TokenRow:
    return TokenRow(id=tid, kind=kind, user_id=user, site_id=1 if kind != "user" else None,
                    batch_job=job, salt=salt, hash=f"h-{tid}", name="", created_at=1.0,
                    expires_at=None, revoked_at=None)


def world() -> list[Write]:
    """Two users, a site, an app."""
    return [
        schema.insert_user(1, "alice", "ta", 1.0, True),
        schema.insert_user(2, "bob", "tb", 1.0, False),
        schema.insert_site(1, 1, "hpc", "ts", 1.0),
        schema.upsert_app(schema.app_from_row((1, "echo", "echo", "[]", "", "", "")), 1.0),
        schema.insert_token(a_token("ta", 1)),
        schema.insert_token(a_token("tb", 2)),
    ]


async def test_what_a_function_raised_is_stored_and_cleared(url: str) -> None:
    """A failed function task's exception (names and text) survives the store; a task
    updated without one reads back without one."""
    raised = P.RemoteError(type="builtins.KeyError", builtins=["KeyError", "LookupError"],
                           message="'frame'", traceback="Traceback ...\nKeyError: 'frame'\n")
    failed = a_task(1, state=S.FAILED)
    failed.exception = raised
    retried = a_task(2, state=S.RESTART_READY)
    retried.exception = raised
    async with open_store(url) as store:
        await store.commit([*world(), schema.insert_task(failed), schema.insert_task(retried)])
        retried.exception = None
        await store.commit([schema.update_task(retried)])
        back = {t.id: t for t in await store.tasks(1, [1, 2])}
    assert back[1].exception == raised
    assert back[2].exception is None


async def test_every_write_reads_back(url: str) -> None:
    inline = [P.FileInfo(direction="in", path="a", state="inline", size=1),
              P.FileInfo(direction="out", path="b", state="inline", size=1)]
    job = JobRec(id=1, site_id=1, owner_id=1, state="running", nodes=2, wall_time_min=5,
                 queue="q", project="p", created_at=1.0, scheduler_id="77")
    done = a_task(3, state=S.JOB_FINISHED)
    async with open_store(url) as store:
        await store.commit([
            *world(), schema.upsert_job(job),
            schema.insert_token(a_token("tp-old", 1, kind="pilot", job=1)),
            schema.update_site_limits(1, P.SiteLimits(cores_per_node=4)),
            schema.insert_task(a_task(1, files=inline)),
            schema.insert_task(a_task(2, state=S.AWAITING_PARENTS)),
            schema.insert_task(done), schema.insert_parent(2, 1),
            schema.upsert_data(1, "in", "a", b"A"), schema.upsert_data(1, "out", "b", b"B"),
            schema.upsert_data(3, "out", "c", b"C"),
            schema.insert_event(1, Event(1, "CREATED", "READY", 1.0, {"why": "x"})),
            schema.insert_tag("run", "a", 1, 1),
            schema.insert_submission(1, "key", 1, 2, 1.0),
            schema.insert_audit(1, "alice", "ta", "here", "task.submit", "1-2", {"n": 2}),
            schema.upsert_pilot(PilotRow("p1", 1, 1, 1), 5.0),
            schema.upsert_pilot(PilotRow("p2", 1, 1, 0), 6.0),
        ])
        # In one commit a job's old pilot tokens are revoked before its new one is inserted.
        await store.commit([schema.insert_token(a_token("tp", 1, kind="pilot", job=1)),
                            schema.revoke_job_tokens(1, 2.0),
                            schema.delete_pilot("p2"), schema.disable_user(2, 3.0),
                            schema.revoke_user_tokens(2, 3.0), schema.revoke_token("ta", 4.0)])
        rec = await store.recover()
        assert (rec.next_task, rec.next_event) == (4, 2)
        assert [(s.id, s.name, s.owner_id) for s in rec.sites] == [(1, "hpc", 1)]
        limits = msgspec.json.decode(rec.sites[0].limits_json, type=P.SiteLimits)
        assert limits.cores_per_node == 4
        assert [(a.site_id, a.name) for a in rec.apps] == [(1, "echo")]
        live = {t.id: t for t in rec.live}
        assert sorted(live) == [1, 2]  # the finished one is not loaded
        assert live[1].in_data == {"a": b"A"} and live[1].out_data == {"b": b"B"}
        assert live[1].files == inline
        assert rec.parents == [(2, 1)]
        (j,) = rec.jobs
        assert (j.id, j.state, j.scheduler_id, j.token_id) == (1, "running", "77", "tp")
        assert rec.pilots == [PilotRow("p1", 1, 1, 1)]

        assert await store.task_states(1, [1, 3, 99]) == {1: S.READY, 3: S.JOB_FINISHED}
        assert await store.task_states(2, [1]) == {}
        (back,) = await store.tasks(1, [3])
        assert back == done
        assert await store.output_data(3, "c") == b"C"
        assert await store.output_data(1, "a") is None  # an input, not an output
        assert await store.prior_submission(1, "key") == (1, 2)
        assert await store.prior_submission(2, "key") is None

        ta = await store.token("ta")
        assert ta is not None and ta.revoked_at == 4.0
        assert await store.token("nope") is None
        assert [t.id for t in await store.tokens_of(1, include_revoked=False, limit=10)] == ["tp"]
        assert {t.id for t in await store.tokens_of(1, include_revoked=True, limit=10)} == {
            "ta", "tp-old", "tp"}
        assert await store.live_token_ids(1) == ["tp"]
        assert sorted(await store.dead_tokens(["ta", "tb", "tp", "zz"])) == ["ta", "tb"]
        bob = await store.user_by_name("bob")
        assert bob is not None and bob.disabled_at == 3.0 and not bob.is_admin
        alice = await store.user(1)
        assert alice is not None and alice.is_admin and alice.name == "alice"
        assert [u.name for u in await store.users()] == ["alice", "bob"]
        assert await store.next_user_id() == 3
        (entry,) = await store.audit(1, 10)
        assert entry[2:] == ("alice", "ta", "here", "task.submit", "1-2", '{"n":2}')
        assert await store.audit(None, 10) == [entry]


async def test_a_rerouted_task_reads_back_on_its_new_site_with_its_routes(url: str) -> None:
    t = a_task(1)
    route = P.Route(policy="earliest-start", chosen="hpc", time=1.0, candidates=[
        P.RouteEstimate(site="hpc", health="up", start=0.0, finish=60.0, run=60.0),
        P.RouteEstimate(site="aps", health="down")])
    add_route(t, route)
    async with open_store(url) as store:
        await store.commit([*world(), schema.insert_site(2, 1, "aps", "ts2", 1.0),
                            schema.insert_task(t)])
        t.site_id = 2
        again = msgspec.structs.replace(route, chosen="aps", reason="site hpc went down")
        add_route(t, again)
        await store.commit([schema.reroute_task(t)])
        (back,) = (await store.recover()).live
        assert back.site_id == 2
        assert routes_of(back) == [route, again]
        assert back.num_nodes == 1  # the launch options beside the routes still read


async def test_legacy_token_is_found_by_its_hash(url: str) -> None:
    async with open_store(url) as store:
        await store.commit([*world(), schema.insert_token(a_token("old", 1, salt=""))])
        found = await store.legacy_token("h-old")
        assert found is not None and found.id == "old"
        assert await store.legacy_token("h-ta") is None  # salted: not a legacy token


async def test_on_commit_runs_in_queue_order_then_after_batch(url: str) -> None:
    seen: list[str] = []
    async with open_store(url) as store:
        store.after_batch = lambda: seen.append("batch")
        store.write_nowait(world(), lambda: seen.append("world"))
        for i in range(1, 201):
            # Queued without awaiting: one transaction commits them together.
            store.write_nowait([schema.insert_task(a_task(i))], lambda i=i: seen.append(str(i)))
        await store.commit([])
        tasks = [s for s in seen if s not in ("world", "batch")]
        assert tasks == [str(i) for i in range(1, 201)]
        assert seen[0] == "world" and seen[-1] == "batch"
        assert seen.index("batch") > seen.index("200")
        assert store.ops_committed == 202
        assert store.batches < 10  # grouped, not one transaction per write
        assert len(await store.task_states(1, list(range(1, 201)))) == 200


async def test_write_waits_for_room_and_keeps_its_place(url: str) -> None:
    seen: list[int] = []
    store = open_store(url, queue_size=2)
    async with store:
        await store.commit(world())
        for i in range(1, 21):
            await store.write([schema.insert_task(a_task(i))], lambda i=i: seen.append(i))
        await store.commit([])
    assert seen == list(range(1, 21))


async def test_repeated_inserts_are_ignored(url: str) -> None:
    async with open_store(url) as store:
        await store.commit([*world(), schema.insert_task(a_task(1)),
                            schema.insert_task(a_task(2, state=S.AWAITING_PARENTS))])
        for _ in range(2):
            await store.commit([
                schema.insert_tag("run", "a", 1, 1), schema.insert_parent(2, 1),
                schema.insert_submission(1, "k", 1, 1, 1.0),
                schema.upsert_data(1, "in", "x", b"new"),
            ])
        await store.commit([schema.insert_submission(1, "k", 5, 9, 2.0)])
        assert await store.prior_submission(1, "k") == (1, 1)  # the first one stays
        rec = await store.recover()
        assert rec.parents == [(2, 1)]
        got = await store.query(TaskQuery(owner_id=1, tags=(("run", "a"),)), after_id=0,
                                limit=10, newest=False)
        assert [t.id for t in got] == [1]


async def test_query_filters_and_pages(url: str) -> None:
    async with open_store(url) as store:
        writes = [*world(), schema.insert_site(2, 1, "other", "ts2", 1.0)]
        for i in range(1, 11):
            writes += [schema.insert_task(a_task(
                i, state=S.JOB_FINISHED if i % 2 else S.READY, site=1 if i <= 6 else 2,
                app="echo" if i != 3 else "sleep", tags=f'{{"n":"{i % 3}"}}')),
                schema.insert_tag("n", str(i % 3), i, 1)]
        writes.append(schema.insert_task(a_task(11, owner=2)))
        await store.commit(writes)

        async def ids(*, after_id: int = 0, limit: int = 100, newest: bool = False,
                      **kw: Any) -> list[int]:
            got = await store.query(TaskQuery(owner_id=1, **kw), after_id=after_id,
                                    limit=limit, newest=newest)
            return [t.id for t in got]

        assert await ids() == list(range(1, 11))  # never another owner's
        assert await ids(states=("READY",)) == [2, 4, 6, 8, 10]
        assert await ids(app="sleep") == [3]
        assert await ids(ids=(2, 3, 11)) == [2, 3]
        assert await ids(tags=(("n", "1"),)) == [1, 4, 7, 10]
        assert await ids(site_ids=(2,)) == [7, 8, 9, 10]
        assert await ids(site_ids=(1, 2)) == []  # every restriction holds
        assert await ids(after_id=4, limit=3) == [5, 6, 7]
        assert await ids(newest=True, limit=3) == [10, 9, 8]
        assert await ids(newest=True, after_id=8) == [10, 9]
        assert await ids(states=("READY",), tags=(("n", "1"),), site_ids=(2,)) == [10]


async def test_events_since_follow_the_query(url: str) -> None:
    async with open_store(url) as store:
        writes = [*world()]
        eid = 0
        for i in range(1, 5):
            writes += [schema.insert_task(a_task(i, tags=f'{{"k":"{i % 2}"}}')),
                       schema.insert_tag("k", str(i % 2), i, 1)]
            for src, dst in (("CREATED", "READY"), ("READY", "RUNNING")):
                eid += 1
                writes.append(schema.insert_event(i, Event(eid, src, dst, float(eid),
                                                           {"e": eid} if dst == "RUNNING" else {})))
        await store.commit(writes)
        q = TaskQuery(owner_id=1)
        got = await store.events_since(q, 0, 100)
        assert [e.id for e in got] == list(range(1, 9))
        first = got[1]
        assert (first.task_id, first.src, first.dst, first.time, first.data, first.tags) == (
            1, "READY", "RUNNING", 2.0, {"e": 2}, {"k": "1"})
        assert got[0].data == {}
        assert [e.id for e in await store.events_since(q, 5, 100)] == [6, 7, 8]
        assert [e.id for e in await store.events_since(q, 0, 3)] == [1, 2, 3]
        odd = TaskQuery(owner_id=1, tags=(("k", "1"),))
        assert {e.task_id for e in await store.events_since(odd, 0, 100)} == {1, 3}
        assert await store.events_since(TaskQuery(owner_id=2), 0, 100) == []


async def test_events_of_tasks_in_commit_order(url: str) -> None:
    async with open_store(url) as store:
        writes = [*world()]
        eid = 0
        # Interleaved: each task's events are read back in id order, grouped by task.
        for src, dst in (("CREATED", "READY"), ("READY", "STAGED_IN"), ("STAGED_IN", "RUNNING")):
            for i in (1, 2, 3):
                if eid < 3:
                    writes.append(schema.insert_task(a_task(i)))
                eid += 1
                writes.append(schema.insert_event(i, Event(eid, src, dst, 10.0 * eid + 0.5, {})))
        await store.commit(writes)
        got = await store.events_of([3, 1, 99])
        assert set(got) == {1, 3}
        assert got[1] == [("CREATED", "READY", 10.5), ("READY", "STAGED_IN", 40.5),
                          ("STAGED_IN", "RUNNING", 70.5)]
        assert [e[2] for e in got[3]] == [30.5, 60.5, 90.5]
        assert await store.events_of([]) == {}


async def test_an_empty_database_migrates_and_reopens(url: str) -> None:
    for _ in range(2):
        async with open_store(url) as store:
            rec = await store.recover()
            assert (rec.next_task, rec.next_event, rec.live, rec.jobs, rec.pilots) == (
                1, 1, [], [], [])
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (
            schema.SCHEMA_VERSION,)
    else:
        assert pg.rows(url, "SELECT max(version) FROM tidewater_schema") == [
            (schema.SCHEMA_VERSION,)]


async def test_a_newer_schema_is_refused(url: str) -> None:
    async with open_store(url):
        pass
    if url.startswith("sqlite://"):
        conn = sqlite3.connect(url.removeprefix("sqlite://"))
        conn.execute("PRAGMA user_version = 99")
        conn.close()
    else:
        pg.rows(url, "INSERT INTO tidewater_schema (version, applied_at) VALUES (99, 0) "
                "RETURNING version")
    with pytest.raises(StoreError, match=r"schema version 99, newer than this Tidewater's "
                                         rf"\({schema.SCHEMA_VERSION}\); upgrade Tidewater"):
        async with open_store(url):
            pass


async def test_a_foreign_database_is_refused(url: str) -> None:
    if url.startswith("sqlite://"):
        conn = sqlite3.connect(url.removeprefix("sqlite://"))
        conn.execute("CREATE TABLE invoices (id INTEGER)")
        conn.close()
    else:
        pg.rows(url, "CREATE TABLE invoices (id BIGINT)")
    with pytest.raises(StoreError, match=r"is not a Tidewater store: it holds other tables "
                                         r"\(invoices\)"):
        async with open_store(url):
            pass


async def test_a_failed_commit_raises_and_acknowledges_nothing(url: str) -> None:
    acked: list[str] = []
    store: Store = open_store(url)

    async def fail() -> None:
        async with store:
            await store.commit(world())
            # A second user with id 1: the transaction fails as a whole.
            store.write_nowait([schema.insert_task(a_task(1)),
                                schema.insert_user(1, "again", "tx", 1.0, False)],
                               lambda: acked.append("dup"))
            await anyio.sleep_forever()  # the writer's failure cancels this

    with pytest.raises(ExceptionGroup) as info:
        await fail()
    (err,) = info.value.exceptions
    assert isinstance(err, StoreError) and "commit to" in str(err) and "failed" in str(err)
    assert acked == []
    async with open_store(url) as again:
        assert await again.task_states(1, [1]) == {}  # rolled back, task and all
        assert [u.name for u in await again.users()] == ["alice", "bob"]


async def test_unreachable_postgres_says_where(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"cannot open store postgresql://u:\*\*\*@127\.0\.0\.1:1/x"):
        async with open_store("postgresql://u:secret@127.0.0.1:1/x"):
            pass


def created_at(t: LiveTask, when: float) -> LiveTask:
    t.created_at = when
    return t


async def test_time_windows_links_and_inline_data_of_tasks(url: str) -> None:
    """What retry, resubmit, ``TaskInfo.parents`` and ``tasks(since=, until=)`` read."""
    async with open_store(url) as store:
        writes = [*world()]
        # Ten tasks created one second apart from t=100 (ids grow with time), the
        # last three of Bob's; 4 and 5 are children of 3, 5 of 2 as well.
        for i in range(1, 11):
            writes.append(schema.insert_task(created_at(a_task(i, owner=1 if i <= 7 else 2),
                                                        99.0 + i)))
        writes += [schema.insert_parent(4, 3), schema.insert_parent(5, 3),
                   schema.insert_parent(5, 2),
                   schema.upsert_data(4, "in", "x", b"ex"), schema.upsert_data(4, "out", "y", b"y")]
        for i in range(1, 11):
            writes.append(schema.insert_event(i, Event(i, "CREATED", "READY", 99.0 + i, {})))
        await store.commit(writes)
        assert await store.task_id_at(0.0) == 1
        assert await store.task_id_at(103.0) == 4
        assert await store.task_id_at(103.5) == 5
        assert await store.task_id_at(1e9) == 11
        assert await store.parents_of([5, 4, 1]) == [(4, 3), (5, 2), (5, 3)]
        assert await store.children_of([3, 2]) == [(4, 3), (5, 2), (5, 3)]
        assert sorted(await store.inline_data([4, 5])) == [(4, "in", "x", b"ex"),
                                                           (4, "out", "y", b"y")]
        (five,) = await store.tasks(1, [5])
        assert five.parent_ids == [2, 3]

        async def ids(**kw: Any) -> list[int]:
            got = await store.query(TaskQuery(owner_id=1, **kw), after_id=0, limit=100,
                                    newest=False)
            return [t.id for t in got]

        assert await ids(since=103.0) == [4, 5, 6, 7]
        assert await ids(since=101.5, until=105.0) == [3, 4, 5]
        assert await ids(until=101.0) == [1]
        assert await ids(since=200.0) == []
        assert await ids(since=104.0, until=104.0) == []
        assert [t.parent_ids for t in await store.query(
            TaskQuery(owner_id=1, since=103.0, until=105.0), after_id=0, limit=5,
            newest=True)] == [[2, 3], [3]]
        # Events in a window of ids: the bound of one ListEvents request.
        q = TaskQuery(owner_id=1)
        assert [e.id for e in await store.events_since(q, 2, 100, upto=6)] == [3, 4, 5, 6]
        assert [e.id for e in await store.events_since(q, 6, 100, upto=9)] == [7]
        assert [e.id for e in await store.events_since(TaskQuery(owner_id=1, ids=(5, 2)), 0,
                                                       100)] == [2, 5]
        # After a restart, every live task knows its parents.
        rec = await store.recover()
        assert {t.id: t.parent_ids for t in rec.live if t.parent_ids} == {4: [3], 5: [2, 3]}
        assert sorted(rec.parents) == [(4, 3), (5, 2), (5, 3)]
        # ...also when the live ones are few among many (read by id, not by range).
        done = []
        for i in (1, 2, 3, 4, 6, 7, 8, 9, 10):
            t = a_task(i, owner=1 if i <= 7 else 2)
            t.state = S.JOB_FINISHED
            done.append(schema.update_task(t))
        await store.commit(done)
        rec = await store.recover()
        assert [t.id for t in rec.live] == [5]
        assert rec.live[0].parent_ids == [2, 3] and sorted(rec.parents) == [(5, 2), (5, 3)]
