"""Task listings on each backend: the right rows, read through an index, never a full scan.

Every listing a client can ask for (by owner, state, several states, site,
app, tag, several tags, tag and state, ids; oldest and newest first, paged)
and every watch replay (``events_since``) is run on a store holding several
owners' tasks, and its result compared with the same filter applied in
Python. Then the SQL the store issued for it (:func:`.reads.query_sql`,
:func:`.reads.events_sql`, and :func:`.reads.events_of_sql` for the phases of
listed tasks: the very text, not a copy) is explained:

* SQLite (``EXPLAIN QUERY PLAN``, with no statistics, as a store in use
  has): no ``SCAN`` of tasks, events or task tags -- every table is reached
  by a ``SEARCH`` on an index -- and no sort, except of the at most
  ``limit`` rows each branch of a several-states listing gives.
* PostgreSQL (``EXPLAIN`` after ``ANALYZE``): with sequential scans, bitmap
  scans and sorts priced out (``enable_* = off`` leaves them only where no
  other plan exists), no ``Seq Scan``, no ``Bitmap Heap Scan`` and no
  ``Sort``: an index gives the rows in id order and the listing stops at
  its limit. With the planner free, a small test table would make a
  sequential scan the cheapest choice, which says nothing about a million
  rows; with them off, a plan without them proves the index path exists.

Stores of schema 7 (before these indexes) are migrated, their tags kept.
"""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tidewater.controller.model import Event, LiveTask
from tidewater.controller.store import postgres_migrations, reads, schema, sqlite_migrations
from tidewater.controller.store.base import Store, TaskQuery
from tidewater.controller.store.open import open_store
from tidewater.controller.store.postgres import numbered
from tidewater.controller.store.reads import count_sql, events_of_sql, events_sql, query_sql
from tidewater.states import TaskState as S

from . import pg
from .test_store_contract import a_task, world

N = 3000
STATES = (S.READY, S.RUNNING, S.JOB_FINISHED, S.JOB_FINISHED, S.FAILED, S.AWAITING_PARENTS)


def task_of(i: int) -> LiveTask:
    """Task ``i``: three owners, two sites, three apps, states mostly finished."""
    owner = 1 + i % 3
    tags = {"run": str(i % 50), "n": str(i % 4)}
    t = a_task(i, state=STATES[(i // 5) % len(STATES)], owner=owner, site=1 + (i // 2) % 2,
               app=("echo", "sleep", "true")[(i // 7) % 3],
               tags=schema.json_text(tags))
    t.created_at = 1000.0 + i // 3  # ids grow with time; three tasks a second
    return t


@dataclass(frozen=True)
class Listing:
    name: str
    q: TaskQuery


LISTINGS = [
    Listing("owner", TaskQuery(owner_id=1)),
    Listing("state", TaskQuery(owner_id=1, states=("READY",))),
    Listing("states", TaskQuery(owner_id=1, states=("RUNNING", "READY", "READY"))),
    Listing("site", TaskQuery(owner_id=1, site_ids=(2,))),
    Listing("app", TaskQuery(owner_id=1, app="sleep")),
    Listing("tag", TaskQuery(owner_id=1, tags=(("run", "7"),))),
    Listing("tags", TaskQuery(owner_id=1, tags=(("run", "7"), ("n", "3")))),
    Listing("tag_state", TaskQuery(owner_id=1, states=("JOB_FINISHED",), tags=(("n", "1"),))),
    Listing("site_state_app", TaskQuery(owner_id=2, site_ids=(1,), states=("FAILED",),
                                        app="echo")),
    Listing("ids", TaskQuery(owner_id=1, ids=(3, 5, 6, 2997, 3000))),
    Listing("since", TaskQuery(owner_id=1, since=1500.0)),
    Listing("window", TaskQuery(owner_id=1, since=1200.0, until=1800.0)),
    Listing("window_tag", TaskQuery(owner_id=1, tags=(("n", "1"),), until=1900.0,
                                    since=1100.5)),
    Listing("window_states", TaskQuery(owner_id=1, states=("READY", "FAILED"),
                                       since=1300.0, until=1700.0)),
]
IDS = [x.name for x in LISTINGS]


def matches(t: LiveTask, q: TaskQuery) -> bool:
    return (t.owner_id == q.owner_id and all(t.site_id == s for s in q.site_ids)
            and (not q.states or t.state.value in q.states)
            and (q.app is None or t.app == q.app) and (not q.ids or t.id in q.ids)
            and all(t.tags.get(k) == v for k, v in q.tags)
            and (q.since is None or t.created_at >= q.since)
            and (q.until is None or t.created_at < q.until))


TASKS = [task_of(i) for i in range(1, N + 1)]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres",
                                                               marks=pytest.mark.postgres)])
def filled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[str]:
    """A store URL holding :data:`TASKS`, two events each, on each backend."""
    with ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite://{tmp_path_factory.mktemp('listings') / 'store.db'}"
        else:
            request.getfixturevalue("postgres_cluster")  # skips when it is down
            url = stack.enter_context(pg.fresh_database())
        pg._run(lambda: _fill(url))
        if not url.startswith("sqlite://"):
            pg.rows(url, "ANALYZE")
        yield url


async def _fill(url: str) -> None:
    writes = [*world(), schema.insert_user(3, "carol", "tc", 1.0, False),
              schema.insert_site(2, 1, "other", "ts2", 1.0)]
    eid = 0
    for t in TASKS:
        writes.append(schema.insert_task(t))
        writes += [schema.insert_tag(k, v, t.id, t.owner_id) for k, v in t.tags.items()]
        for src, dst in (("CREATED", "READY"), ("READY", t.state.value)):
            eid += 1
            writes.append(schema.insert_event(t.id, Event(eid, src, dst, float(eid), {})))
    async with open_store(url) as store:
        await store.commit(writes)


@pytest.fixture
async def store(filled: str) -> AsyncIterator[Store]:
    async with open_store(filled) as s:
        yield s


# ---------------------------------------------------------------------- plans

SQLITE_SCAN = re.compile(r"^SCAN (?!s\d+\b)")
"""A full scan of a table or index; ``SCAN sN`` reads the at most ``limit`` rows
of a several-states listing's branch ``sN``."""


async def plan(url: str, sql: str, args: list[Any]) -> list[str]:
    if url.startswith("sqlite://"):
        conn = sqlite3.connect(url.removeprefix("sqlite://"))
        try:
            return [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]
        finally:
            conn.close()
    conn = await asyncpg.connect(url, server_settings={
        "enable_seqscan": "off", "enable_bitmapscan": "off", "enable_sort": "off"})
    try:
        return [r[0] for r in await conn.fetch("EXPLAIN " + numbered(sql), *args)]
    finally:
        await conn.close()


def assert_indexed(url: str, lines: list[str], q: TaskQuery) -> None:
    """No full scan; no sort but of rows already bounded (a branch's ``limit``, or
    the events of the few tasks a listing by ids names)."""
    shown = "\n".join(lines)
    if url.startswith("sqlite://"):
        scans = [x for x in lines if SQLITE_SCAN.match(x)]
        assert not scans, f"full scan in\n{shown}"
        for before, line in zip(["", *lines], lines, strict=False):
            if line.startswith("USE TEMP B-TREE") and not q.ids:
                assert re.match(r"SCAN s\d+$", before), f"sort of unbounded rows in\n{shown}"
        assert any(x.startswith("SEARCH") for x in lines), shown
    else:
        # A plan node is the first line or one drawn with "->"; the others are its details.
        nodes = [re.sub(r"^\s*(->\s*)?", "", x).split("  (cost=")[0]
                 for i, x in enumerate(lines) if i == 0 or "->" in x]
        bad = [n for n in nodes if n.startswith(("Seq Scan", "Bitmap Heap Scan", "Sort",
                                                 "Incremental Sort"))]
        assert not bad, f"{bad} in\n{shown}"


@pytest.mark.parametrize("newest", [False, True], ids=["oldest", "newest"])
@pytest.mark.parametrize("listing", LISTINGS, ids=IDS)
async def test_listing_pages_the_right_tasks_through_an_index(
        filled: str, store: Store, listing: Listing, newest: bool) -> None:
    q = listing.q
    want = sorted((t.id for t in TASKS if matches(t, q)), reverse=newest)
    assert want, "the listing should find tasks"
    got = [t.id for t in await store.query(q, after_id=0, limit=50, newest=newest)]
    assert got == want[:50]
    if not newest:  # the next page starts after the last id seen
        page = [t.id for t in await store.query(q, after_id=got[-1], limit=50, newest=False)]
        assert page == want[50:100]
    # A time window is an id range found by a binary search of the primary key.
    assert isinstance(store, reads.SqlReads)
    after, before = await store.window(q, 0)
    if q.since is not None or q.until is not None:
        assert after > 0 or before is not None
    sql, args = query_sql(q, after_id=after, limit=50, newest=newest, before_id=before)
    assert_indexed(filled, await plan(filled, sql, args), q)


async def test_a_time_is_found_by_probes_of_the_primary_key(filled: str, store: Store) -> None:
    assert isinstance(store, reads.SqlReads)
    assert await store.task_id_at(1500.0) == min(t.id for t in TASKS if t.created_at >= 1500)
    lines = await plan(filled, "SELECT id, created_at FROM tasks WHERE id >= ? ORDER BY id "
                       "LIMIT 1", [7])
    assert_indexed(filled, lines, TaskQuery(owner_id=1))


async def test_a_page_of_events_reads_a_bounded_range(filled: str, store: Store) -> None:
    q = TaskQuery(owner_id=2, tags=(("n", "2"),))
    got = await store.events_since(q, 100, 1000, upto=400)
    want = sorted(eid for t in TASKS if matches(t, q) for eid in (2 * t.id - 1, 2 * t.id)
                  if 100 < eid <= 400)
    assert [e.id for e in got] == want
    sql, args = events_sql(q, 100, 1000, 400)
    assert_indexed(filled, await plan(filled, sql, args), q)


@pytest.mark.parametrize("listing", LISTINGS, ids=IDS)
async def test_counts_are_right_and_read_through_an_index(
        filled: str, store: Store, listing: Listing) -> None:
    """A count reads every matching task (its cost is the matches), but through the
    listing's index: never a scan of the whole table, whoever else has tasks."""
    q = listing.q
    want = Counter((t.site_id, t.state.value) for t in TASKS if matches(t, q))
    got = await store.count(q)
    assert {(sid, state): n for sid, state, n in got} == want
    assert len(got) == len(want)
    # A time window is the listing's id range: the count reads only the window's tasks.
    assert isinstance(store, reads.SqlReads)
    after, before = await store.window(q, 0)
    for sql, args in count_sql(q, after_id=after, before_id=before):
        lines = await plan(filled, sql, args)
        shown = "\n".join(lines)
        if filled.startswith("sqlite://"):
            assert not [x for x in lines if SQLITE_SCAN.match(x) and x != "SCAN counted"], (
                f"full scan in\n{shown}")
            # A range narrowed by one of the filter's own columns, as its listing's.
            searches = [x for x in lines if x.startswith("SEARCH")]
            assert searches, shown
            narrowed = [c for c, on in (("state=?", q.states), ("site_id=?", q.site_ids),
                                        ("app=?", q.app is not None)) if on]
            if narrowed and not q.tags:
                assert any(c in searches[0] for c in narrowed), shown
            if before is not None and not q.tags:
                assert "id>? AND id<?" in searches[0] or "rowid>? AND rowid<?" in searches[0], (
                    shown)
        else:
            assert "Seq Scan" not in shown and "Bitmap Heap Scan" not in shown, shown


@pytest.mark.parametrize("listing", LISTINGS, ids=IDS)
async def test_watch_replay_reads_events_from_their_index(
        filled: str, store: Store, listing: Listing) -> None:
    q = listing.q
    since = N  # the second half of the events
    wanted = {t.id: t for t in TASKS if matches(t, q)}
    events = [(i, t.id) for t in TASKS for i in (2 * t.id - 1, 2 * t.id)]
    want = sorted((eid, tid) for eid, tid in events if tid in wanted and eid > since)
    got = await store.events_since(q, since, 100)
    assert [(e.id, e.task_id) for e in got] == want[:100]
    assert all(e.tags == wanted[e.task_id].tags for e in got)
    sql, args = events_sql(q, since, 100)
    assert_indexed(filled, await plan(filled, sql, args), q)


async def test_phases_read_each_tasks_events_from_their_index(
        filled: str, store: Store) -> None:
    ids = [t.id for t in TASKS if t.owner_id == 1][:40]
    got = await store.events_of(ids)
    assert sorted(got) == sorted(ids)
    assert all([e[2] for e in got[tid]] == [2.0 * tid - 1, 2.0 * tid] for tid in ids)
    sql, args = events_of_sql(ids)
    assert_indexed(filled, await plan(filled, sql, args), TaskQuery(owner_id=1, ids=tuple(ids)))


async def test_recovery_reads_every_live_task_in_chunks(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reads, "LIVE_CHUNK", 97)
    rec = await store.recover()
    assert [t.id for t in rec.live] == [t.id for t in TASKS if t.state.value not in
                                        schema.FINAL_STATES]
    assert rec.live == [t for t in TASKS if t.state.value not in schema.FINAL_STATES]


# ---------------------------------------------------------------------- migration

OLD_TAG = "INSERT INTO task_tags (key, value, task_id) VALUES ('run', '42', 1)"


def old_task_row(t: LiveTask) -> tuple[str, tuple[Any, ...]]:
    """A task row as schema 7 had it (up to ``files``: ``raised`` came with 9)."""
    _, params = schema.insert_task(t)
    n = schema.TASK_COLUMNS.index("files") + 1
    cols = schema.TASK_COLUMNS[:n]
    return (f"INSERT INTO tasks ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            tuple(params)[:n])


async def test_a_schema_7_sqlite_store_keeps_its_tags(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for version, script in enumerate(sqlite_migrations.MIGRATIONS[:7], start=1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;")
    conn.execute(*old_task_row(a_task(1, owner=1, tags='{"run":"42"}')))
    conn.execute(OLD_TAG)
    conn.commit()
    conn.close()
    async with open_store(f"sqlite://{path}") as store:
        got = await store.query(TaskQuery(owner_id=1, tags=(("run", "42"),)), after_id=0,
                                limit=10, newest=True)
        assert [t.id for t in got] == [1]
        assert await store.query(TaskQuery(owner_id=2, tags=(("run", "42"),)), after_id=0,
                                 limit=10, newest=True) == []
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (
        schema.SCHEMA_VERSION,)


@pytest.mark.postgres
async def test_a_schema_7_postgres_store_keeps_its_tags(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute("CREATE TABLE tidewater_schema (version BIGINT PRIMARY KEY, "
                           "applied_at DOUBLE PRECISION NOT NULL)")
        await conn.execute(postgres_migrations.MIGRATIONS[7])
        await conn.execute("INSERT INTO tidewater_schema VALUES (7, 0)")
        sql, params = old_task_row(a_task(1, owner=1, tags='{"run":"42"}'))
        await conn.execute(numbered(sql), *params)
        await conn.execute(OLD_TAG)
    finally:
        await conn.close()
    async with open_store(postgres_url) as store:
        got = await store.query(TaskQuery(owner_id=1, tags=(("run", "42"),)), after_id=0,
                                limit=10, newest=True)
        assert [t.id for t in got] == [1]
    assert pg.rows(postgres_url, "SELECT max(version) FROM tidewater_schema") == [
        (schema.SCHEMA_VERSION,)]
