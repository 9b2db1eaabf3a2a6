"""``tidewater backup``: a consistent copy of a store, taken while the controller runs.

SQLite: SQLite's online backup API (``sqlite3.Connection.backup``) copies the
file page by page from a read-only connection in one read transaction. In
WAL mode a reader sees one committed state and does not block the
controller's writer, so the copy is exactly the store as of one commit,
whatever the controller is doing. The copy is written to a temporary file
beside the destination, checked (``PRAGMA quick_check``), flushed to disk
and only then renamed into place: a crash mid-backup never leaves a
half-written file under the destination's name.

PostgreSQL: ``pg_dump -Fc`` (the custom format ``pg_restore`` reads), run
against a snapshot exported by a REPEATABLE READ transaction that also counts
the tasks, so the count printed is the count in the dump. Without
``pg_dump`` on PATH the backup is refused with the route to take instead.

sqlite3, asyncpg and pg_dump failures are translated here into
:class:`~tidewater.errors.StoreError`; a destination that exists is a
:class:`~tidewater.errors.ConfigError` unless ``force`` is given.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg

from ...errors import ConfigError, StoreError
from .base import redact
from .postgres import CONNECT_TIMEOUT, ERRORS
from .postgres_migrations import MARKER_TABLE
from .sqlite_migrations import is_corrupt, recognise

PG_DUMP_ROUTE = (
    "install PostgreSQL's client programs (Debian: `apt install postgresql-client`, of the "
    "server's major version or newer) and run `tidewater backup` again, or run "
    "`pg_dump -Fc -f DEST URL` yourself; restore with `pg_restore -d NEW_DB_URL DEST`"
)


@dataclass(frozen=True)
class BackupResult:
    """What was copied: where to, how many tasks, how many bytes, and how to restore it."""

    store: str
    dest: str
    tasks: int
    size: int
    restore: str


async def backup(db: str, dest: str | Path, *, force: bool = False) -> BackupResult:
    """Copy the store ``db`` (a path, ``sqlite:///path`` or ``postgresql://…``) to ``dest``.

    Raises :class:`ConfigError` if ``dest`` exists (and not ``force``) or ``db``
    names no store, :class:`StoreError` (or a :class:`~tidewater.errors.StoreRefused`)
    if it cannot be read or copied. Not cancel-safe in the middle of a SQLite copy
    (the worker thread finishes it); the temporary file is removed either way.
    """
    target = await anyio.to_thread.run_sync(_target, dest, force)
    if db.startswith(("postgresql://", "postgres://")):
        return await _backup_postgres(db, target)
    path = db.removeprefix("sqlite://") if db.startswith("sqlite://") else db
    if "://" in path:
        raise ConfigError(f"unknown store {db!r}: use a path, sqlite:///path or "
                          "postgresql://user@host/db")
    return await anyio.to_thread.run_sync(_backup_sqlite, path, target)


def _target(dest: str | Path, force: bool) -> Path:
    target = Path(dest).expanduser().absolute()
    if target.exists() and not force:
        raise ConfigError(f"{target} exists: give another DEST, or --force to replace it")
    if not target.parent.is_dir():
        raise ConfigError(f"cannot write {target}: {target.parent} is not a directory")
    return target


# ---------------------------------------------------------------------- SQLite


def _backup_sqlite(path: str, target: Path) -> BackupResult:
    if not Path(path).is_file():
        raise ConfigError(f"there is no store at {path}: give --db the controller's store")
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        try:
            if recognise(path) == 0:
                raise ConfigError(f"{path} is empty: it holds no Tidewater store yet")
            src = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True)
            try:
                dst = sqlite3.connect(tmp)
                try:
                    # One step (pages=-1): one read transaction, so one committed state.
                    src.backup(dst)
                    check = dst.execute("PRAGMA quick_check").fetchall()
                    if check != [("ok",)]:
                        raise StoreError(f"the copy of {path} does not check out: "
                                         f"{'; '.join(str(r[0]) for r in check[:3])}")
                    tasks = int(dst.execute("SELECT count(*) FROM tasks").fetchone()[0])
                    # A self-contained file: no -wal beside it to be lost in a copy.
                    dst.execute("PRAGMA journal_mode=DELETE")
                finally:
                    dst.close()
            finally:
                src.close()
        except sqlite3.Error as exc:
            if is_corrupt(exc):
                raise StoreError(f"backup of {path} failed: the store is damaged ({exc}); "
                                 f"salvage it with `sqlite3 {path} .recover`") from exc
            raise StoreError(f"backup of {path} to {target} failed: {exc}") from exc
        _durable_rename(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return BackupResult(
        store=path, dest=str(target), tasks=tasks, size=target.stat().st_size,
        restore=(f"stop the controller and start it on the copy: "
                 f"`tidewater server --db {target}` (or copy it over {path} first)"))


def _durable_rename(tmp: Path, target: Path) -> None:
    """Flush ``tmp`` to disk, rename it to ``target``, flush the directory entry."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    dfd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# ---------------------------------------------------------------------- PostgreSQL


def _without_password(url: str) -> tuple[str, str | None]:
    """``url`` with its password taken out (for argv, which others can read) and the password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc)), parts.password


async def _backup_postgres(url: str, target: Path) -> BackupResult:
    shown = redact(url)
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        raise StoreError(f"cannot back up {shown}: pg_dump is not on PATH; {PG_DUMP_ROUTE}")
    dsn, password = _without_password(url)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = password
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        try:
            conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
        except ERRORS as exc:
            raise StoreError(f"cannot back up {shown}: {type(exc).__name__}: {exc}") from exc
        try:
            # The snapshot pg_dump copies is the one the tasks are counted in.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", MARKER_TABLE):
                    raise StoreError(f"cannot back up {shown}: it is not a Tidewater store "
                                     f"(no {MARKER_TABLE} table)")
                snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
                tasks = int(await conn.fetchval("SELECT count(*) FROM tasks"))
                proc = await anyio.run_process(
                    [pg_dump, "-Fc", "--no-owner", f"--snapshot={snapshot}", "-f", str(tmp),
                     f"--dbname={dsn}"], env=env, check=False)
        except ERRORS as exc:
            raise StoreError(f"backup of {shown} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            with anyio.move_on_after(CONNECT_TIMEOUT, shield=True):
                with contextlib.suppress(*ERRORS):
                    await conn.close()
        if proc.returncode != 0:
            why = proc.stderr.decode(errors="replace").strip().splitlines()
            raise StoreError(f"pg_dump of {shown} failed (exit code {proc.returncode}): "
                             f"{why[-1] if why else 'no message'}")
        await anyio.to_thread.run_sync(_durable_rename, tmp, target)
    except BaseException:
        with anyio.CancelScope(shield=True), contextlib.suppress(OSError):
            await anyio.Path(tmp).unlink()
        raise
    return BackupResult(
        store=shown, dest=str(target), tasks=tasks, size=(await anyio.Path(target).stat()).st_size,
        restore=("restore into a new, empty database: `createdb NEW` then "
                 f"`pg_restore --no-owner -d postgresql://…/NEW {target}`, and start "
                 "`tidewater server --db postgresql://…/NEW`"))
