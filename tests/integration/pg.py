"""The private PostgreSQL cluster of `scripts/services.sh start` (127.0.0.1:55432), for tests.

A test gets a database of its own (:func:`fresh_database`): created with a
unique name, dropped afterwards. The helpers are synchronous (fixtures and
``Cluster.rows`` are): each runs its few statements with asyncpg on an event
loop of its own in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import asyncpg

from tidewater.controller.store.postgres import numbered

PORT = int(os.environ.get("TIDEWATER_PG_PORT", "55432"))
ADMIN_URL = f"postgresql://postgres@127.0.0.1:{PORT}/postgres"
HOW_TO = ("start it with `sudo scripts/services.sh start` (or `scripts/services.sh start "
          "postgres` as root for this one service)")


def _run(coro_fn: Any) -> Any:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro_fn()).result()


def ping() -> str | None:
    """None if the cluster answers, else why not."""
    async def go() -> None:
        conn = await asyncpg.connect(ADMIN_URL, timeout=5)
        await conn.close()

    try:
        _run(go)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def admin(*statements: str) -> None:
    """Run statements on the cluster's ``postgres`` database (outside a transaction)."""
    async def go() -> None:
        conn = await asyncpg.connect(ADMIN_URL, timeout=10)
        try:
            for sql in statements:
                await conn.execute(sql)
        finally:
            await conn.close()

    _run(go)


@contextmanager
def fresh_database() -> Iterator[str]:
    """The URL of a new, empty database, dropped (connections and all) afterwards."""
    name = f"tw_test_{uuid.uuid4().hex[:16]}"
    admin(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{PORT}/{name}"
    finally:
        admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def rows(url: str, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
    """Rows of one query with ``?`` placeholders, read directly as an operator would."""
    async def go() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return [tuple(r) for r in await conn.fetch(numbered(sql), *params)]
        finally:
            await conn.close()

    result: list[tuple[object, ...]] = _run(go)
    return result


def tables(url: str) -> list[str]:
    """The store's tables (its own migration table left out)."""
    return [str(r[0]) for r in rows(
        url, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
        "AND tablename != 'tidewater_schema'")]
