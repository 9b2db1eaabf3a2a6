"""SQLite's schema: versioned migrations, each one transaction, the version in ``user_version``.

Step ``n`` brings a store from version ``n - 1`` to ``n``; :func:`migrate`
runs the missing ones on open. The column orders the backend reads and
binds are in :mod:`.schema`, not here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path

from ...errors import StoreCorrupt, StoreForeign, StoreRefused, StoreTooNew
from .schema import FINAL_STATES, SCHEMA_VERSION

log = logging.getLogger("tidewater.store")

FINAL_SQL = "(" + ", ".join(f"'{s}'" for s in FINAL_STATES) + ")"

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
    CREATE INDEX tasks_live ON tasks (id) WHERE state NOT IN {FINAL_SQL};
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
    # 7: pilots welcomed and not let go, kept across controller restarts
    """
    CREATE TABLE pilots (
        pilot_id TEXT PRIMARY KEY,
        site_id INTEGER NOT NULL,
        owner_id INTEGER NOT NULL,
        batch_job INTEGER NOT NULL DEFAULT 0,
        since REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    # 8: every listing read through an index, whatever the store's size (see reads.py):
    # one per filter a listing starts from (owner, site, app; the owner's state one
    # exists), each ending in id for paging; tags keyed by owner first.
    """
    CREATE INDEX tasks_owner ON tasks (owner_id, id);
    CREATE INDEX tasks_owner_site ON tasks (owner_id, site_id, id);
    CREATE INDEX tasks_owner_app ON tasks (owner_id, app, id);
    CREATE TABLE task_tags_v8 (
        owner_id INTEGER NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        task_id INTEGER NOT NULL,
        PRIMARY KEY (owner_id, key, value, task_id)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO task_tags_v8 (owner_id, key, value, task_id)
        SELECT t.owner_id, g.key, g.value, g.task_id
        FROM task_tags g JOIN tasks t ON t.id = g.task_id;
    DROP TABLE task_tags;
    ALTER TABLE task_tags_v8 RENAME TO task_tags;
    """,
    # 9: what a failed function task's function raised (proto.RemoteError, msgpack)
    """
    ALTER TABLE tasks ADD COLUMN raised BLOB;
    """,
]


TIDEWATER_TABLES = frozenset({"users", "sites", "apps", "tasks", "events", "submissions"})
"""Tables every Tidewater store has had since schema version 1."""

CORRUPT_CODES = frozenset({"SQLITE_NOTADB", "SQLITE_CORRUPT"})


def is_corrupt(exc: sqlite3.Error) -> bool:
    """SQLite says the file is not a database, or a damaged one."""
    name = getattr(exc, "sqlite_errorname", "")
    text = str(exc)
    return (name in CORRUPT_CODES or name.startswith("SQLITE_CORRUPT")
            or "not a database" in text or "malformed" in text)


def tables(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name")]


def check(conn: sqlite3.Connection, where: str) -> int:
    """The schema version of the database on ``conn``, after making sure it is one this
    Tidewater may open: reads only (the header and the schema), writes nothing.

    Raises :class:`StoreCorrupt` (not a database, or its first page or schema is
    damaged), :class:`StoreTooNew` and :class:`StoreForeign`.
    """
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        # Reading the whole schema parses page 1 and every table's definition.
        found = tables(conn)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        if is_corrupt(exc):
            raise StoreCorrupt(where, str(exc)) from exc
        raise
    if version > SCHEMA_VERSION:
        raise StoreTooNew(where, version, SCHEMA_VERSION)
    if version == 0 and found:
        raise StoreForeign(where, found)
    if version > 0 and not TIDEWATER_TABLES <= set(found):
        # A version number but not our tables: someone else's use of user_version.
        raise StoreForeign(where, found or ["no tables"])
    return version


def recognise(path: str) -> int:
    """The schema version of the SQLite file at ``path`` (0: no file, or an empty one),
    read through a read-only connection so a file that is refused is left byte for
    byte as it was (no journal-mode change, no checkpoint, no migration).

    Raises :class:`StoreCorrupt`, :class:`StoreTooNew`, :class:`StoreForeign`, or
    sqlite3.Error / OSError for a file that cannot be read (the caller translates).
    """
    if path == ":memory:" or not path:
        return 0
    try:
        if os.stat(path).st_size == 0:
            return 0
    except FileNotFoundError:
        return 0
    # A read-only connection to a file in WAL mode still makes its -wal and -shm
    # files; those it made are taken away again when the file is refused.
    beside = [f"{path}-wal", f"{path}-shm"]
    existed = {b for b in beside if os.path.exists(b)}
    conn = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True)
    try:
        return check(conn, path)
    except StoreRefused:
        conn.close()
        for b in beside:
            if b not in existed:
                with contextlib.suppress(OSError):
                    os.remove(b)
        raise
    finally:
        conn.close()


def migrate(conn: sqlite3.Connection, where: str) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION`, one versioned step at a time.

    Raises :class:`StoreTooNew` for a store of a newer Tidewater, and
    :class:`StoreForeign` for a database at ``where`` that holds tables but is
    not a Tidewater store (checked again here, on the writer's connection).
    """
    version = check(conn, where)
    for target in range(version + 1, SCHEMA_VERSION + 1):
        script = MIGRATIONS[target - 1]
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {target};\nCOMMIT;")
        if version:  # a new store is created, not upgraded: one line for it below
            log.info("store migrated to schema version %d", target)
    if not version:
        log.info("store created (schema version %d)", SCHEMA_VERSION)
