"""Users, as the server's owner manages them at the command line (``tidewater user add``).

These work on the store directly (also while a controller runs on it:
SQLite WAL). The first user is an admin; admins can then add and remove
users over the websocket (``tidewater user add`` with an admin's token).
A removed user's tokens are revoked; their connections close within one
heartbeat of the controller noticing (at their next authentication, or the
controller's own removal path when done over the websocket).
"""

from __future__ import annotations

import time

from .. import apps
from ..errors import InvalidRequest, NotFound
from .access import mint
from .store import schema
from .store.open import open_store

OWNER = "(owner, at the command line)"


async def add_user(db: str, name: str, *, admin: bool | None = None,
                   expires_in: float | None = None) -> str:
    """Create a user in the store ``db`` names (a path or URL); return their token (shown once).

    ``admin`` defaults to True for the first user only. Raises
    :class:`InvalidRequest` if the name is taken or malformed, StoreError if
    the store cannot be opened or written.
    """
    apps.check_name("user", name)
    async with open_store(db) as store:
        if await store.user_by_name(name) is not None:
            raise InvalidRequest(f"user {name!r} already exists", "exists")
        uid = await store.next_user_id()
        if admin is None:
            admin = uid == 1
        expires = time.time() + expires_in if expires_in else None
        minted, token_row = mint("user", uid, name="first token", expires_at=expires,
                                 now=time.time())
        await store.commit([
            schema.insert_user(uid, name, minted.id, time.time(), admin),
            token_row,
            schema.insert_audit(None, OWNER, "", "local", "user.add", name,
                                {"admin": admin, "token": minted.id}),
        ])
    return minted.token


async def remove_user(db: str, name: str) -> int:
    """Disable a user and revoke every token of theirs; returns how many were revoked.

    Raises :class:`NotFound` for no such (or an already removed) user.
    """
    async with open_store(db) as store:
        user = await store.user_by_name(name)
        if user is None or user.disabled_at is not None:
            raise NotFound(f"no user {name!r}")
        n = len(await store.live_token_ids(user.id))
        now = time.time()
        await store.commit([
            schema.disable_user(user.id, now), schema.revoke_user_tokens(user.id, now),
            schema.insert_audit(None, OWNER, "", "local", "user.remove", name, {}, now),
        ])
    return n


async def list_users(db: str) -> list[tuple[str, float, bool, float | None]]:
    """Every user: (name, created at, admin, removed at)."""
    async with open_store(db) as store:
        rows = await store.users()
    return [(u.name, u.created_at, u.is_admin, u.disabled_at) for u in rows]
