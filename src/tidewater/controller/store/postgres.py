"""PostgreSQL store (asyncpg): one writer connection with group commit, a small read pool.

For teams that outgrow one process's SQLite file: ``--db
postgresql://user@host/db``. The semantics are SQLite's, write for write.

Writers never touch the database themselves. They hand the writer a
:class:`~.writer.WriteOp` (semantic writes plus an ``on_commit`` callback)
through an ordered queue (:class:`~.writer.GroupCommit`, the one the SQLite
backend uses). Ordering guarantee: writes are committed in the order they
were queued, never overtaken; the writer drains every op that is waiting,
runs them in one transaction on its own connection, commits, then calls each
``on_commit`` in queue order and then ``after_batch``: acknowledgements and
notifications are only ever sent for committed work. Inside the transaction,
writes are grouped per :class:`~.base.Op` and run with one ``executemany``
each, in :data:`~.schema.OP_ORDER`; each Op's SQL is in :data:`WRITE_SQL`.
Updates write absolute values, so the result equals running the ops one by
one.

Backpressure: when more than ``queue_size`` ops wait, ``write`` blocks its
caller, so a lagging database slows the readers of sockets down instead of
growing memory. Cancel safety: ``write`` cancelled while waiting for room
leaves its op queued (it is committed); a commit that started is shielded
from cancellation and bounded by the connection's command timeout, so it
always finishes (or fails) before the writer stops.

A failed commit raises :class:`~tidewater.errors.StoreError` out of the
writer, which stops the task group that owns the store (the controller)
rather than acknowledge work that is not stored. asyncpg and OSError errors
never leave this module: they become StoreError, saying what failed and on
which database (its URL without the password).

Reads go through a small pool (:data:`POOL_SIZE` connections) and run the
queries of :mod:`.reads`. The schema and its versioned migrations are in
:mod:`.postgres_migrations`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import anyio
import asyncpg

from ...errors import LeadershipLost, StoreError
from . import schema
from .base import Op, redact
from .postgres_migrations import migrate
from .reads import SqlReads
from .schema import INSERT_COLUMNS, TASK_UPDATE_COLUMNS
from .writer import Buckets, GroupCommit, QueuedWrites

POOL_SIZE = 4
CONNECT_TIMEOUT = 15.0
COMMAND_TIMEOUT = 120.0
"""Seconds any one statement (a whole commit's executemany included) may take."""

ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError, ValueError,
)
"""What asyncpg (and the network under it) raises; translated into StoreError here."""


def _q(name: str) -> str:
    return f'"{name}"'


def _insert(table: str, op: Op, conflict: str = "") -> str:
    cols = INSERT_COLUMNS[op]
    values = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    sql = f"INSERT INTO {table} ({', '.join(map(_q, cols))}) VALUES ({values})"
    return f"{sql} {conflict}" if conflict else sql


def _set_excluded(*cols: str) -> str:
    return ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in cols)


WRITE_SQL: dict[Op, str] = {
    Op.INSERT_USER: _insert("users", Op.INSERT_USER),
    Op.INSERT_SITE: _insert("sites", Op.INSERT_SITE),
    Op.UPSERT_APP: _insert("apps", Op.UPSERT_APP, "ON CONFLICT (site_id, name) DO UPDATE SET "
                           + _set_excluded("command", "params", "description", "function",
                                           "hooks")),
    Op.UPSERT_JOB: _insert("batch_jobs", Op.UPSERT_JOB, "ON CONFLICT (id) DO UPDATE SET "
                           + _set_excluded("state", "scheduler_id", "submitted_at",
                                           "started_at", "ended_at", "reason", "error",
                                           "token_hash")),
    Op.UPDATE_SITE_LIMITS: "UPDATE sites SET limits = $1 WHERE id = $2",
    Op.UPSERT_PILOT: _insert("pilots", Op.UPSERT_PILOT, "ON CONFLICT (pilot_id) DO UPDATE SET "
                             + _set_excluded("site_id", "owner_id", "batch_job", "since")),
    Op.REVOKE_JOB_TOKENS:
        "UPDATE tokens SET revoked_at = $1 WHERE batch_job = $2 AND revoked_at IS NULL",
    Op.DISABLE_USER: "UPDATE users SET disabled_at = $1 WHERE id = $2",
    Op.INSERT_TOKEN: _insert("tokens", Op.INSERT_TOKEN),
    Op.REVOKE_TOKEN: "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
    Op.REVOKE_USER_TOKENS:
        "UPDATE tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
    Op.INSERT_TASK: _insert("tasks", Op.INSERT_TASK),
    Op.INSERT_PARENT: _insert("task_parents", Op.INSERT_PARENT, "ON CONFLICT DO NOTHING"),
    Op.UPSERT_DATA: _insert("task_data", Op.UPSERT_DATA,
                            "ON CONFLICT (task_id, direction, path) DO UPDATE SET "
                            + _set_excluded("data")),
    Op.UPDATE_TASK: "UPDATE tasks SET "
    + ", ".join(f"{_q(c)} = ${i}" for i, c in enumerate(TASK_UPDATE_COLUMNS, 1))
    + f" WHERE id = ${len(TASK_UPDATE_COLUMNS) + 1}",
    Op.REROUTE_TASK: "UPDATE tasks SET site_id = $1, extra = $2 WHERE id = $3",
    Op.INSERT_EVENT: _insert("events", Op.INSERT_EVENT),
    Op.INSERT_TAG: _insert("task_tags", Op.INSERT_TAG, "ON CONFLICT DO NOTHING"),
    Op.INSERT_SUBMISSION: _insert("submissions", Op.INSERT_SUBMISSION, "ON CONFLICT DO NOTHING"),
    Op.INSERT_AUDIT: _insert("audit", Op.INSERT_AUDIT),
    Op.DELETE_PILOT: "DELETE FROM pilots WHERE pilot_id = $1",
}
assert set(WRITE_SQL) == set(Op) == set(schema.OP_ORDER)

FENCE_SQL = ("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
             "AND pid = $1 AND granted)")
"""Whether the leader's lock session (by backend pid) still holds its advisory lock."""

_MARK = re.compile(r"\?")


@functools.lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """The ``?`` placeholders of a shared read renumbered ``$1, $2, ...``."""
    n = 0

    def nxt(_m: re.Match[str]) -> str:
        nonlocal n
        n += 1
        return f"${n}"

    return _MARK.sub(nxt, sql)


class PostgresStore(QueuedWrites, SqlReads):
    """The PostgreSQL store. An async context manager owning its writer task.

    Entering connects, migrates the schema (:mod:`.postgres_migrations`) and
    opens the read pool; it raises :class:`StoreError` if the database cannot
    be reached, holds a newer schema, or holds tables that are not a
    Tidewater store's.
    """

    def __init__(self, url: str, *, queue_size: int = 1000, max_batch: int = 5000,
                 pool_size: int = POOL_SIZE) -> None:
        self._dsn = url
        self.url = redact(url)
        self._pool_size = pool_size
        self._wconn: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        self._queue = GroupCommit(self._commit_batch, queue_size=queue_size,
                                  max_batch=max_batch)
        self._tg: anyio.abc.TaskGroup | None = None
        self.fence_pid: int | None = None
        """The backend pid of the session holding the leader's lock (:func:`.leader.fence`):
        each commit checks, last in its transaction, that it still holds it."""

    async def __aenter__(self) -> PostgresStore:
        try:
            with anyio.fail_after(CONNECT_TIMEOUT * 2):
                self._wconn = await asyncpg.connect(
                    self._dsn, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT)
                await migrate(self._wconn, self.url)
                self._pool = await asyncpg.create_pool(
                    self._dsn, min_size=1, max_size=self._pool_size, timeout=CONNECT_TIMEOUT,
                    command_timeout=COMMAND_TIMEOUT)
        except ERRORS as exc:
            await self._close_conns()
            raise StoreError(f"cannot open store {self.url}: {_describe(exc)}") from exc
        except BaseException:
            await self._close_conns()
            raise
        await self._start_writer()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self._stop_writer()
        finally:
            await self._close_conns()

    async def _close_conns(self) -> None:
        with anyio.move_on_after(10, shield=True) as scope:
            for close in (self._pool.close if self._pool is not None else None,
                          self._wconn.close if self._wconn is not None else None):
                if close is not None:
                    try:
                        await close()
                    except ERRORS:
                        pass
        if scope.cancelled_caught:
            if self._pool is not None:
                self._pool.terminate()
            if self._wconn is not None:
                self._wconn.terminate()
        self._pool = self._wconn = None

    # ------------------------------------------------------------------ writes


    async def _commit_batch(self, ordered: Buckets) -> None:
        conn = self._wconn
        assert conn is not None
        # Shielded: a commit that started finishes (bounded by COMMAND_TIMEOUT) even
        # when the writer is cancelled, so nothing acknowledged is half written.
        with anyio.CancelScope(shield=True):
            try:
                async with conn.transaction():
                    for op, rows in ordered:
                        await conn.executemany(WRITE_SQL[op], rows)
                    if self.fence_pid is not None and not await conn.fetchval(
                            FENCE_SQL, self.fence_pid):
                        # Rolled back: another controller may lead this store now.
                        raise LeadershipLost(self.url, "the session holding it has ended")
            except ERRORS as exc:
                # Memory and disk disagree: stop the controller rather than
                # acknowledge work that is not stored.
                raise StoreError(f"commit to {self.url} failed: {_describe(exc)}") from exc

    # ------------------------------------------------------------------ reads

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        if self._pool is None:
            raise StoreError(f"store {self.url} is not open")
        try:
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(numbered(sql), *params)
        except ERRORS as exc:
            raise StoreError(f"reading store {self.url} failed: {_describe(exc)}") from exc
        return [tuple(r) for r in rows]


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, StoreError) else f"{type(exc).__name__}: {text}"
