"""The typed reads of :class:`~.base.Store`, in SQL both backends run.

The queries are written once with ``?`` placeholders; a backend supplies
:meth:`SqlReads._rows` (PostgreSQL renumbers the placeholders to ``$n``) and
the ``FROM`` clause that picks the live tasks through their partial index
(SQLite names it with ``INDEXED BY tasks_live``; PostgreSQL's planner picks
``tasks_live`` on its own). Rows are turned into records by the codecs of
:mod:`.schema`, which also give every column order.

Lists of ids are read 500 at a time. Every read raises
:class:`~tidewater.errors.StoreError` on a backend failure (the backend's
``_rows`` translates it) and is cancel-safe: it changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ...states import TaskState
from ..model import LiveTask, StoredEvent, TokenRow, UserRow
from . import schema
from .base import Recovered, TaskQuery
from .schema import columns

CHUNK = 500
LIVE_CHUNK = 10_000
_TASKS = columns(schema.TASK_COLUMNS)
_TASKS_T = columns(schema.TASK_COLUMNS, "t.")
_TOKENS = columns(schema.TOKEN_COLUMNS)
_USERS = columns(schema.USER_COLUMNS)
_AUDIT = ", ".join(f'"{c}"' for c in schema.AUDIT_COLUMNS)
_FINAL = "(" + ", ".join(f"'{s}'" for s in schema.FINAL_STATES) + ")"


def chunks(items: Sequence[Any], n: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def marks(n: int) -> str:
    return ",".join("?" * n)


def _distinct(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def filter_sql(q: TaskQuery, *, first_tag: bool = True, states: bool = True
               ) -> tuple[str, list[Any]]:
    """The conditions (and their parameters) of a task query on ``tasks t``.

    Tags are ``EXISTS`` probes of the owner's ``task_tags`` key, one index
    lookup per row; ``first_tag=False`` leaves out the tag a listing is driven
    by, ``states=False`` the states a listing reads one index range each of.
    """
    where = ["t.owner_id = ?"]
    args: list[Any] = [q.owner_id]
    for sid in q.site_ids:
        where.append("t.site_id = ?")
        args.append(sid)
    wanted = _distinct(q.states) if states else ()
    if len(wanted) == 1:
        where.append("t.state = ?")
        args.append(wanted[0])
    elif wanted:
        where.append(f"t.state IN ({marks(len(wanted))})")
        args.extend(wanted)
    if q.app is not None:
        where.append("t.app = ?")
        args.append(q.app)
    if q.ids:
        where.append(f"t.id IN ({marks(len(q.ids))})")
        args.extend(q.ids)
    if q.since is not None:
        where.append("t.created_at >= ?")
        args.append(q.since)
    if q.until is not None:
        where.append("t.created_at < ?")
        args.append(q.until)
    for k, v in q.tags[0 if first_tag else 1:]:
        where.append("EXISTS (SELECT 1 FROM task_tags x WHERE x.owner_id = ? AND x.key = ? "
                     "AND x.value = ? AND x.task_id = t.id)")
        args.extend((q.owner_id, k, v))
    return " AND ".join(where), args


def query_sql(q: TaskQuery, *, after_id: int, limit: int, newest: bool,
              before_id: int | None = None) -> tuple[str, list[Any]]:
    """The SQL (``?`` placeholders) and parameters :meth:`SqlReads.query` runs.

    ``before_id``: only ids below it (a time window's end, see
    :meth:`SqlReads.task_id_at`; its start raises ``after_id``). The window's
    ``created_at`` conditions are also checked on each row read.

    Each shape reads one index in id order and stops after ``limit`` rows,
    so its cost does not grow with the store (as long as the rows the other
    conditions refuse are few):

    * by tag: the owner's ``task_tags`` key of the first tag drives (``CROSS
      JOIN`` keeps SQLite from starting anywhere else), each task read by id;
    * by several states: one ordered range of ``tasks_owner_state`` per
      state, each limited, merged;
    * otherwise one range of the owner's index the planner picks (owner and
      state, site, app, or owner alone).
    """
    order = "DESC" if newest else "ASC"
    below, below_args = ("", []) if before_id is None else (" AND t.id < ?", [before_id])
    if q.tags:
        key, value = q.tags[0]
        cond, args = filter_sql(q, first_tag=False)
        g_below = "" if before_id is None else " AND g.task_id < ?"
        return (f"SELECT {columns(schema.TASK_COLUMNS, 't.')} FROM task_tags g "
                "CROSS JOIN tasks t WHERE g.owner_id = ? AND g.key = ? AND g.value = ? "
                f"AND g.task_id > ?{g_below} AND t.id = g.task_id AND {cond} "
                f"ORDER BY g.task_id {order} LIMIT ?",
                [q.owner_id, key, value, after_id, *below_args, *args, limit])
    wanted = _distinct(q.states)
    if len(wanted) > 1:
        cond, args = filter_sql(q, states=False)
        branches, params = [], []
        for i, state in enumerate(wanted):
            branches.append(
                f"SELECT * FROM (SELECT {_TASKS_T} FROM tasks t WHERE {cond} AND t.state = ? "
                f"AND t.id > ?{below} ORDER BY t.id {order} LIMIT ?) AS s{i}")
            params += [*args, state, after_id, *below_args, limit]
        return (" UNION ALL ".join(branches) + f" ORDER BY id {order} LIMIT ?",
                [*params, limit])
    cond, args = filter_sql(q)
    return (f"SELECT {_TASKS_T} FROM tasks t WHERE {cond} AND t.id > ?{below} "
            f"ORDER BY t.id {order} LIMIT ?", [*args, after_id, *below_args, limit])


def count_sql(q: TaskQuery, *, after_id: int = 0, before_id: int | None = None
              ) -> list[tuple[str, list[Any]]]:
    """The statements (SQL and parameters) :meth:`SqlReads.count` runs and adds up:
    the matching tasks grouped by site and state.

    Each reads the index range the listing with this filter reads (the first
    tag's ``task_tags`` key; one range of ``tasks_owner_state`` per state;
    the owner's range of site, app or everything): the inner ``ORDER BY
    t.id`` is the listing's, which steers the planner to that range rather
    than to an index that would save it the grouping's sort at the price of
    reading all the owner's tasks. Unlike a page of a listing, it reads the
    range to its end, so its cost is the number of matching tasks (about
    0.4-1.2 s per million on SQLite, bench/scale.py), in the store's reader.
    A time window is an id range (``after_id``, ``before_id``: see
    :meth:`SqlReads.window`) within that range, so a count of the last hour
    reads the last hour's tasks.
    """
    def grouped(inner: str, order: str = "t.id") -> str:
        return (f"SELECT site_id, state, COUNT(*) FROM ({inner} ORDER BY {order}) AS counted "
                "GROUP BY site_id, state")

    def ids(col: str) -> tuple[str, list[Any]]:
        if before_id is None:
            return f" AND {col} > ?", [after_id]
        return f" AND {col} > ? AND {col} < ?", [after_id, before_id]

    if q.tags:
        key, value = q.tags[0]
        cond, args = filter_sql(q, first_tag=False)
        between, bounds = ids("g.task_id")
        return [(grouped("SELECT g.task_id, t.site_id, t.state FROM task_tags g CROSS JOIN tasks t "
                         f"WHERE g.owner_id = ? AND g.key = ? AND g.value = ?{between} "
                         f"AND t.id = g.task_id AND {cond}", "g.task_id"),
                 [q.owner_id, key, value, *bounds, *args])]
    between, bounds = ids("t.id")
    wanted = _distinct(q.states)
    if len(wanted) > 1:
        cond, args = filter_sql(q, states=False)
        return [(grouped(f"SELECT t.id, t.site_id, t.state FROM tasks t WHERE {cond} "
                         f"AND t.state = ?{between}"), [*args, state, *bounds])
                for state in wanted]
    cond, args = filter_sql(q)
    return [(grouped(f"SELECT t.id, t.site_id, t.state FROM tasks t WHERE {cond}{between}"),
             [*args, *bounds])]


def events_sql(q: TaskQuery, since: int, limit: int, upto: int | None = None
               ) -> tuple[str, list[Any]]:
    """The SQL and parameters :meth:`SqlReads.events_since` runs: the events after
    ``since`` (up to ``upto``) in id order (a range of their primary key; ``CROSS
    JOIN`` keeps SQLite from starting from the tasks), each one's task read by id
    and kept if it matches. Its cost is the events in that range, not the store's
    size."""
    cond, args = filter_sql(q)
    if q.ids and upto is None:
        # A few tasks: each one's events from ``events_task``, merged (a sort of
        # just their events) -- not a walk through everyone's events since ``since``.
        return ("SELECT e.id, e.task_id, e.from_state, e.to_state, e.time, e.data, t.tags "
                f"FROM tasks t CROSS JOIN events e WHERE {cond} AND e.task_id = t.id "
                "AND e.id > ? ORDER BY e.id LIMIT ?", [*args, since, limit])
    upper, upper_args = ("", []) if upto is None else (" AND e.id <= ?", [upto])
    return ("SELECT e.id, e.task_id, e.from_state, e.to_state, e.time, e.data, t.tags "
            f"FROM events e CROSS JOIN tasks t WHERE e.id > ?{upper} AND t.id = e.task_id "
            f"AND {cond} ORDER BY e.id LIMIT ?", [since, *upper_args, *args, limit])


def events_of_sql(task_ids: Sequence[int]) -> tuple[str, list[Any]]:
    """The SQL and parameters :meth:`SqlReads.events_of` runs for one chunk of task
    ids: one range of ``events_task (task_id, id)`` per task, so in commit order."""
    return (f"SELECT task_id, from_state, to_state, time FROM events "
            f"WHERE task_id IN ({marks(len(task_ids))}) ORDER BY task_id, id", list(task_ids))


class SqlReads:
    """Every typed read, over a backend's ``_rows``."""

    _live_tasks_from = "tasks"
    """The FROM clause that reads the live tasks through their partial index."""

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """Rows of one query (``?`` placeholders). Raises StoreError."""
        raise NotImplementedError

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Any] | None:
        rows = await self._rows(sql, params)
        return rows[0] if rows else None

    async def _max_id(self, table: str) -> int:
        row = await self._one(f"SELECT max(id) FROM {table}")
        return int(row[0]) if row is not None and row[0] is not None else 0

    # ------------------------------------------------------------------ recovery

    async def recover(self) -> Recovered:
        """Everything a controller loads when it starts. Raises StoreError."""
        next_task = await self._max_id("tasks") + 1
        next_event = await self._max_id("events") + 1
        sites = [schema.site_from_row(r) for r in await self._rows(
            f"SELECT {columns(schema.SITE_COLUMNS)} FROM sites")]
        apps = [schema.app_from_row(r) for r in await self._rows(
            f"SELECT {columns(schema.APP_COLUMNS)} FROM apps")]
        live = await self._live_tasks()
        by_id = {t.id: t for t in live}
        # Inline bytes of live tasks: inputs still to send, outputs children may refer to.
        with_data = [t.id for t in live if t.files and any(f.state == "inline" for f in t.files)]
        for chunk in chunks(with_data):
            for tid, direction, path, data in await self._rows(
                f"SELECT task_id, direction, path, data FROM task_data "
                f"WHERE task_id IN ({marks(len(chunk))})", chunk):
                t = by_id[tid]
                if direction == "in":
                    t.in_data = t.in_data or {}
                    t.in_data[path] = bytes(data)
                else:
                    t.out_data = t.out_data or {}
                    t.out_data[path] = bytes(data)
        # Every live task's parents (for TaskInfo.parents; the waiting ones' links):
        # one range of the primary key from the oldest live task on when live tasks
        # are most of that range, else by id -- either way in time of the order of
        # the live tasks, not of the store.
        parents: list[tuple[int, int]] = []
        if live and next_task - live[0].id <= 4 * len(live):
            links = [(int(c), int(p)) for c, p in await self._rows(
                "SELECT child, parent FROM task_parents WHERE child >= ? "
                "ORDER BY child, parent", (live[0].id,))]
        else:
            links = await self.parents_of(list(by_id))
        for c, p in links:
            child = by_id.get(c)
            if child is not None:
                parents.append((c, p))
                child.parent_ids = [*(child.parent_ids or []), p]
        jobs = [schema.job_from_row(r) for r in await self._rows(
            f"SELECT {columns(schema.JOB_COLUMNS)} FROM batch_jobs")]
        by_job = {j.id: j for j in jobs}
        for tid, job_id in await self._rows(
            "SELECT id, batch_job FROM tokens WHERE kind = 'pilot' AND revoked_at IS NULL"
        ):
            if job_id in by_job:
                by_job[job_id].token_id = tid
        pilots = [schema.pilot_from_row(r) for r in await self._rows(
            f"SELECT {columns(schema.PILOT_COLUMNS)} FROM pilots ORDER BY since, pilot_id")]
        return Recovered(next_task=next_task, next_event=next_event, sites=sites, apps=apps,
                         live=live, parents=parents, jobs=jobs, pilots=pilots)

    async def _live_tasks(self) -> list[LiveTask]:
        """Every task not final, read :data:`LIVE_CHUNK` at a time in id order.

        A million queued tasks are a million rows: read at once, their rows
        and each row's own copy of every text would be held together (about
        twice what the tasks keep), and the process would keep that peak.
        Read in chunks, with texts that repeat from row to row (app, tags,
        parameters, argv, environment) and the creation time of tasks
        submitted together shared as they are decoded, only a chunk's rows
        are ever held.
        """
        live: list[LiveTask] = []
        texts: dict[str, str] = {}
        after = 0
        while True:
            rows = await self._rows(
                f"SELECT {_TASKS} FROM {self._live_tasks_from} WHERE state NOT IN {_FINAL} "
                "AND id > ? ORDER BY id LIMIT ?", (after, LIVE_CHUNK))
            for r in rows:
                t = schema.task_from_row(r)
                if len(texts) > 100_000:
                    texts.clear()
                t.app = texts.setdefault(t.app, t.app)
                t.params_j = texts.setdefault(t.params_j, t.params_j)
                t.tags_j = texts.setdefault(t.tags_j, t.tags_j)
                t.argv_j = texts.setdefault(t.argv_j, t.argv_j)
                t.env_j = texts.setdefault(t.env_j, t.env_j)
                if live and t.created_at == live[-1].created_at:
                    t.created_at = live[-1].created_at  # one float per Submit, as submitted
                live.append(t)
            if len(rows) < LIVE_CHUNK:
                return live
            after = live[-1].id

    # ------------------------------------------------------------------ tasks

    async def task_states(self, owner_id: int, ids: Sequence[int]) -> dict[int, TaskState]:
        out: dict[int, TaskState] = {}
        for chunk in chunks(list(ids)):
            for tid, state in await self._rows(
                f"SELECT id, state FROM tasks WHERE owner_id = ? AND id IN ({marks(len(chunk))})",
                (owner_id, *chunk)):
                out[tid] = TaskState(state)
        return out

    async def tasks(self, owner_id: int, ids: Sequence[int]) -> list[LiveTask]:
        out: list[LiveTask] = []
        for chunk in chunks(list(ids)):
            out += [schema.task_from_row(r) for r in await self._rows(
                f"SELECT {_TASKS} FROM tasks WHERE owner_id = ? AND id IN ({marks(len(chunk))})",
                (owner_id, *chunk))]
        return await self._with_parents(out)

    async def _with_parents(self, tasks: list[LiveTask]) -> list[LiveTask]:
        """Set each task's ``parent_ids`` from ``task_parents`` (its primary key)."""
        by_id = {t.id: t for t in tasks}
        for child, parent in await self.parents_of(list(by_id)):
            t = by_id[child]
            t.parent_ids = [*(t.parent_ids or []), parent]
        return tasks

    async def parents_of(self, children: Sequence[int]) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for chunk in chunks(list(children)):
            out += [(int(c), int(p)) for c, p in await self._rows(
                f"SELECT child, parent FROM task_parents WHERE child IN ({marks(len(chunk))}) "
                "ORDER BY child, parent", chunk)]
        return out

    async def children_of(self, parents: Sequence[int]) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for chunk in chunks(list(parents)):
            out += [(int(c), int(p)) for c, p in await self._rows(
                f"SELECT child, parent FROM task_parents WHERE parent IN ({marks(len(chunk))})",
                chunk)]
        return sorted(out)

    async def inline_data(self, task_ids: Sequence[int]) -> list[tuple[int, str, str, bytes]]:
        out: list[tuple[int, str, str, bytes]] = []
        for chunk in chunks(list(task_ids)):
            out += [(int(t), str(d), str(p), bytes(b)) for t, d, p, b in await self._rows(
                f"SELECT task_id, direction, path, data FROM task_data "
                f"WHERE task_id IN ({marks(len(chunk))})", chunk)]
        return out

    async def task_id_at(self, when: float) -> int:
        lo, hi = 1, await self._max_id("tasks") + 1  # the answer lies in [lo, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            row = await self._one("SELECT id, created_at FROM tasks WHERE id >= ? "
                                  "ORDER BY id LIMIT 1", (mid,))
            if row is None:
                hi = mid
            elif float(row[1]) >= when:
                hi = min(mid, int(row[0]))
            else:
                lo = int(row[0]) + 1
        return lo

    async def window(self, q: TaskQuery, after_id: int) -> tuple[int, int | None]:
        """``after_id`` raised to ``q.since``'s first task, and the id ``q.until`` ends before."""
        if q.since is not None:
            after_id = max(after_id, await self.task_id_at(q.since) - 1)
        return after_id, (await self.task_id_at(q.until) if q.until is not None else None)

    async def query(self, q: TaskQuery, *, after_id: int, limit: int,
                    newest: bool) -> list[LiveTask]:
        after_id, before_id = await self.window(q, after_id)
        if before_id is not None and before_id <= after_id + 1:
            return []
        sql, args = query_sql(q, after_id=after_id, limit=limit, newest=newest,
                              before_id=before_id)
        return await self._with_parents(
            [schema.task_from_row(r) for r in await self._rows(sql, args)])

    async def count(self, q: TaskQuery) -> list[tuple[int, str, int]]:
        after_id, before_id = await self.window(q, 0)
        if before_id is not None and before_id <= after_id + 1:
            return []
        return [(int(sid), str(state), int(n))
                for sql, args in count_sql(q, after_id=after_id, before_id=before_id)
                for sid, state, n in await self._rows(sql, args)]

    async def events_since(self, q: TaskQuery, since: int, limit: int, *,
                           upto: int | None = None) -> list[StoredEvent]:
        sql, args = events_sql(q, since, limit, upto)
        return [schema.stored_event_from_row(r) for r in await self._rows(sql, args)]

    async def events_of(self, task_ids: Sequence[int]
                        ) -> dict[int, list[tuple[str, str, float]]]:
        out: dict[int, list[tuple[str, str, float]]] = {}
        for chunk in chunks(list(task_ids)):
            for tid, src, dst, at in await self._rows(*events_of_sql(chunk)):
                out.setdefault(int(tid), []).append((src, dst, float(at)))
        return out

    async def output_data(self, task_id: int, path: str) -> bytes | None:
        row = await self._one(
            "SELECT data FROM task_data WHERE task_id = ? AND direction = 'out' AND path = ?",
            (task_id, path))
        return bytes(row[0]) if row is not None else None

    async def prior_submission(self, owner_id: int, key: str) -> tuple[int, int] | None:
        row = await self._one("SELECT ids FROM submissions WHERE owner_id = ? AND key = ?",
                              (owner_id, key))
        return schema.decode_submission(row[0]) if row is not None else None

    # ------------------------------------------------------------------ tokens and users

    async def token(self, token_id: str) -> TokenRow | None:
        row = await self._one(f"SELECT {_TOKENS} FROM tokens WHERE id = ?", (token_id,))
        return schema.token_from_row(row) if row is not None else None

    async def legacy_token(self, token_hash: str) -> TokenRow | None:
        row = await self._one(f"SELECT {_TOKENS} FROM tokens WHERE salt = '' AND hash = ?",
                              (token_hash,))
        return schema.token_from_row(row) if row is not None else None

    async def tokens_of(self, user_id: int, *, include_revoked: bool,
                        limit: int) -> list[TokenRow]:
        live = "" if include_revoked else "AND revoked_at IS NULL "
        return [schema.token_from_row(r) for r in await self._rows(
            f"SELECT {_TOKENS} FROM tokens WHERE user_id = ? {live}ORDER BY created_at LIMIT ?",
            (user_id, limit))]

    async def live_token_ids(self, user_id: int) -> list[str]:
        return [r[0] for r in await self._rows(
            "SELECT id FROM tokens WHERE user_id = ? AND revoked_at IS NULL", (user_id,))]

    async def dead_tokens(self, token_ids: Sequence[str]) -> list[str]:
        out: list[str] = []
        for chunk in chunks(list(token_ids)):
            out += [r[0] for r in await self._rows(
                f"SELECT t.id FROM tokens t JOIN users u ON u.id = t.user_id "
                f"WHERE t.id IN ({marks(len(chunk))}) AND (t.revoked_at IS NOT NULL "
                f"OR u.disabled_at IS NOT NULL)", chunk)]
        return out

    async def user(self, user_id: int) -> UserRow | None:
        row = await self._one(f"SELECT {_USERS} FROM users WHERE id = ?", (user_id,))
        return schema.user_from_row(row) if row is not None else None

    async def user_by_name(self, name: str) -> UserRow | None:
        row = await self._one(f"SELECT {_USERS} FROM users WHERE name = ?", (name,))
        return schema.user_from_row(row) if row is not None else None

    async def users(self) -> list[UserRow]:
        return [schema.user_from_row(r) for r in await self._rows(
            f"SELECT {_USERS} FROM users ORDER BY id")]

    async def next_user_id(self) -> int:
        return await self._max_id("users") + 1

    async def audit(self, user_id: int | None, limit: int) -> list[tuple[Any, ...]]:
        if user_id is None:
            rows = await self._rows(
                f"SELECT * FROM (SELECT {_AUDIT} FROM audit ORDER BY id DESC LIMIT ?) AS a "
                "ORDER BY id", (limit,))
        else:
            rows = await self._rows(
                f"SELECT * FROM (SELECT {_AUDIT} FROM audit WHERE user_id = ? "
                "ORDER BY id DESC LIMIT ?) AS a ORDER BY id", (user_id, limit))
        return [tuple(r) for r in rows]
