"""Tokens, users and the audit trail, as the controller enforces them.

Three kinds of token (:mod:`.auth`), least privilege first:

* pilot -- one batch job: serves only pilots of that job, revoked when it ends;
* site  -- one site: its agent and (by hand) its pilots;
* user  -- everything the user owns; may expire; admins may add and remove users.

Every token is a row of ``tokens`` (salted hash, never the secret) and can
be listed by its id and revoked. Each live connection is remembered under
its token id: revoking the token, disabling its user, or reaching its
expiry closes the connection (expiry is checked every heartbeat interval).

The audit trail records who did what, when and from where for token
creation and revocation, users, sites, apps, submissions, cancellations and
batch jobs. Secrets never reach the log or the audit trail.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import anyio

from .. import apps as appmod
from .. import proto as P
from .. import states
from ..errors import InvalidRequest, NotFound
from . import auth
from .store import sqlite as st

if TYPE_CHECKING:
    from .core import Controller, Peer, Principal

log = logging.getLogger("tidewater.controller")

_json = P.encode_json
MAX_TOKENS_PER_USER = 1000


class Tokens:
    def __init__(self, c: Controller) -> None:
        self.c = c
        # token id -> peer id -> (peer, expires_at)
        self.sessions: dict[str, dict[int, tuple[Peer, float | None]]] = {}

    # ------------------------------------------------------------------ authentication

    async def authenticate(self, raw: str, remote: str = "") -> Principal:
        """The owner of a token, or InvalidRequest(code "auth") saying why not.

        The same "invalid token" answer for unknown ids and wrong secrets; only
        a holder of the right secret learns that a token expired or was revoked.
        """
        from .core import Principal

        parsed = auth.parse(raw)
        if parsed is None:
            raise InvalidRequest("invalid token", "auth")
        cols = f"SELECT {st.TOKEN_COLUMNS} FROM tokens"
        if parsed.legacy:
            row = await self.c.store.fetchone(f"{cols} WHERE salt = '' AND hash = ?",
                                              (auth.legacy_hash(raw),))
            ok = row is not None
        else:
            row = await self.c.store.fetchone(f"{cols} WHERE id = ?", (parsed.id,))
            ok = row is not None and row[1] == parsed.kind and auth.check(parsed, row[5], row[6])
        if not ok or row is None:
            raise InvalidRequest("invalid token", "auth")
        tid, kind, user_id, site_id, batch_job = row[0], row[1], row[2], row[3], row[4]
        expires_at, revoked_at = row[9], row[10]
        user = await self.c.store.fetchone(
            "SELECT name, is_admin, disabled_at FROM users WHERE id = ?", (user_id,))
        if user is None or user[2] is not None:
            raise InvalidRequest("this user has been removed", "auth")
        if revoked_at is not None:
            raise InvalidRequest(f"token {tid} was revoked", "auth")
        if expires_at is not None and expires_at <= time.time():
            raise InvalidRequest(f"token {tid} has expired", "auth")
        who = Principal(user_id=user_id, user=user[0], token_id=tid, expires_at=expires_at,
                        is_admin=bool(user[1]) and kind == "user", remote=remote)
        if kind == "site":
            if site_id not in self.c.sites:
                raise InvalidRequest("invalid token", "auth")
            who.site_id = site_id
        elif kind == "pilot":
            job = self.c.batch.jobs.get(batch_job)
            if job is None or job.state in states.JOB_FINAL:
                raise InvalidRequest(f"batch job {batch_job} has ended; its token with it", "auth")
            who.site_id, who.batch_job = job.site_id, job.id
        return who

    def attach(self, who: Principal, peer: Peer) -> None:
        if who.token_id:
            self.sessions.setdefault(who.token_id, {})[peer.id] = (peer, who.expires_at)

    def detach(self, who: Principal, peer: Peer) -> None:
        peers = self.sessions.get(who.token_id)
        if peers is not None:
            peers.pop(peer.id, None)
            if not peers:
                del self.sessions[who.token_id]

    def close_sessions(self, token_ids: list[str], reason: str) -> None:
        for tid in token_ids:
            for peer, _exp in list(self.sessions.pop(tid, {}).values()):
                peer.close(4003, reason)

    async def expiry_loop(self) -> None:
        """Every heartbeat interval, close connections whose token expired or was revoked.

        Revocation over the websocket closes at once; this also catches a token
        revoked, or a user removed, by the owner at the command line on the store.
        """
        while True:
            await anyio.sleep(self.c.t.heartbeat_interval)
            now = time.time()
            dead = {tid for tid, peers in self.sessions.items()
                    if any(exp is not None and exp <= now for _p, exp in peers.values())}
            live = [tid for tid in self.sessions if tid not in dead]
            for i in range(0, len(live), 500):
                chunk = live[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows = await self.c.store.fetchall(
                    f"SELECT t.id FROM tokens t JOIN users u ON u.id = t.user_id "
                    f"WHERE t.id IN ({marks}) AND (t.revoked_at IS NOT NULL "
                    f"OR u.disabled_at IS NOT NULL)", chunk)
                dead.update(r[0] for r in rows)
            if dead:
                log.info("closing the connections of %d expired or revoked tokens", len(dead))
                self.close_sessions(sorted(dead), "token expired or revoked")

    # ------------------------------------------------------------------ minting

    @staticmethod
    def row(kind: auth.TokenKind, user_id: int, *, site_id: int | None = None,
            batch_job: int | None = None, name: str = "", expires_at: float | None = None,
            ) -> tuple[auth.Minted, tuple[st.Stmt, Any]]:
        m = auth.mint(kind)
        return m, (st.INSERT_TOKEN, (m.id, kind, user_id, site_id, batch_job, m.salt, m.hash,
                                     name, time.time(), expires_at, None))

    @staticmethod
    def audit(who: Principal | None, action: str, obj: str, **detail: Any
              ) -> tuple[st.Stmt, Any]:
        """An audit row, written in the same commit as what it records."""
        return (st.INSERT_AUDIT, (
            time.time(), who.user_id if who else None, who.user if who else "",
            who.token_id if who else "", who.remote if who else "", action, obj,
            _json(detail),
        ))

    def _info(self, r: tuple[Any, ...]) -> P.TokenInfo:
        site = self.c.sites.get(r[3]) if r[3] is not None else None
        return P.TokenInfo(id=r[0], kind=r[1], site=site.name if site else "",
                           batch_job=r[4] or 0, name=r[7], created_at=r[8], expires_at=r[9],
                           revoked_at=r[10])

    # ------------------------------------------------------------------ requests

    async def create(self, who: Principal, peer: Peer, msg: P.CreateToken) -> None:
        if who.site_id is not None:
            raise InvalidRequest("only a user token can create tokens")
        if len(msg.name) > 200:
            raise InvalidRequest("a token's name is at most 200 characters")
        if msg.expires_in is not None and not 0 < msg.expires_in <= 10 * 365 * 86400:
            raise InvalidRequest("expires_in must be between 0 and 10 years (in seconds)")
        row = await self.c.store.fetchone(
            "SELECT count(*) FROM tokens WHERE user_id = ? AND revoked_at IS NULL",
            (who.user_id,))
        if row is not None and row[0] >= MAX_TOKENS_PER_USER:
            raise InvalidRequest(f"{MAX_TOKENS_PER_USER} live tokens already: revoke some first")
        expires = time.time() + msg.expires_in if msg.expires_in else None
        if msg.kind == "site":
            if not msg.site:
                raise InvalidRequest("a site token needs the site's name")
            site = self.c._site_of(who, msg.site)
            minted, stmt = self.row("site", who.user_id, site_id=site.id, name=msg.name,
                                    expires_at=expires)
        else:
            minted, stmt = self.row("user", who.user_id, name=msg.name, expires_at=expires)
        info = P.TokenInfo(id=minted.id, kind=msg.kind, site=msg.site or "", name=msg.name,
                           created_at=time.time(), expires_at=expires)
        await self.c._write(
            [stmt, self.audit(who, "token.create", minted.id, kind=msg.kind, site=msg.site or "",
                              expires_at=expires)],
            lambda: peer.send(P.TokenCreated(req_id=msg.req_id, info=info, token=minted.token)),
        )

    async def list(self, who: Principal, peer: Peer, msg: P.ListTokens) -> None:
        rows = await self.c.store.fetchall(
            f"SELECT {st.TOKEN_COLUMNS} FROM tokens WHERE user_id = ? "
            + ("" if msg.include_revoked else "AND revoked_at IS NULL ")
            + "ORDER BY created_at LIMIT 10000", (who.user_id,))
        peer.send(P.TokenList(req_id=msg.req_id, tokens=[self._info(r) for r in rows]))

    async def revoke(self, who: Principal, peer: Peer, msg: P.RevokeToken) -> None:
        """Revoke one of your tokens (admins: anyone's); its connections close at once."""
        row = await self.c.store.fetchone(
            f"SELECT {st.TOKEN_COLUMNS} FROM tokens WHERE id = ?", (msg.id,))
        if row is None or (row[2] != who.user_id and not who.is_admin) or who.site_id is not None:
            raise NotFound(f"no token {msg.id!r}")
        if row[10] is not None:
            raise InvalidRequest(f"token {msg.id} is already revoked", "final")
        tid = row[0]

        def committed() -> None:
            self.close_sessions([tid], "token revoked")
            peer.send(P.Done(req_id=msg.req_id))

        await self.c._write(
            [(st.REVOKE_TOKEN, (time.time(), tid)),
             self.audit(who, "token.revoke", tid, kind=row[1])], committed)

    # ------------------------------------------------------------------ users (admins)

    def _admin(self, who: Principal) -> None:
        if not who.is_admin:
            # Not "not found": the operation exists, the caller may not use it.
            raise InvalidRequest("only an admin can manage users", "forbidden")

    async def add_user(self, who: Principal, peer: Peer, msg: P.AddUser) -> None:
        self._admin(who)
        appmod.check_name("user", msg.name)
        if await self.c.store.fetchone("SELECT 1 FROM users WHERE name = ?", (msg.name,)):
            raise InvalidRequest(f"user {msg.name!r} already exists", "exists")
        row = await self.c.store.fetchone("SELECT max(id) FROM users")
        uid = (row[0] or 0) + 1 if row else 1
        expires = time.time() + msg.expires_in if msg.expires_in else None
        minted, stmt = self.row("user", uid, name="first token", expires_at=expires)
        await self.c._write(
            [(st.INSERT_USER, (uid, msg.name, f"token:{minted.id}", time.time(),
                               int(msg.admin))), stmt,
             self.audit(who, "user.add", msg.name, admin=msg.admin, token=minted.id)],
            lambda: peer.send(P.UserAdded(req_id=msg.req_id, name=msg.name,
                                          token=minted.token)),
        )

    async def remove_user(self, who: Principal, peer: Peer, msg: P.RemoveUser) -> None:
        """Disable a user: every token revoked, every connection closed; data is kept."""
        self._admin(who)
        row = await self.c.store.fetchone(
            "SELECT id FROM users WHERE name = ? AND disabled_at IS NULL", (msg.name,))
        if row is None:
            raise NotFound(f"no user {msg.name!r}")
        if row[0] == who.user_id:
            raise InvalidRequest("you cannot remove yourself")
        uid = row[0]
        tids = [r[0] for r in await self.c.store.fetchall(
            "SELECT id FROM tokens WHERE user_id = ? AND revoked_at IS NULL", (uid,))]
        now = time.time()

        def committed() -> None:
            self.close_sessions(tids, "user removed")
            peer.send(P.Done(req_id=msg.req_id))

        await self.c._write(
            [(st.DISABLE_USER, (now, uid)), (st.REVOKE_USER_TOKENS, (now, uid)),
             self.audit(who, "user.remove", msg.name, tokens=len(tids))], committed)

    async def list_users(self, who: Principal, peer: Peer, msg: P.ListUsers) -> None:
        self._admin(who)
        rows = await self.c.store.fetchall(
            "SELECT name, is_admin, created_at, disabled_at FROM users ORDER BY id")
        peer.send(P.UserList(req_id=msg.req_id, users=[
            P.UserInfo(name=r[0], admin=bool(r[1]), created_at=r[2], removed_at=r[3])
            for r in rows]))

    async def list_audit(self, who: Principal, peer: Peer, msg: P.ListAudit) -> None:
        """Your own audit entries (admins: everyone's with ``everyone``), newest last."""
        limit = max(1, min(msg.limit, 10_000))
        if msg.everyone:
            self._admin(who)
            rows = await self.c.store.fetchall(
                "SELECT * FROM (SELECT id, time, user, token_id, remote, action, object, detail "
                "FROM audit ORDER BY id DESC LIMIT ?) ORDER BY id", (limit,))
        else:
            rows = await self.c.store.fetchall(
                "SELECT * FROM (SELECT id, time, user, token_id, remote, action, object, detail "
                "FROM audit WHERE user_id = ? ORDER BY id DESC LIMIT ?) ORDER BY id",
                (who.user_id, limit))
        peer.send(P.AuditList(req_id=msg.req_id, entries=[
            P.AuditEntry(id=r[0], time=r[1], user=r[2], token_id=r[3], remote=r[4], action=r[5],
                         object=r[6], detail=r[7]) for r in rows]))

