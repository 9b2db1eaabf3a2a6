"""Tokens in the store: salted, never the secret; tokens from before token ids still work."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from pathlib import Path

import anyio
import pytest

from tidewater import proto as P
from tidewater.config import ControllerConfig
from tidewater.controller import auth
from tidewater.controller.core import Controller
from tidewater.controller.store.sqlite_migrations import MIGRATIONS
from tidewater.controller.users import add_user
from tidewater.errors import InvalidRequest


def hello(token: str) -> P.Hello:
    return P.Hello(role="client", proto_version=P.PROTO_VERSION, token=token)


async def test_store_keeps_salted_hashes_only(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    token = await add_user(db, "alice")
    parsed = auth.parse(token)
    assert parsed is not None and not parsed.legacy
    rows = sqlite3.connect(db).execute("SELECT id, salt, hash FROM tokens").fetchall()
    assert [r[0] for r in rows] == [parsed.id]
    (tid, salt, stored), = rows
    assert len(salt) == 32 and stored == auth.digest(salt, parsed.secret)
    dump = "\n".join(sqlite3.connect(db).iterdump())
    assert parsed.secret not in dump and token not in dump


async def test_tokens_minted_before_token_ids_still_work(tmp_path: Path) -> None:
    """A store of schema 2 (unsalted hashes in users/sites) migrates; its tokens stay valid."""
    db = str(tmp_path / "old.db")
    conn = sqlite3.connect(db)
    for version, script in enumerate(MIGRATIONS[:2], start=1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;")
    user_token = "twu_" + secrets.token_urlsafe(32)
    site_token = "tws_" + secrets.token_urlsafe(32)
    sha = lambda t: hashlib.sha256(t.encode()).hexdigest()  # noqa: E731 - the old scheme
    conn.execute("INSERT INTO users (id, name, token_hash, created_at) VALUES (1, 'old', ?, ?)",
                 (sha(user_token), time.time()))
    conn.execute("INSERT INTO sites (id, owner_id, name, token_hash, created_at) "
                 "VALUES (1, 1, 'hpc', ?, ?)", (sha(site_token), time.time()))
    conn.commit()
    conn.close()
    c = Controller(ControllerConfig(db=db))
    async with anyio.create_task_group() as tg:
        await tg.start(c.run)
        who = await c.authenticate(hello(user_token))
        assert (who.user, who.is_admin, who.token_id) == ("old", True, "legacy-u1")
        site = await c.authenticate(P.Hello(role="agent", proto_version=1, token=site_token))
        assert site.site_id == 1
        with pytest.raises(InvalidRequest, match="invalid token"):
            await c.authenticate(hello("twu_" + secrets.token_urlsafe(32)))
        tg.cancel_scope.cancel()
