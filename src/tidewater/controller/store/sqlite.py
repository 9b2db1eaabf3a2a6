"""SQLite store: WAL, one writer task with group commit, a separate reader.

Reads go through aiosqlite. The writer's transaction runs as one call in a
worker thread on a plain sqlite3 connection that nothing else touches: one
thread hand-off per batch instead of one per statement (BEGIN, each
executemany, COMMIT), which is most of a commit's latency on loopback.

Writers never touch the database themselves. They hand the writer a
:class:`WriteOp` (statements plus an ``on_commit`` callback) through an
ordered queue; when more than ``queue_size`` ops wait, ``write`` blocks its
caller, so a lagging disk slows the readers of sockets down instead of
growing memory. The writer
drains every op that is waiting, runs them in one transaction, commits, then
calls each ``on_commit`` in order: acknowledgements and notifications are
only ever sent for committed work.

Inside a batch, statements are grouped per SQL text and run with
``executemany`` in a fixed order (inserts of tasks before updates, updates
before event rows). Updates write absolute values, so the result equals
running the ops one by one, in far fewer round trips.

aiosqlite errors are translated into :class:`~tidewater.errors.StoreError`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
from anyio.abc import TaskStatus

from ...errors import StoreError

log = logging.getLogger("tidewater.store")

SCHEMA_VERSION = 6

_FINAL_SQL = "('JOB_FINISHED', 'FAILED', 'KILLED')"

MIGRATIONS: list[str] = [
    # 1: the first schema
    f"""
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        token_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL
    );
    CREATE TABLE sites (
        id INTEGER PRIMARY KEY,
        owner_id INTEGER NOT NULL REFERENCES users(id),
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        UNIQUE (owner_id, name)
    );
    CREATE TABLE apps (
        id INTEGER PRIMARY KEY,
        site_id INTEGER NOT NULL REFERENCES sites(id),
        name TEXT NOT NULL,
        command TEXT NOT NULL,
        params TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        UNIQUE (site_id, name)
    );
    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        owner_id INTEGER NOT NULL,
        site_id INTEGER NOT NULL,
        app TEXT NOT NULL,
        state TEXT NOT NULL,
        params TEXT NOT NULL,
        tags TEXT NOT NULL,
        priority INTEGER NOT NULL,
        cores INTEGER NOT NULL,
        gpus INTEGER NOT NULL,
        timeout REAL,
        max_retries INTEGER NOT NULL,
        retries INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        pilot TEXT NOT NULL,
        argv TEXT NOT NULL,
        shell TEXT NOT NULL,
        env TEXT NOT NULL,
        workdir TEXT NOT NULL,
        exit_code INTEGER,
        error TEXT NOT NULL,
        stdout_tail TEXT NOT NULL,
        stderr_tail TEXT NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    );
    CREATE INDEX tasks_owner_state ON tasks (owner_id, state, id);
    CREATE INDEX tasks_live ON tasks (id) WHERE state NOT IN {_FINAL_SQL};
    CREATE TABLE task_tags (
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        task_id INTEGER NOT NULL,
        PRIMARY KEY (key, value, task_id)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        task_id INTEGER NOT NULL,
        from_state TEXT NOT NULL,
        to_state TEXT NOT NULL,
        time REAL NOT NULL,
        data TEXT
    );
    CREATE INDEX events_task ON events (task_id, id);
    CREATE TABLE submissions (
        owner_id INTEGER NOT NULL,
        key TEXT NOT NULL,
        ids TEXT NOT NULL,  -- JSON [first id, count]: a Submit's ids are consecutive
        created_at REAL NOT NULL,
        PRIMARY KEY (owner_id, key)
    ) WITHOUT ROWID;
    """,
    # 2: batch jobs and pilot tokens; per-task launch resources; site limits
    """
    ALTER TABLE tasks ADD COLUMN extra TEXT NOT NULL DEFAULT '';
    ALTER TABLE sites ADD COLUMN limits TEXT NOT NULL DEFAULT '';
    CREATE TABLE batch_jobs (
        id INTEGER PRIMARY KEY,
        site_id INTEGER NOT NULL REFERENCES sites(id),
        owner_id INTEGER NOT NULL,
        state TEXT NOT NULL,
        nodes INTEGER NOT NULL,
        wall_time_min INTEGER NOT NULL,
        queue TEXT NOT NULL,
        project TEXT NOT NULL,
        scheduler_id TEXT NOT NULL DEFAULT '',
        autoscaled INTEGER NOT NULL DEFAULT 0,
        request_key TEXT,
        created_at REAL NOT NULL,
        submitted_at REAL,
        started_at REAL,
        ended_at REAL,
        reason TEXT NOT NULL DEFAULT '',
        error TEXT NOT NULL DEFAULT '',
        token_hash TEXT
    );
    CREATE INDEX batch_jobs_site ON batch_jobs (site_id, state);
    CREATE UNIQUE INDEX batch_jobs_token ON batch_jobs (token_hash) WHERE token_hash IS NOT NULL;
    CREATE UNIQUE INDEX batch_jobs_key ON batch_jobs (site_id, request_key)
        WHERE request_key IS NOT NULL;
    """,
    # 3: tokens with ids, salts, expiry and revocation; admins; the audit trail.
    # Tokens minted before (unsalted hash in users/sites/batch_jobs) move over
    # with an empty salt and stay valid.
    """
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        user_id INTEGER NOT NULL,
        site_id INTEGER,
        batch_job INTEGER,
        salt TEXT NOT NULL,
        hash TEXT NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        expires_at REAL,
        revoked_at REAL
    );
    CREATE INDEX tokens_user ON tokens (user_id);
    CREATE INDEX tokens_legacy ON tokens (hash) WHERE salt = '';
    INSERT INTO tokens (id, kind, user_id, salt, hash, name, created_at)
        SELECT 'legacy-u' || id, 'user', id, '', token_hash, 'first token', created_at
        FROM users;
    INSERT INTO tokens (id, kind, user_id, site_id, salt, hash, name, created_at)
        SELECT 'legacy-s' || id, 'site', owner_id, id, '', token_hash, 'site token', created_at
        FROM sites;
    INSERT INTO tokens (id, kind, user_id, site_id, batch_job, salt, hash, created_at)
        SELECT 'legacy-p' || id, 'pilot', owner_id, site_id, id, '', token_hash, created_at
        FROM batch_jobs WHERE token_hash IS NOT NULL;
    ALTER TABLE users ADD COLUMN is_admin INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN disabled_at REAL;
    UPDATE users SET is_admin = 1 WHERE id = (SELECT min(id) FROM users);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        user_id INTEGER,
        user TEXT NOT NULL,
        token_id TEXT NOT NULL,
        remote TEXT NOT NULL,
        action TEXT NOT NULL,
        object TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_user ON audit (user_id, id);
    """,
    # 4: task dependencies
    """
    CREATE TABLE task_parents (
        child INTEGER NOT NULL,
        parent INTEGER NOT NULL,
        PRIMARY KEY (child, parent)
    ) WITHOUT ROWID;
    CREATE INDEX task_parents_parent ON task_parents (parent);
    """,
    # 5: Python function apps: the callable's import path, msgpack arguments and result
    """
    ALTER TABLE apps ADD COLUMN function TEXT NOT NULL DEFAULT '';
    ALTER TABLE tasks ADD COLUMN func TEXT NOT NULL DEFAULT '';
    ALTER TABLE tasks ADD COLUMN args BLOB;
    ALTER TABLE tasks ADD COLUMN result BLOB;
    """,
    # 6: inputs and outputs: their specs and transfer states, and the inline bytes
    """
    ALTER TABLE tasks ADD COLUMN files BLOB;
    ALTER TABLE apps ADD COLUMN hooks TEXT NOT NULL DEFAULT '';
    CREATE TABLE task_data (
        task_id INTEGER NOT NULL,
        direction TEXT NOT NULL,
        path TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (task_id, direction, path)
    ) WITHOUT ROWID;
    """,
]


_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=10000",
    "PRAGMA foreign_keys=ON",
    "PRAGMA cache_size=-65536",
)


@dataclass(frozen=True)
class Stmt:
    """A write statement; ``rank`` orders its bucket inside a group commit."""

    rank: int
    sql: str


TASK_COLUMNS = (
    "id, owner_id, site_id, app, state, params, tags, priority, cores, gpus, timeout, "
    "max_retries, retries, attempt, pilot, argv, shell, env, workdir, exit_code, error, "
    "stdout_tail, stderr_tail, created_at, started_at, finished_at, extra, func, args, result, "
    "files"
)

INSERT_USER = Stmt(
    0, "INSERT INTO users (id, name, token_hash, created_at, is_admin) VALUES (?, ?, ?, ?, ?)"
)
INSERT_SITE = Stmt(
    1, "INSERT INTO sites (id, owner_id, name, token_hash, created_at) VALUES (?, ?, ?, ?, ?)"
)
UPSERT_APP = Stmt(
    2,
    "INSERT INTO apps (site_id, name, command, params, description, created_at, function, hooks) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (site_id, name) DO UPDATE SET "
    "command = excluded.command, params = excluded.params, description = excluded.description, "
    "function = excluded.function, hooks = excluded.hooks",
)
INSERT_TASK = Stmt(
    10, f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES ({', '.join('?' * 31)})"
)
UPDATE_TASK = Stmt(
    20,
    "UPDATE tasks SET state = ?, retries = ?, attempt = ?, pilot = ?, exit_code = ?, "
    "error = ?, stdout_tail = ?, stderr_tail = ?, started_at = ?, finished_at = ?, result = ?, "
    "files = ? WHERE id = ?",
)
INSERT_EVENT = Stmt(
    30, "INSERT INTO events (id, task_id, from_state, to_state, time, data) VALUES (?, ?, ?, ?, ?, ?)"
)
UPSERT_DATA = Stmt(
    15, "INSERT OR REPLACE INTO task_data (task_id, direction, path, data) VALUES (?, ?, ?, ?)"
)
INSERT_PARENT = Stmt(12, "INSERT OR IGNORE INTO task_parents (child, parent) VALUES (?, ?)")
INSERT_TAG = Stmt(40, "INSERT OR IGNORE INTO task_tags (key, value, task_id) VALUES (?, ?, ?)")
INSERT_SUBMISSION = Stmt(
    50, "INSERT OR IGNORE INTO submissions (owner_id, key, ids, created_at) VALUES (?, ?, ?, ?)"
)

JOB_COLUMNS = (
    "id, site_id, owner_id, state, nodes, wall_time_min, queue, project, scheduler_id, "
    "autoscaled, request_key, created_at, submitted_at, started_at, ended_at, reason, error, "
    "token_hash"
)
UPSERT_JOB = Stmt(
    3,
    f"INSERT INTO batch_jobs ({JOB_COLUMNS}) VALUES ({', '.join('?' * 18)}) "
    "ON CONFLICT (id) DO UPDATE SET state = excluded.state, "
    "scheduler_id = excluded.scheduler_id, submitted_at = excluded.submitted_at, "
    "started_at = excluded.started_at, ended_at = excluded.ended_at, "
    "reason = excluded.reason, error = excluded.error, token_hash = excluded.token_hash",
)
UPDATE_SITE_LIMITS = Stmt(4, "UPDATE sites SET limits = ? WHERE id = ?")
TOKEN_COLUMNS = (
    "id, kind, user_id, site_id, batch_job, salt, hash, name, created_at, expires_at, revoked_at"
)
# Order inside one commit: a job's old pilot tokens are revoked (6) before its new
# one is inserted (8); a token revoked by id (9) may have been inserted in the same batch.
INSERT_TOKEN = Stmt(8, f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ({', '.join('?' * 11)})")
REVOKE_TOKEN = Stmt(9, "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
REVOKE_JOB_TOKENS = Stmt(
    6, "UPDATE tokens SET revoked_at = ? WHERE batch_job = ? AND revoked_at IS NULL"
)
REVOKE_USER_TOKENS = Stmt(
    9, "UPDATE tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL"
)
DISABLE_USER = Stmt(7, "UPDATE users SET disabled_at = ? WHERE id = ?")
INSERT_AUDIT = Stmt(
    60, "INSERT INTO audit (time, user_id, user, token_id, remote, action, object, detail) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

Params = Sequence[Any]


@dataclass
class WriteOp:
    stmts: list[tuple[Stmt, Params]]
    on_commit: Callable[[], None] | None = None
    done: anyio.Event | None = field(default=None)


class SqliteStore:
    """The embedded store. An async context manager owning its writer task.

    ``after_batch`` (if set) is called after the ``on_commit`` callbacks of
    every committed batch: the place to flush notifications aggregated over
    the batch.
    """

    def __init__(self, path: str | Path, *, queue_size: int = 1000, max_batch: int = 5000) -> None:
        self.path = str(path)
        self._queue_size = queue_size
        self._max_batch = max_batch
        # The writer's connection is plain sqlite3, used by one worker-thread
        # call per batch (see _commit_batch); readers share an aiosqlite one.
        self._wconn: sqlite3.Connection | None = None
        self._rconn: aiosqlite.Connection | None = None
        # Ops wait here in the order they were queued. Queuing never awaits,
        # so the order of writes is exactly the order of the code that made
        # them (ids allocated in memory reach the disk, and the callbacks, in
        # that order); only the backpressure wait that follows is async.
        self._ops: deque[WriteOp] = deque()
        self._has_ops = anyio.Event()
        self._has_room = anyio.Event()
        self._open_for_writes = False
        self._tg: anyio.abc.TaskGroup | None = None
        self.after_batch: Callable[[], None] | None = None
        self.batches = 0
        self.ops_committed = 0

    async def __aenter__(self) -> SqliteStore:
        if self.path != ":memory:":
            await anyio.Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._wconn = await anyio.to_thread.run_sync(self._open_writer)
            self._rconn = await self._open()
        except (sqlite3.Error, OSError) as exc:
            await self._close_conns()
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self._open_for_writes = True
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        await self._tg.start(self._writer)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._tg is not None
        # The writer drains what is queued, then ends.
        self._open_for_writes = False
        self._has_ops.set()
        try:
            await self._tg.__aexit__(None, None, None)
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
            migrate(conn)
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
        if self._wconn is not None:
            self._wconn.close()
        self._rconn = self._wconn = None

    # ------------------------------------------------------------------ writes

    def write_nowait(
        self, stmts: list[tuple[Stmt, Params]], on_commit: Callable[[], None] | None = None,
        done: anyio.Event | None = None,
    ) -> None:
        """Queue a write at once, in order, without waiting for room."""
        if not self._open_for_writes:
            raise StoreError("the store is closed")
        self._ops.append(WriteOp(stmts, on_commit, done))
        self._has_ops.set()

    async def write(
        self, stmts: list[tuple[Stmt, Params]], on_commit: Callable[[], None] | None = None
    ) -> None:
        """Queue a write (committed later, ``on_commit`` called after); wait while the queue is full.

        The op is queued before the first await, so writes keep the order in
        which callers made them. Cancel-safe: if cancelled while waiting for
        room, the op stays queued and is committed.
        """
        self.write_nowait(stmts, on_commit)
        while len(self._ops) > self._queue_size:
            self._has_room = anyio.Event() if self._has_room.is_set() else self._has_room
            await self._has_room.wait()

    async def commit(self, stmts: list[tuple[Stmt, Params]]) -> None:
        """Queue a write and wait until it is committed."""
        done = anyio.Event()
        self.write_nowait(stmts, None, done)
        await done.wait()

    async def _writer(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        ops = self._ops
        while True:
            if not ops:
                if not self._open_for_writes:
                    return
                self._has_ops = anyio.Event()
                await self._has_ops.wait()
                continue
            batch = [ops.popleft() for _ in range(min(len(ops), self._max_batch))]
            self._has_room.set()
            await self._commit_batch(batch)
            self.batches += 1
            self.ops_committed += len(batch)
            for op in batch:
                if op.on_commit is not None:
                    try:
                        op.on_commit()
                    except Exception:
                        log.exception("on_commit callback failed")
                if op.done is not None:
                    op.done.set()
            if self.after_batch is not None:
                try:
                    self.after_batch()
                except Exception:
                    log.exception("after_batch callback failed")

    async def _commit_batch(self, batch: Iterable[WriteOp]) -> None:
        buckets: dict[Stmt, list[Params]] = {}
        for op in batch:
            for stmt, params in op.stmts:
                buckets.setdefault(stmt, []).append(params)
        ordered = sorted(buckets.items(), key=lambda kv: kv[0].rank)
        # One worker-thread call runs the whole transaction: one hand-off per
        # batch instead of one per statement. Not abandoned on cancellation,
        # so a commit that started always finishes before the writer stops.
        try:
            await anyio.to_thread.run_sync(self._apply, ordered)
        except sqlite3.Error as exc:
            # A failed commit means memory and disk disagree: stop the
            # controller rather than acknowledge work that is not stored.
            raise StoreError(f"commit to {self.path} failed: {exc}") from exc

    def _apply(self, ordered: list[tuple[Stmt, list[Params]]]) -> None:
        conn = self._wconn
        assert conn is not None
        conn.execute("BEGIN")
        try:
            for stmt, rows in ordered:
                conn.executemany(stmt.sql, rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ reads

    async def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        assert self._rconn is not None, "store is not open"
        try:
            async with self._rconn.execute(sql, params) as cur:
                rows = await cur.fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"query failed: {exc}") from exc
        return [tuple(r) for r in rows]

    async def fetchone(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION`, one versioned step at a time."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"store schema version {version} is newer than this Tidewater ({SCHEMA_VERSION}); "
            "upgrade Tidewater"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        script = MIGRATIONS[target - 1]
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {target};\nCOMMIT;")
        log.info("store migrated to schema version %d", target)
