"""Users, as the server's owner manages them at the command line (``tidewater user add``).

These work on the store directly (also while a controller runs on it:
SQLite WAL). The first user is an admin; admins can then add and remove
users over the websocket (``tidewater user add`` with an admin's token).
A removed user's tokens are revoked; their connections close within one
heartbeat of the controller noticing (at their next authentication, or the
controller's own removal path when done over the websocket).
"""

from __future__ import annotations

import json
import time

from .. import apps
from ..errors import InvalidRequest, NotFound
from .store import sqlite as st
from .store.sqlite import SqliteStore
from .tokens import Tokens


async def add_user(db: str, name: str, *, admin: bool | None = None,
                   expires_in: float | None = None) -> str:
    """Create a user in the store at ``db``; return their token (shown only once).

    ``admin`` defaults to True for the first user only. Raises
    :class:`InvalidRequest` if the name is taken or malformed.
    """
    apps.check_name("user", name)
    async with SqliteStore(db) as store:
        if await store.fetchone("SELECT 1 FROM users WHERE name = ?", (name,)):
            raise InvalidRequest(f"user {name!r} already exists", "exists")
        row = await store.fetchone("SELECT max(id) FROM users")
        uid = (row[0] or 0) + 1 if row else 1
        if admin is None:
            admin = uid == 1
        expires = time.time() + expires_in if expires_in else None
        minted, token_row = Tokens.row("user", uid, name="first token", expires_at=expires)
        await store.commit([
            (st.INSERT_USER, (uid, name, f"token:{minted.id}", time.time(), int(admin))),
            token_row,
            (st.INSERT_AUDIT, (time.time(), None, "(owner, at the command line)", "", "local",
                               "user.add", name, json.dumps({"admin": admin,
                                                             "token": minted.id}))),
        ])
    return minted.token


async def remove_user(db: str, name: str) -> int:
    """Disable a user and revoke every token of theirs; returns how many were revoked."""
    async with SqliteStore(db) as store:
        row = await store.fetchone(
            "SELECT id FROM users WHERE name = ? AND disabled_at IS NULL", (name,))
        if row is None:
            raise NotFound(f"no user {name!r}")
        n = await store.fetchone(
            "SELECT count(*) FROM tokens WHERE user_id = ? AND revoked_at IS NULL", (row[0],))
        now = time.time()
        await store.commit([
            (st.DISABLE_USER, (now, row[0])), (st.REVOKE_USER_TOKENS, (now, row[0])),
            (st.INSERT_AUDIT, (now, None, "(owner, at the command line)", "", "local",
                               "user.remove", name, "{}")),
        ])
    return int(n[0]) if n else 0


async def list_users(db: str) -> list[tuple[str, float, bool, float | None]]:
    async with SqliteStore(db) as store:
        rows = await store.fetchall(
            "SELECT name, created_at, is_admin, disabled_at FROM users ORDER BY id")
    return [(r[0], r[1], bool(r[2]), r[3]) for r in rows]
