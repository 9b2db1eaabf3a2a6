"""Tokens, users and the audit trail: who may connect, who may do what, and the record of it.

Pure: no await, no clock (``now`` is an argument), no store, no sockets.
What a request needs of the store (a token's row, a user, a count) is read
by the driver first and comes in as an argument; what it changes goes out
as :class:`~.effects.Effects` writes, and connections are named by id.

Three kinds of token (:mod:`.auth`), least privilege first:

* pilot -- one batch job: serves only pilots of that job, revoked when it ends;
* site  -- one site: its agent and (by hand) its pilots;
* user  -- everything the user owns; may expire; admins may add and remove users.

Every token is a stored row (salted hash, never the secret), listed by its
id and revoked by it. Each live connection is remembered as a session of
its token: revoking the token, removing its user, or reaching its expiry
closes the connection (:meth:`TokenBook.close_sessions`,
:meth:`TokenBook.expired`, and the store's answer on revoked tokens for
:meth:`TokenBook.live_token_ids`).

The audit trail records who did what, when and from where: token creation
and revocation, users, sites, apps, submissions, cancellations and batch
jobs. An entry names a token by its id; a secret never reaches it.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .. import apps as appmod
from .. import proto as P
from .. import states
from ..errors import InvalidRequest, NotFound
from . import auth
from .effects import Close, CloseSessions, Effects, Out
from .model import JobRec, Principal, SiteRec, TokenRow, UserRow
from .store import schema
from .store.base import Write

MAX_TOKENS_PER_USER = 1000
MAX_LISTED = 10_000
"""Most tokens, or audit entries, one listing returns."""
CLOSE_AUTH = 4003
"""Websocket close code of a connection whose token is no longer good."""
EXPIRED_OR_REVOKED = "token expired or revoked"


def mint(kind: auth.TokenKind, user_id: int, *, site_id: int | None = None,
         batch_job: int | None = None, name: str = "", expires_at: float | None = None,
         now: float) -> tuple[auth.Minted, Write]:
    """A new token of ``kind`` for ``user_id``, and the write that stores its row.

    The secret is in the returned :class:`~.auth.Minted` only (for the one
    reply that hands it over); the write carries its id, salt and hash.
    """
    m = auth.mint(kind)
    return m, schema.insert_token(TokenRow(
        id=m.id, kind=kind, user_id=user_id, site_id=site_id, batch_job=batch_job, salt=m.salt,
        hash=m.hash, name=name, created_at=now, expires_at=expires_at, revoked_at=None,
    ))


def audit(who: Principal | None, action: str, obj: str, now: float, /, **detail: Any) -> Write:
    """An audit entry, written in the same commit as what it records.

    ``who`` None is the server's owner acting on the store directly.
    ``detail`` is stored as JSON: ids, names and sizes, never a secret.
    """
    return schema.insert_audit(
        who.user_id if who else None, who.user if who else "", who.token_id if who else "",
        who.remote if who else "", action, obj, detail, now,
    )


def _admin(who: Principal) -> None:
    if not who.is_admin:
        # Not "not found": the operation exists, the caller may not use it.
        raise InvalidRequest("only an admin can manage users", "forbidden")


def _invalid() -> InvalidRequest:
    # The same answer for unknown ids and wrong secrets: only the holder of
    # the right secret learns that a token expired or was revoked.
    return InvalidRequest("invalid token", "auth")


class TokenBook:
    """Live sessions by token, authentication, and the token, user and audit requests."""

    mint = staticmethod(mint)
    audit = staticmethod(audit)

    def __init__(self) -> None:
        self.sessions: dict[str, dict[int, float | None]] = {}
        """Token id -> connection id -> the token's expiry (None: none)."""

    # ------------------------------------------------------------------ authentication

    @staticmethod
    def parse(raw: str) -> auth.Parsed:
        """The kind, id and secret of a token as presented.

        Raises InvalidRequest("invalid token", code "auth") if it is not one
        of ours. The driver then reads the row it names -- ``store.token(id)``,
        or for a legacy token ``store.legacy_token(auth.legacy_hash(raw))`` --
        and that row's user, and calls :meth:`principal`.
        """
        parsed = auth.parse(raw)
        if parsed is None:
            raise _invalid()
        return parsed

    @staticmethod
    def principal(parsed: auth.Parsed, raw: str, row: TokenRow | None, user: UserRow | None,
                  *, now: float, remote: str, site_exists: Callable[[int], bool],
                  job_of: Callable[[int], JobRec | None]) -> Principal:
        """Who ``raw`` (parsed as ``parsed``) speaks for, given its stored ``row`` and ``user``.

        Raises InvalidRequest (code "auth"): "invalid token" for an unknown
        token, a wrong secret, or a site token whose site is gone; then, to
        the holder of the right secret only, "this user has been removed",
        "token <id> was revoked", "token <id> has expired", or for a pilot
        token "batch job <n> has ended; its token with it". The secret is
        compared in constant time.
        """
        if row is None:
            raise _invalid()
        if parsed.legacy:
            ok = row.salt == "" and hmac.compare_digest(row.hash, auth.legacy_hash(raw))
        else:
            ok = (row.id == parsed.id and row.kind == parsed.kind
                  and auth.check(parsed, row.salt, row.hash))
        if not ok:
            raise _invalid()
        if user is None or user.id != row.user_id or user.disabled_at is not None:
            raise InvalidRequest("this user has been removed", "auth")
        if row.revoked_at is not None:
            raise InvalidRequest(f"token {row.id} was revoked", "auth")
        if row.expires_at is not None and row.expires_at <= now:
            raise InvalidRequest(f"token {row.id} has expired", "auth")
        who = Principal(user_id=row.user_id, user=user.name, token_id=row.id,
                        expires_at=row.expires_at, is_admin=user.is_admin and row.kind == "user",
                        remote=remote)
        if row.kind == "site":
            if row.site_id is None or not site_exists(row.site_id):
                raise _invalid()
            who.site_id = row.site_id
        elif row.kind == "pilot":
            job = job_of(row.batch_job) if row.batch_job is not None else None
            if job is None or job.state in states.JOB_FINAL:
                raise InvalidRequest(f"batch job {row.batch_job} has ended; its token with it",
                                     "auth")
            who.site_id, who.batch_job = job.site_id, job.id
        return who

    # ------------------------------------------------------------------ sessions

    def attach(self, who: Principal, peer_id: int) -> None:
        """Connection ``peer_id`` is authenticated by ``who``'s token."""
        if who.token_id:
            self.sessions.setdefault(who.token_id, {})[peer_id] = who.expires_at

    def detach(self, who: Principal, peer_id: int) -> None:
        """Connection ``peer_id`` has gone."""
        peers = self.sessions.get(who.token_id)
        if peers is not None:
            peers.pop(peer_id, None)
            if not peers:
                del self.sessions[who.token_id]

    def close_sessions(self, token_ids: Iterable[str], reason: str) -> list[Out]:
        """Close every connection of these tokens (forgotten here at once)."""
        out: list[Out] = []
        for tid in token_ids:
            for peer_id in self.sessions.pop(tid, {}):
                out.append(Close(peer_id, CLOSE_AUTH, reason))
        return out

    def expired(self, now: float) -> set[str]:
        """Tokens with a connection whose expiry has come."""
        return {tid for tid, peers in self.sessions.items()
                if any(exp is not None and exp <= now for exp in peers.values())}

    def live_token_ids(self) -> list[str]:
        """Every token with a connection: the driver asks ``store.dead_tokens`` about them.

        That catches a token revoked, or a user removed, by the server's owner
        at the command line, on the store.
        """
        return sorted(self.sessions)

    def close_dead(self, dead: Iterable[str]) -> list[Out]:
        """Close the connections of tokens expired, revoked or of a removed user."""
        return self.close_sessions(sorted(set(dead)), EXPIRED_OR_REVOKED)

    # ------------------------------------------------------------------ token requests

    def create(self, who: Principal, peer: int, msg: P.CreateToken, live_count: int,
               site: SiteRec | None, now: float) -> Effects:
        """A new user or site token, its secret in the reply after commit.

        ``live_count`` is how many unrevoked tokens the user has; ``site`` the
        user's site named by ``msg.site`` (None if there is none such). Raises
        InvalidRequest for a site or pilot token, a name over 200 characters,
        an expiry outside (0, 10 years], too many live tokens, or a site
        token without a site; NotFound for a site the user does not have.
        """
        if who.site_id is not None:
            raise InvalidRequest("only a user token can create tokens")
        if len(msg.name) > 200:
            raise InvalidRequest("a token's name is at most 200 characters")
        if msg.expires_in is not None and not 0 < msg.expires_in <= 10 * 365 * 86400:
            raise InvalidRequest("expires_in must be between 0 and 10 years (in seconds)")
        if live_count >= MAX_TOKENS_PER_USER:
            raise InvalidRequest(f"{MAX_TOKENS_PER_USER} live tokens already: revoke some first")
        expires = now + msg.expires_in if msg.expires_in else None
        if msg.kind == "site":
            if not msg.site:
                raise InvalidRequest("a site token needs the site's name")
            if site is None or site.owner_id != who.user_id or site.name != msg.site:
                raise NotFound(f"no site named {msg.site!r}; create it with "
                               f"`tidewater site add {msg.site}`")
            minted, write = mint("site", who.user_id, site_id=site.id, name=msg.name,
                                 expires_at=expires, now=now)
        else:
            minted, write = mint("user", who.user_id, name=msg.name, expires_at=expires, now=now)
        info = P.TokenInfo(id=minted.id, kind=msg.kind, site=msg.site or "", name=msg.name,
                           created_at=now, expires_at=expires)
        fx = Effects(writes=[write, audit(who, "token.create", minted.id, now, kind=msg.kind,
                                          site=msg.site or "", expires_at=expires)])
        fx.reply(peer, P.TokenCreated(req_id=msg.req_id, info=info, token=minted.token))
        return fx

    def revoke(self, who: Principal, peer: int, msg: P.RevokeToken, row: TokenRow | None,
               now: float) -> Effects:
        """Revoke one of your tokens (admins: anyone's); after commit its connections close.

        ``row`` is the stored token ``msg.id`` (None if there is none).
        Raises NotFound for no such token, another user's (unless an admin),
        or a request made with a site or pilot token; InvalidRequest (code
        "final") if it is already revoked.
        """
        if row is None or (row.user_id != who.user_id and not who.is_admin) or (
            who.site_id is not None
        ):
            raise NotFound(f"no token {msg.id!r}")
        if row.revoked_at is not None:
            raise InvalidRequest(f"token {msg.id} is already revoked", "final")
        fx = Effects(writes=[schema.revoke_token(row.id, now),
                             audit(who, "token.revoke", row.id, now, kind=row.kind)])
        fx.after.append(CloseSessions([row.id], "token revoked"))
        fx.reply(peer, P.Done(req_id=msg.req_id))
        return fx

    # ------------------------------------------------------------------ users (admins)

    def add_user(self, who: Principal, peer: int, msg: P.AddUser, existing: UserRow | None,
                 next_uid: int, now: float) -> Effects:
        """Create a user with a first token, its secret in the reply after commit.

        ``existing`` is the user already called ``msg.name``, removed or not
        (names are never reused); ``next_uid`` the id the new user gets.
        Raises InvalidRequest (code "forbidden") unless ``who`` is an admin,
        AppError for a malformed name, InvalidRequest (code "exists") for a
        taken one.
        """
        _admin(who)
        appmod.check_name("user", msg.name)
        if existing is not None:
            raise InvalidRequest(f"user {msg.name!r} already exists", "exists")
        expires = now + msg.expires_in if msg.expires_in else None
        minted, write = mint("user", next_uid, name="first token", expires_at=expires, now=now)
        fx = Effects(writes=[
            schema.insert_user(next_uid, msg.name, minted.id, now, msg.admin), write,
            audit(who, "user.add", msg.name, now, admin=msg.admin, token=minted.id),
        ])
        fx.reply(peer, P.UserAdded(req_id=msg.req_id, name=msg.name, token=minted.token))
        return fx

    def remove_user(self, who: Principal, peer: int, msg: P.RemoveUser, user: UserRow | None,
                    token_ids: Sequence[str], now: float) -> Effects:
        """Disable a user: every token revoked, after commit every connection closed; data kept.

        ``user`` is the user called ``msg.name``; ``token_ids`` their
        unrevoked tokens. Raises InvalidRequest (code "forbidden") unless
        ``who`` is an admin, NotFound for no such user (or one removed
        already), InvalidRequest for removing yourself.
        """
        _admin(who)
        if user is None or user.disabled_at is not None or user.name != msg.name:
            raise NotFound(f"no user {msg.name!r}")
        if user.id == who.user_id:
            raise InvalidRequest("you cannot remove yourself")
        fx = Effects(writes=[
            schema.disable_user(user.id, now), schema.revoke_user_tokens(user.id, now),
            audit(who, "user.remove", msg.name, now, tokens=len(token_ids)),
        ])
        fx.after.append(CloseSessions(list(token_ids), "user removed"))
        fx.reply(peer, P.Done(req_id=msg.req_id))
        return fx

    def list_users(self, who: Principal, peer: int, msg: P.ListUsers,
                   users: Sequence[UserRow]) -> Effects:
        """Every user, removed ones too (admins only: InvalidRequest code "forbidden")."""
        _admin(who)
        fx = Effects()
        fx.send(peer, P.UserList(req_id=msg.req_id, users=[
            P.UserInfo(name=u.name, admin=u.is_admin, created_at=u.created_at,
                       removed_at=u.disabled_at) for u in users]))
        return fx

    # ------------------------------------------------------------------ the audit trail

    @staticmethod
    def audit_scope(who: Principal, msg: P.ListAudit) -> tuple[int | None, int]:
        """Whose entries ``msg`` may read (None: everyone's) and how many, for ``store.audit``.

        Raises InvalidRequest (code "forbidden") for ``everyone`` unless
        ``who`` is an admin.
        """
        limit = max(1, min(msg.limit, MAX_LISTED))
        if msg.everyone:
            _admin(who)
            return None, limit
        return who.user_id, limit

    def list_audit(self, who: Principal, peer: int, msg: P.ListAudit,
                   rows: Sequence[Sequence[Any]]) -> Effects:
        """Your own audit entries (admins: everyone's with ``everyone``), newest last.

        ``rows`` are what ``store.audit(*audit_scope(who, msg))`` returned.
        Raises as :meth:`audit_scope` does.
        """
        self.audit_scope(who, msg)
        fx = Effects()
        fx.send(peer, P.AuditList(req_id=msg.req_id, entries=[
            P.AuditEntry(id=r[0], time=r[1], user=r[2], token_id=r[3], remote=r[4], action=r[5],
                         object=r[6], detail=r[7]) for r in rows]))
        return fx

    # Last, so that ``list`` in the annotations above is the builtin.
    def list(self, who: Principal, peer: int, msg: P.ListTokens, rows: Sequence[TokenRow],
             site_name_of: Callable[[int], str | None]) -> Effects:
        """Your tokens, oldest first, never a secret.

        ``rows`` are ``store.tokens_of(who.user_id, include_revoked=...,
        limit=MAX_LISTED)``; ``site_name_of`` names a site id (None if gone).
        """
        fx = Effects()
        fx.send(peer, P.TokenList(req_id=msg.req_id, tokens=[
            P.TokenInfo(id=r.id, kind=r.kind,
                        site=(site_name_of(r.site_id) or "") if r.site_id is not None else "",
                        batch_job=r.batch_job or 0, name=r.name, created_at=r.created_at,
                        expires_at=r.expires_at, revoked_at=r.revoked_at)
            for r in rows if r.user_id == who.user_id]))
        return fx
