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
from .model import TokenRow
from .store import schema
from .store.base import Write

if TYPE_CHECKING:
    from .core import Controller, Peer, Principal

log = logging.getLogger("tidewater.controller")

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
        if parsed.legacy:
            row = await self.c.store.legacy_token(auth.legacy_hash(raw))
            ok = row is not None
        else:
            row = await self.c.store.token(parsed.id)
            ok = row is not None and row.kind == parsed.kind and auth.check(parsed, row.salt,
                                                                            row.hash)
        if not ok or row is None:
            raise InvalidRequest("invalid token", "auth")
        tid, kind, user_id, site_id, batch_job = row.id, row.kind, row.user_id, row.site_id, \
            row.batch_job
        expires_at, revoked_at = row.expires_at, row.revoked_at
        user = await self.c.store.user(user_id)
        if user is None or user.disabled_at is not None:
            raise InvalidRequest("this user has been removed", "auth")
        if revoked_at is not None:
            raise InvalidRequest(f"token {tid} was revoked", "auth")
        if expires_at is not None and expires_at <= time.time():
            raise InvalidRequest(f"token {tid} has expired", "auth")
        who = Principal(user_id=user_id, user=user.name, token_id=tid, expires_at=expires_at,
                        is_admin=user.is_admin and kind == "user", remote=remote)
        if kind == "site":
            if site_id not in self.c.sites:
                raise InvalidRequest("invalid token", "auth")
            who.site_id = site_id
        elif kind == "pilot":
            job = self.c.batch.jobs.get(batch_job or 0)
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
            if live:
                dead.update(await self.c.store.dead_tokens(live))
            if dead:
                log.info("closing the connections of %d expired or revoked tokens", len(dead))
                self.close_sessions(sorted(dead), "token expired or revoked")

    # ------------------------------------------------------------------ minting

    @staticmethod
    def row(kind: auth.TokenKind, user_id: int, *, site_id: int | None = None,
            batch_job: int | None = None, name: str = "", expires_at: float | None = None,
            ) -> tuple[auth.Minted, Write]:
        m = auth.mint(kind)
        return m, schema.insert_token(TokenRow(
            id=m.id, kind=kind, user_id=user_id, site_id=site_id, batch_job=batch_job,
            salt=m.salt, hash=m.hash, name=name, created_at=time.time(), expires_at=expires_at,
            revoked_at=None))

    @staticmethod
    def audit(who: Principal | None, action: str, obj: str, **detail: Any
              ) -> Write:
        """An audit row, written in the same commit as what it records."""
        return schema.insert_audit(
            who.user_id if who else None, who.user if who else "",
            who.token_id if who else "", who.remote if who else "", action, obj, detail)

    def _info(self, r: TokenRow) -> P.TokenInfo:
        site = self.c.sites.get(r.site_id) if r.site_id is not None else None
        return P.TokenInfo(id=r.id, kind=r.kind, site=site.name if site else "",
                           batch_job=r.batch_job or 0, name=r.name, created_at=r.created_at,
                           expires_at=r.expires_at, revoked_at=r.revoked_at)

    # ------------------------------------------------------------------ requests

    async def create(self, who: Principal, peer: Peer, msg: P.CreateToken) -> None:
        if who.site_id is not None:
            raise InvalidRequest("only a user token can create tokens")
        if len(msg.name) > 200:
            raise InvalidRequest("a token's name is at most 200 characters")
        if msg.expires_in is not None and not 0 < msg.expires_in <= 10 * 365 * 86400:
            raise InvalidRequest("expires_in must be between 0 and 10 years (in seconds)")
        if len(await self.c.store.live_token_ids(who.user_id)) >= MAX_TOKENS_PER_USER:
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
        rows = await self.c.store.tokens_of(who.user_id, include_revoked=msg.include_revoked,
                                            limit=10_000)
        peer.send(P.TokenList(req_id=msg.req_id, tokens=[self._info(r) for r in rows]))

    async def revoke(self, who: Principal, peer: Peer, msg: P.RevokeToken) -> None:
        """Revoke one of your tokens (admins: anyone's); its connections close at once."""
        row = await self.c.store.token(msg.id)
        if row is None or (row.user_id != who.user_id and not who.is_admin) or (
            who.site_id is not None
        ):
            raise NotFound(f"no token {msg.id!r}")
        if row.revoked_at is not None:
            raise InvalidRequest(f"token {msg.id} is already revoked", "final")
        tid = row.id

        def committed() -> None:
            self.close_sessions([tid], "token revoked")
            peer.send(P.Done(req_id=msg.req_id))

        await self.c._write(
            [schema.revoke_token(tid, time.time()),
             self.audit(who, "token.revoke", tid, kind=row.kind)], committed)

    # ------------------------------------------------------------------ users (admins)

    def _admin(self, who: Principal) -> None:
        if not who.is_admin:
            # Not "not found": the operation exists, the caller may not use it.
            raise InvalidRequest("only an admin can manage users", "forbidden")

    async def add_user(self, who: Principal, peer: Peer, msg: P.AddUser) -> None:
        self._admin(who)
        appmod.check_name("user", msg.name)
        if await self.c.store.user_by_name(msg.name) is not None:
            raise InvalidRequest(f"user {msg.name!r} already exists", "exists")
        uid = await self.c.store.next_user_id()
        expires = time.time() + msg.expires_in if msg.expires_in else None
        minted, stmt = self.row("user", uid, name="first token", expires_at=expires)
        await self.c._write(
            [schema.insert_user(uid, msg.name, minted.id, time.time(), msg.admin), stmt,
             self.audit(who, "user.add", msg.name, admin=msg.admin, token=minted.id)],
            lambda: peer.send(P.UserAdded(req_id=msg.req_id, name=msg.name,
                                          token=minted.token)),
        )

    async def remove_user(self, who: Principal, peer: Peer, msg: P.RemoveUser) -> None:
        """Disable a user: every token revoked, every connection closed; data is kept."""
        self._admin(who)
        user = await self.c.store.user_by_name(msg.name)
        if user is None or user.disabled_at is not None:
            raise NotFound(f"no user {msg.name!r}")
        if user.id == who.user_id:
            raise InvalidRequest("you cannot remove yourself")
        uid = user.id
        tids = await self.c.store.live_token_ids(uid)
        now = time.time()

        def committed() -> None:
            self.close_sessions(tids, "user removed")
            peer.send(P.Done(req_id=msg.req_id))

        await self.c._write(
            [schema.disable_user(uid, now), schema.revoke_user_tokens(uid, now),
             self.audit(who, "user.remove", msg.name, tokens=len(tids))], committed)

    async def list_users(self, who: Principal, peer: Peer, msg: P.ListUsers) -> None:
        self._admin(who)
        rows = await self.c.store.users()
        peer.send(P.UserList(req_id=msg.req_id, users=[
            P.UserInfo(name=u.name, admin=u.is_admin, created_at=u.created_at,
                       removed_at=u.disabled_at) for u in rows]))

    async def list_audit(self, who: Principal, peer: Peer, msg: P.ListAudit) -> None:
        """Your own audit entries (admins: everyone's with ``everyone``), newest last."""
        limit = max(1, min(msg.limit, 10_000))
        if msg.everyone:
            self._admin(who)
            rows = await self.c.store.audit(None, limit)
        else:
            rows = await self.c.store.audit(who.user_id, limit)
        peer.send(P.AuditList(req_id=msg.req_id, entries=[
            P.AuditEntry(id=r[0], time=r[1], user=r[2], token_id=r[3], remote=r[4], action=r[5],
                         object=r[6], detail=r[7]) for r in rows]))

