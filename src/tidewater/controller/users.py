"""Users, created by the server's owner at the command line (``tidewater user add``)."""

from __future__ import annotations

import time

from .. import apps
from ..errors import InvalidRequest
from . import auth
from .store import sqlite as st
from .store.sqlite import SqliteStore


async def add_user(db: str, name: str) -> str:
    """Create a user in the store at ``db``; return their token (shown only once).

    Works while a controller is running on the same store (SQLite WAL).
    Raises :class:`InvalidRequest` if the name is taken or malformed.
    """
    apps.check_name("user", name)
    token = auth.mint("user")
    async with SqliteStore(db) as store:
        if await store.fetchone("SELECT 1 FROM users WHERE name = ?", (name,)):
            raise InvalidRequest(f"user {name!r} already exists", "exists")
        await store.commit([(st.INSERT_USER, (None, name, auth.token_hash(token), time.time()))])
    return token


async def list_users(db: str) -> list[tuple[str, float]]:
    async with SqliteStore(db) as store:
        rows = await store.fetchall("SELECT name, created_at FROM users ORDER BY id")
    return [(r[0], r[1]) for r in rows]
