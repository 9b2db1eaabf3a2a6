"""SQLite store: WAL, one writer task with group commit, a separate reader.

Reads go through aiosqlite. The writer's transaction runs on a plain
sqlite3 connection that nothing else touches. A small batch (what one
request or one report writes: at most :data:`INLINE_ROWS` rows) commits on
the event loop itself: in WAL mode with ``synchronous=NORMAL`` a commit
only appends to the WAL, a fraction of the cost of handing it to a thread
and back, which is two of the hops on a task's path. A larger batch runs as
one call in a worker thread, so the loop goes on reading sockets meanwhile.
The writer connection never checkpoints (``wal_autocheckpoint=0``): the
checkpoint, which copies the WAL into the database and syncs both, runs
on its own connection in a worker thread after every
:data:`CHECKPOINT_ROWS` rows written, so no commit on the loop waits for
the disk.

Writers never touch the database themselves. They hand the writer a
:class:`~.writer.WriteOp` (semantic writes plus an ``on_commit`` callback) through an
ordered queue; when more than ``queue_size`` ops wait, ``write`` blocks its
caller, so a lagging disk slows the readers of sockets down instead of
growing memory. The writer
drains every op that is waiting, runs them in one transaction, commits, then
calls each ``on_commit`` in order: acknowledgements and notifications are
only ever sent for committed work.

Inside a batch, writes are grouped per :class:`~.base.Op` and run with
``executemany`` in :data:`~.schema.OP_ORDER` (inserts of tasks before
updates, updates before event rows); each Op's SQL is in :data:`WRITE_SQL`.
Updates write absolute values, so the result equals running the ops one by
one, in far fewer round trips. The queue and the writer loop are
:class:`~.writer.GroupCommit`, shared with the PostgreSQL backend.

A failed commit raises :class:`~tidewater.errors.StoreError` out of the
writer, which stops the task group that owns the store (the controller)
rather than acknowledge work that is not stored. sqlite3 and aiosqlite
errors are translated into StoreError, saying what failed and on which file.

Opening never writes to a file it then refuses: the file is first read
through a read-only connection (:func:`.sqlite_migrations.recognise`), and a
file that is not a database or is damaged (:class:`StoreCorrupt`), holds
someone else's tables (:class:`StoreForeign`) or a newer schema
(:class:`StoreTooNew`) is refused before the journal mode is set or a
migration runs.
The schema and its migrations are in :mod:`.sqlite_migrations`.
"""
from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from ...errors import StoreCorrupt, StoreError
from . import schema
from .base import Op, Recovered
from .reads import SqlReads
from .schema import INSERT_COLUMNS, TASK_UPDATE_COLUMNS, columns
from .sqlite_migrations import is_corrupt, migrate, recognise
from .writer import Buckets, GroupCommit, QueuedWrites

log = logging.getLogger("tidewater.store")


def _insert(table: str, op: Op, verb: str = "INSERT") -> str:
    cols = INSERT_COLUMNS[op]
    return f"{verb} INTO {table} ({columns(cols)}) VALUES ({', '.join('?' * len(cols))})"


WRITE_SQL: dict[Op, str] = {
    Op.INSERT_USER: _insert("users", Op.INSERT_USER),
    Op.INSERT_SITE: _insert("sites", Op.INSERT_SITE),
    Op.UPSERT_APP: _insert("apps", Op.UPSERT_APP)
    + " ON CONFLICT (site_id, name) DO UPDATE SET command = excluded.command, "
    "params = excluded.params, description = excluded.description, "
    "function = excluded.function, hooks = excluded.hooks",
    Op.UPSERT_JOB: _insert("batch_jobs", Op.UPSERT_JOB)
    + " ON CONFLICT (id) DO UPDATE SET state = excluded.state, "
    "scheduler_id = excluded.scheduler_id, submitted_at = excluded.submitted_at, "
    "started_at = excluded.started_at, ended_at = excluded.ended_at, "
    "reason = excluded.reason, error = excluded.error, token_hash = excluded.token_hash",
    Op.UPDATE_SITE_LIMITS: "UPDATE sites SET limits = ? WHERE id = ?",
    Op.UPSERT_PILOT: _insert("pilots", Op.UPSERT_PILOT)
    + " ON CONFLICT (pilot_id) DO UPDATE SET site_id = excluded.site_id, "
    "owner_id = excluded.owner_id, batch_job = excluded.batch_job, since = excluded.since",
    Op.REVOKE_JOB_TOKENS:
        "UPDATE tokens SET revoked_at = ? WHERE batch_job = ? AND revoked_at IS NULL",
    Op.DISABLE_USER: "UPDATE users SET disabled_at = ? WHERE id = ?",
    Op.INSERT_TOKEN: _insert("tokens", Op.INSERT_TOKEN),
    Op.REVOKE_TOKEN: "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
    Op.REVOKE_USER_TOKENS:
        "UPDATE tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
    Op.INSERT_TASK: _insert("tasks", Op.INSERT_TASK),
    Op.INSERT_PARENT: _insert("task_parents", Op.INSERT_PARENT, "INSERT OR IGNORE"),
    Op.UPSERT_DATA: _insert("task_data", Op.UPSERT_DATA, "INSERT OR REPLACE"),
    Op.UPDATE_TASK: "UPDATE tasks SET "
    + ", ".join(f"{c} = ?" for c in TASK_UPDATE_COLUMNS) + " WHERE id = ?",
    Op.REROUTE_TASK: "UPDATE tasks SET site_id = ?, extra = ? WHERE id = ?",
    Op.INSERT_EVENT: _insert("events", Op.INSERT_EVENT),
    Op.INSERT_TAG: _insert("task_tags", Op.INSERT_TAG, "INSERT OR IGNORE"),
    Op.INSERT_SUBMISSION: _insert("submissions", Op.INSERT_SUBMISSION, "INSERT OR IGNORE"),
    Op.INSERT_AUDIT: _insert("audit", Op.INSERT_AUDIT),
    Op.DELETE_PILOT: "DELETE FROM pilots WHERE pilot_id = ?",
}
assert set(WRITE_SQL) == set(Op) == set(schema.OP_ORDER)

INLINE_ROWS = 64
"""A batch of at most this many rows commits on the event loop (see the module docstring)."""

CHECKPOINT_ROWS = 4000
"""Rows written between two WAL checkpoints (SQLite's own default is ~1000 pages)."""

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=10000",
    "PRAGMA foreign_keys=ON",
    "PRAGMA cache_size=-65536",
)


class SqliteStore(QueuedWrites, SqlReads):
    """The embedded store. An async context manager owning its writer task.

    ``after_batch`` (if set) is called after the ``on_commit`` callbacks of
    every committed batch: the place to flush notifications aggregated over
    the batch. Entering raises :class:`StoreError` if the file cannot be
    opened, holds a newer schema, or is not a Tidewater store.
    """

    _live_tasks_from = "tasks INDEXED BY tasks_live"

    def __init__(self, path: str | Path, *, queue_size: int = 1000, max_batch: int = 5000) -> None:
        self.path = str(path)
        self.url = self.path
        # The writer's connection is plain sqlite3, used by one worker-thread
        # call per batch (see _commit_batch); readers share an aiosqlite one.
        self._wconn: sqlite3.Connection | None = None
        self._rconn: aiosqlite.Connection | None = None
        self._queue = GroupCommit(self._commit_batch, queue_size=queue_size,
                                  max_batch=max_batch)
        self._tg: anyio.abc.TaskGroup | None = None
        self._since_checkpoint = 0
        self._checkpointing = False
        self._cconn: sqlite3.Connection | None = None


    async def __aenter__(self) -> SqliteStore:
        try:
            if self.path != ":memory:":
                await anyio.Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # Recognised read-only first: a file that is refused is never written to.
            await anyio.to_thread.run_sync(recognise, self.path)
            self._wconn = await anyio.to_thread.run_sync(self._open_writer)
            self._rconn = await self._open()
        except sqlite3.DatabaseError as exc:
            await self._close_conns()
            if is_corrupt(exc):
                raise StoreCorrupt(self.path, str(exc)) from exc
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        except (sqlite3.Error, OSError) as exc:
            await self._close_conns()
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        except BaseException:
            await self._close_conns()
            raise
        await self._start_writer()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self._stop_writer()
        finally:
            with anyio.CancelScope(shield=True):
                await self._close_conns()

    async def _open(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in _PRAGMAS:
            await conn.execute(pragma)
        return conn

    def _open_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            for pragma in _PRAGMAS:
                conn.execute(pragma)
            conn.execute("PRAGMA wal_autocheckpoint=0")  # see _checkpoint
            migrate(conn, self.path)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _close_conns(self) -> None:
        if self._rconn is not None:
            try:
                await self._rconn.close()
            except (sqlite3.Error, ValueError):
                pass
        if self._cconn is not None:
            self._cconn.close()
        if self._wconn is not None:
            self._wconn.close()
        self._rconn = self._wconn = self._cconn = None

    # ------------------------------------------------------------------ writes


    async def _commit_batch(self, ordered: Buckets) -> None:
        # One worker-thread call runs the whole transaction: one hand-off per
        # batch instead of one per statement. Not abandoned on cancellation,
        # so a commit that started always finishes before the writer stops.
        rows = sum(len(r) for _, r in ordered)
        try:
            if rows <= INLINE_ROWS:
                self._apply(ordered)
            else:
                await anyio.to_thread.run_sync(self._apply, ordered)
        except sqlite3.Error as exc:
            # A failed commit means memory and disk disagree: stop the
            # controller rather than acknowledge work that is not stored.
            raise _failed(f"commit to {self.path}", self.path, exc) from exc
        self._since_checkpoint += rows
        if self._since_checkpoint >= CHECKPOINT_ROWS and not self._checkpointing \
                and self._tg is not None:
            self._since_checkpoint = 0
            self._checkpointing = True
            self._tg.start_soon(self._checkpoint)

    async def _checkpoint(self) -> None:
        """Copy the WAL into the database, off the loop (PASSIVE: writers go on meanwhile)."""
        try:
            await anyio.to_thread.run_sync(self._checkpoint_sync)
        except sqlite3.Error as exc:
            # Not fatal: the WAL only grows until a later checkpoint succeeds.
            log.warning("checkpoint of %s failed: %s", self.path, exc)
        finally:
            self._checkpointing = False

    def _checkpoint_sync(self) -> None:
        if self._cconn is None:
            self._cconn = sqlite3.connect(self.path, isolation_level=None,
                                          check_same_thread=False)
            self._cconn.execute("PRAGMA busy_timeout=10000")
        self._cconn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _apply(self, ordered: Buckets) -> None:
        conn = self._wconn
        assert conn is not None
        conn.execute("BEGIN")
        try:
            for op, rows in ordered:
                conn.executemany(WRITE_SQL[op], rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ reads

    async def recover(self) -> Recovered:
        rec = await super().recover()
        # Reading every live task filled the reader's page cache (up to cache_size);
        # give it back, as the controller keeps those tasks in memory from now on.
        await self._rows("PRAGMA shrink_memory")
        return rec

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        if self._rconn is None:
            raise StoreError(f"store {self.path} is not open")
        try:
            async with self._rconn.execute(sql, params) as cur:
                rows = await cur.fetchall()
        except sqlite3.Error as exc:
            raise _failed(f"reading store {self.path}", self.path, exc) from exc
        return [tuple(r) for r in rows]


def _failed(doing: str, path: str, exc: sqlite3.Error) -> StoreError:
    """The StoreError for ``exc``; damage found while running says what to do."""
    if is_corrupt(exc):
        return StoreError(
            f"{doing} failed: the file is damaged ({exc}); stop the controller, then "
            f"restore the store from a backup (`tidewater backup`) or salvage it with "
            f"`sqlite3 {path} .recover | sqlite3 NEW.db`")
    return StoreError(f"{doing} failed: {exc}")
