"""Which of the controllers sharing one store may serve it: the leader's lock.

Several controller processes may be started on one store; exactly one
leads. The others wait, neither listening nor reading the store, until the
lock is theirs.

* PostgreSQL: a session advisory lock on :data:`LOCK_KEY`, held by a
  connection kept only for it (``application_name`` :data:`APP_NAME`, so an
  operator can find it in ``pg_stat_activity``). A standby asks for the lock
  with ``pg_advisory_lock`` and PostgreSQL grants it the moment the leader's
  session ends, so a takeover costs no polling delay. The lock lives as long
  as that session: the leader checks the connection every
  ``Timeouts.leader_check`` and :meth:`Lead.watch` raises
  :class:`~tidewater.errors.LeadershipLost` as soon as it closes or does not
  answer within :data:`CHECK_LIMIT` checks. The server drops a silent
  session's lock only after TCP keepalives fail (:data:`KEEPALIVE`, set on
  that session, about 11 s), later than the leader stops: never two leaders.
  :func:`fence` makes every commit of the PostgreSQL store check, inside its
  transaction, that the lock is still held by this leader's session.
* SQLite: ``flock`` on ``<file>.lock`` beside the database, released by the
  kernel when the process ends; a standby tries again every
  ``Timeouts.leader_check``.
* ``:memory:``: nothing is shared, nothing to lock.

asyncpg and OSError errors never leave this module: they become
:class:`~tidewater.errors.StoreError` (or LeadershipLost).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol

import anyio
import asyncpg

from ...errors import LeadershipLost, StoreError
from .base import redact
from .postgres import CONNECT_TIMEOUT, ERRORS, PostgresStore, _describe
from .sqlite_migrations import recognise

log = logging.getLogger("tidewater.controller.leader")

LOCK_KEY = 0x5469_6465_7761_7465  # "Tidewate": one store, one leader
"""The advisory lock key: the same for every controller of a Tidewater store."""
APP_NAME = "tidewater-leader"
"""``application_name`` of the session that holds the lock."""
CHECK_LIMIT = 3
"""Checks of ``leader_check`` a lock connection may take to answer before it counts as lost."""
KEEPALIVE = {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2",
             "tcp_keepalives_count": "3"}
"""Server-side keepalives of the lock's session: a silent leader's lock is freed after
about 5 + 2 * 3 = 11 s, later than the leader gives up (CHECK_LIMIT checks)."""


class Lead(Protocol):
    """The leader's lock, held while the ``leadership`` context is open."""

    where: str
    """What is locked, for messages (a password never shows)."""

    async def watch(self) -> None:
        """Return never; raise LeadershipLost the moment the lock may be lost."""


class _NoLock:
    where = ":memory:"

    async def watch(self) -> None:
        await anyio.sleep_forever()


class _FileLock:
    def __init__(self, where: str) -> None:
        self.where = where

    async def watch(self) -> None:
        # The kernel holds a flock for as long as this process keeps the file open.
        await anyio.sleep_forever()


class _PgLock:
    def __init__(self, conn: asyncpg.Connection, where: str, check: float) -> None:
        self.conn = conn
        self.where = where
        self.pid: int = conn.get_server_pid()
        self._check = check

    async def watch(self) -> None:
        conn = self.conn
        gone = anyio.Event()
        conn.add_termination_listener(lambda _conn: gone.set())
        while True:
            with anyio.move_on_after(self._check):
                await gone.wait()
            if gone.is_set() or conn.is_closed():
                raise LeadershipLost(self.where, "its database connection closed")
            try:
                with anyio.fail_after(self._check * CHECK_LIMIT):
                    await conn.fetchval("SELECT 1")
            except TimeoutError:
                raise LeadershipLost(self.where, f"its database connection did not answer "
                                                 f"within {self._check * CHECK_LIMIT:g}s") from None
            except ERRORS as exc:
                raise LeadershipLost(self.where, _describe(exc)) from None


@asynccontextmanager
async def leadership(db: str, *, check: float,
                     waiting: Callable[[str], None]) -> AsyncIterator[Lead]:
    """Hold the leader's lock of store ``db`` (a ``--db`` value) while the context is open.

    Waits as long as another controller holds it, calling ``waiting(where)``
    once first. Raises :class:`StoreError` if the database cannot be reached
    to take the lock (a standby already waiting tries again). Cancel-safe:
    cancelled while waiting, it holds nothing.
    """
    if db.startswith(("postgresql://", "postgres://")):
        async with _pg_leadership(db, check, waiting) as lead:
            yield lead
        return
    path = db.removeprefix("sqlite://") if db.startswith("sqlite://") else db
    if not path or path == ":memory:":
        yield _NoLock()
        return
    # Recognise the file (read-only) before the lock file is made beside it: a store
    # that will be refused is left with nothing new next to it.
    await anyio.to_thread.run_sync(_refuse_early, path)
    async with _file_leadership(path + ".lock", check, waiting) as flead:
        yield flead


def _refuse_early(path: str) -> None:
    """Raise the store's own refusal (StoreRefused) for a SQLite file it would refuse.

    Other errors (an unreadable file) are left to the store's open, which says them.
    """
    try:
        recognise(path)
    except (sqlite3.Error, OSError):
        pass


@asynccontextmanager
async def _file_leadership(path: str, check: float,
                           waiting: Callable[[str], None]) -> AsyncIterator[_FileLock]:
    try:
        # Before the store's first open, which would make its directory too.
        await anyio.Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = await anyio.to_thread.run_sync(os.open, path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open the leader's lock file {path}: "
                         f"{exc.strerror or exc}") from exc
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    waiting(path)
                    told = True
                await anyio.sleep(check)
            except OSError as exc:
                raise StoreError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        yield _FileLock(path)
    finally:
        os.close(fd)  # releases the lock


async def _pg_connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT, server_settings={
        "application_name": APP_NAME, **KEEPALIVE})


@asynccontextmanager
async def _pg_leadership(url: str, check: float,
                         waiting: Callable[[str], None]) -> AsyncIterator[_PgLock]:
    where = redact(url)
    told = False
    while True:
        conn: asyncpg.Connection | None = None
        try:
            conn = await _pg_connect(url)
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
                if not told:
                    waiting(where)
                    told = True
                # Granted by the server the moment the leader's session ends.
                await conn.execute(f"SELECT pg_advisory_lock({LOCK_KEY})", timeout=None)
            break
        except ERRORS as exc:
            await _close(conn)
            if not told:
                raise StoreError(f"cannot take the leader's lock on {where}: "
                                 f"{_describe(exc)}") from exc
            log.warning("standby: lost the database while waiting for the leader's lock "
                        "on %s (%s); trying again", where, _describe(exc))
            await anyio.sleep(check)
        except BaseException:
            await _close(conn)
            raise
    try:
        yield _PgLock(conn, where, check)
    finally:
        await _close(conn)  # ends the session: the lock is released


async def _close(conn: asyncpg.Connection | None) -> None:
    if conn is None:
        return
    with anyio.move_on_after(2, shield=True) as scope:
        try:
            await conn.close()
        except ERRORS:
            pass
    if scope.cancelled_caught:
        conn.terminate()


def fence(store: object, lead: Lead) -> None:
    """Have ``store`` commit only while ``lead`` holds the lock (PostgreSQL; no-op elsewhere).

    Every transaction of the PostgreSQL store then checks, before it
    commits, that the lock's session still holds an advisory lock, and
    raises LeadershipLost rather than write to a store another leader may own.
    """
    if isinstance(store, PostgresStore) and isinstance(lead, _PgLock):
        store.fence_pid = lead.pid
