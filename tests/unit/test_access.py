"""Tokens, users and the audit trail: who gets in, who may do what, and what is written down."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from tidewater import proto as P
from tidewater.controller import auth
from tidewater.controller.access import TokenBook, audit, mint
from tidewater.controller.effects import Close, CloseSessions, Effects, Send
from tidewater.controller.model import JobRec, Principal, SiteRec, TokenRow, UserRow
from tidewater.controller.store import schema
from tidewater.controller.store.base import Op, Write
from tidewater.errors import AppError, InvalidRequest, NotFound

NOW = 1000.0
ALICE = UserRow(id=1, name="alice", is_admin=True, created_at=1.0, disabled_at=None)
BOB = UserRow(id=2, name="bob", is_admin=False, created_at=2.0, disabled_at=None)
SITE = SiteRec(id=5, owner_id=2, name="polaris", created_at=3.0)


def row_of(write: Write) -> TokenRow:
    op, params = write
    assert op is Op.INSERT_TOKEN
    return schema.token_from_row(params)


def minted(kind: auth.TokenKind, user_id: int, **kw: object) -> tuple[str, TokenRow]:
    m, write = mint(kind, user_id, now=NOW, **kw)  # type: ignore[arg-type]
    return m.token, row_of(write)


def job(state: str = "running", job_id: int = 9) -> JobRec:
    return JobRec(id=job_id, site_id=5, owner_id=2, state=state, nodes=1, wall_time_min=30,
                  queue="", project="", created_at=0.0)


def authenticate(raw: str, row: TokenRow | None, user: UserRow | None, *,
                 now: float = NOW, sites: tuple[int, ...] = (5,),
                 jobs: tuple[JobRec, ...] = ()) -> Principal:
    book = TokenBook()
    parsed = book.parse(raw)
    by_id = {j.id: j for j in jobs}
    return book.principal(parsed, raw, row, user, now=now, remote="10.0.0.7",
                          site_exists=lambda sid: sid in sites, job_of=by_id.get)


def refused(raw: str, row: TokenRow | None, user: UserRow | None, **kw: object) -> str:
    with pytest.raises(InvalidRequest) as info:
        authenticate(raw, row, user, **kw)  # type: ignore[arg-type]
    assert type(info.value) is InvalidRequest and info.value.code == "auth"
    return info.value.message


def secret_free(fx: Effects, *secrets: str) -> None:
    """No write of ``fx`` carries any of ``secrets`` (nor the secret part of a token)."""
    parts = [s for tok in secrets for s in (tok, tok.partition(".")[2]) if s]
    for _op, params in fx.writes:
        text = repr(params)
        for s in parts:
            assert s not in text


# ---------------------------------------------------------------------- authentication


def test_a_user_token() -> None:
    raw, row = minted("user", 1, expires_at=NOW + 10)
    who = authenticate(raw, row, ALICE)
    assert who == Principal(user_id=1, user="alice", token_id=row.id, expires_at=NOW + 10,
                            is_admin=True, remote="10.0.0.7")
    raw, row = minted("user", 2)
    assert not authenticate(raw, row, BOB).is_admin


def test_a_site_token_is_narrowed_to_its_site_and_is_never_admin() -> None:
    raw, row = minted("site", 1, site_id=5)
    who = authenticate(raw, row, ALICE)
    assert (who.site_id, who.batch_job, who.is_admin) == (5, 0, False)
    assert refused(raw, row, ALICE, sites=()) == "invalid token"  # its site is gone


def test_a_pilot_token_serves_its_live_job_only() -> None:
    raw, row = minted("pilot", 2, site_id=5, batch_job=9)
    who = authenticate(raw, row, BOB, jobs=(job("queued"),))
    assert (who.site_id, who.batch_job, who.is_admin) == (5, 9, False)
    for jobs in ((), (job("finished"),), (job("submit_failed"),)):
        assert refused(raw, row, BOB, jobs=jobs) == "batch job 9 has ended; its token with it"


def test_revoked_expired_and_removed() -> None:
    raw, row = minted("user", 2, expires_at=NOW)
    assert refused(raw, row, BOB) == f"token {row.id} has expired"
    assert authenticate(raw, row, BOB, now=NOW - 0.001).user == "bob"
    raw, row = minted("user", 2)
    assert refused(raw, replace(row, revoked_at=5.0), BOB) == f"token {row.id} was revoked"
    assert refused(raw, row, replace(BOB, disabled_at=5.0)) == "this user has been removed"
    assert refused(raw, row, None) == "this user has been removed"


def test_wrong_secret_unknown_token_and_wrong_kind_all_say_invalid_token() -> None:
    raw, row = minted("user", 2)
    assert refused(raw[:-1] + ("A" if raw[-1] != "A" else "B"), row, BOB) == "invalid token"
    assert refused(raw, None, BOB) == "invalid token"
    # Only the holder of the secret learns that a token was revoked or its user removed.
    revoked = replace(row, revoked_at=5.0)
    assert refused(raw[:-1] + ("A" if raw[-1] != "A" else "B"), revoked, None) == "invalid token"
    as_site = "tws_" + raw[4:]  # the same id and secret presented as another kind
    assert refused(as_site, row, BOB) == "invalid token"


def test_not_a_token_at_all() -> None:
    for raw in ("", "hello", "twu_0123.x", "twx_" + "a" * 16 + ".s", "twu_" + "z" * 300):
        with pytest.raises(InvalidRequest) as info:
            TokenBook.parse(raw)
        assert (info.value.message, info.value.code) == ("invalid token", "auth")


def test_a_legacy_token_is_checked_against_its_unsalted_hash() -> None:
    raw = "twu_" + "legacy-secret-" * 3
    row = TokenRow(id="00000000000000aa", kind="user", user_id=2, site_id=None, batch_job=None,
                   salt="", hash=auth.legacy_hash(raw), name="", created_at=0.0,
                   expires_at=None, revoked_at=None)
    assert TokenBook.parse(raw).legacy
    who = authenticate(raw, row, BOB)
    assert (who.user, who.token_id) == ("bob", "00000000000000aa")
    assert refused(raw + "x", row, BOB) == "invalid token"
    assert refused(raw, replace(row, revoked_at=1.0), BOB) == "token 00000000000000aa was revoked"


# ---------------------------------------------------------------------- sessions


def test_sessions_close_on_revoke_and_the_reply_follows() -> None:
    book = TokenBook()
    raw, row = minted("user", 2)
    who = authenticate(raw, row, BOB)
    other = Principal(user_id=2, user="bob", token_id="ffffffffffffffff")
    book.attach(who, 11)
    book.attach(who, 12)
    book.attach(other, 13)
    book.attach(Principal(user_id=2, user="bob"), 14)  # no token id: nothing to close
    fx = book.revoke(who, 11, P.RevokeToken(req_id=4, id=row.id), row, NOW)
    assert fx.writes == [(Op.REVOKE_TOKEN, (NOW, row.id)),
                         schema.insert_audit(2, "bob", row.id, "10.0.0.7", "token.revoke",
                                             row.id, {"kind": "user"}, NOW)]
    assert fx.out == []
    assert fx.after == [CloseSessions([row.id], "token revoked"), Send(11, P.Done(req_id=4))]
    # What the facade does with CloseSessions at commit:
    assert book.close_sessions([row.id], "token revoked") == [
        Close(11, 4003, "token revoked"), Close(12, 4003, "token revoked")]
    assert book.close_sessions([row.id], "token revoked") == []
    assert book.live_token_ids() == ["ffffffffffffffff"]
    book.detach(other, 13)
    assert book.sessions == {}


def test_sessions_close_at_expiry_and_when_the_store_says_dead() -> None:
    book = TokenBook()
    soon = Principal(user_id=2, user="bob", token_id="a" * 16, expires_at=50.0)
    never = Principal(user_id=2, user="bob", token_id="b" * 16)
    book.attach(soon, 1)
    book.attach(never, 2)
    assert book.expired(49.9) == set()
    assert book.expired(50.0) == {"a" * 16}
    assert book.live_token_ids() == ["a" * 16, "b" * 16]
    assert book.close_dead({"b" * 16, "a" * 16}) == [
        Close(1, 4003, "token expired or revoked"), Close(2, 4003, "token expired or revoked")]
    assert book.sessions == {}


def test_removing_a_user_revokes_every_token_and_closes_their_sessions() -> None:
    book = TokenBook()
    admin = Principal(user_id=1, user="alice", token_id="c" * 16, is_admin=True)
    fx = book.remove_user(admin, 3, P.RemoveUser(req_id=8, name="bob"), BOB, ["t1", "t2"], NOW)
    assert fx.writes == [
        (Op.DISABLE_USER, (NOW, 2)), (Op.REVOKE_USER_TOKENS, (NOW, 2)),
        (Op.INSERT_AUDIT, (NOW, 1, "alice", "c" * 16, "", "user.remove", "bob",
                           '{"tokens":2}')),
    ]
    assert fx.after == [CloseSessions(["t1", "t2"], "user removed"), Send(3, P.Done(req_id=8))]
    with pytest.raises(InvalidRequest, match="^you cannot remove yourself$"):
        book.remove_user(admin, 3, P.RemoveUser(req_id=8, name="alice"), ALICE, [], NOW)
    for gone in (None, replace(BOB, disabled_at=1.0)):
        with pytest.raises(NotFound, match="^no user 'bob'$"):
            book.remove_user(admin, 3, P.RemoveUser(req_id=8, name="bob"), gone, [], NOW)


# ---------------------------------------------------------------------- admin checks


def test_only_admins_manage_users_and_read_everyones_audit() -> None:
    book = TokenBook()
    bob = Principal(user_id=2, user="bob", token_id="d" * 16)
    calls = [
        lambda: book.add_user(bob, 1, P.AddUser(req_id=1, name="carol"), None, 3, NOW),
        lambda: book.remove_user(bob, 1, P.RemoveUser(req_id=1, name="alice"), ALICE, [], NOW),
        lambda: book.list_users(bob, 1, P.ListUsers(req_id=1), [ALICE, BOB]),
        lambda: book.list_audit(bob, 1, P.ListAudit(req_id=1, everyone=True), []),
        lambda: TokenBook.audit_scope(bob, P.ListAudit(req_id=1, everyone=True)),
    ]
    for call in calls:
        with pytest.raises(InvalidRequest) as info:
            call()
        assert (info.value.message, info.value.code) == ("only an admin can manage users",
                                                         "forbidden")
    assert TokenBook.audit_scope(bob, P.ListAudit(req_id=1, limit=10**9)) == (2, 10_000)
    admin = replace(bob, user_id=1, is_admin=True)
    assert TokenBook.audit_scope(admin, P.ListAudit(req_id=1, limit=0, everyone=True)) == (
        None, 1)


def test_listing_users_and_audit_entries() -> None:
    book = TokenBook()
    admin = Principal(user_id=1, user="alice", is_admin=True)
    fx = book.list_users(admin, 6, P.ListUsers(req_id=2), [ALICE, replace(BOB, disabled_at=9.0)])
    assert fx.out == [Send(6, P.UserList(req_id=2, users=[
        P.UserInfo(name="alice", admin=True, created_at=1.0),
        P.UserInfo(name="bob", created_at=2.0, removed_at=9.0)]))]
    assert fx.writes == [] and fx.after == []
    rows = [(1, 5.0, "bob", "e" * 16, "1.2.3.4", "task.submit", "1-3", '{"count":3}')]
    fx = book.list_audit(admin, 6, P.ListAudit(req_id=3), rows)
    assert fx.out == [Send(6, P.AuditList(req_id=3, entries=[P.AuditEntry(
        id=1, time=5.0, user="bob", token_id="e" * 16, remote="1.2.3.4", action="task.submit",
        object="1-3", detail='{"count":3}')]))]


def test_adding_a_user() -> None:
    book = TokenBook()
    admin = Principal(user_id=1, user="alice", token_id="c" * 16, is_admin=True, remote="r")
    fx = book.add_user(admin, 4, P.AddUser(req_id=5, name="carol", admin=True, expires_in=60.0),
                       None, 3, NOW)
    (reply,) = fx.after
    assert isinstance(reply, Send) and isinstance(reply.msg, P.UserAdded)
    token = reply.msg.token
    assert (reply.peer, reply.msg.req_id, reply.msg.name) == (4, 5, "carol")
    assert [op for op, _ in fx.writes] == [Op.INSERT_USER, Op.INSERT_TOKEN, Op.INSERT_AUDIT]
    row = row_of(fx.writes[1])
    assert fx.writes[0] == (Op.INSERT_USER, (3, "carol", f"token:{row.id}", NOW, 1))
    assert (row.kind, row.user_id, row.name, row.expires_at) == ("user", 3, "first token",
                                                                 NOW + 60.0)
    assert fx.writes[2] == schema.insert_audit(1, "alice", "c" * 16, "r", "user.add", "carol",
                                               {"admin": True, "token": row.id}, NOW)
    secret_free(fx, token)
    # The token handed over is the one stored.
    carol = UserRow(id=3, name="carol", is_admin=True, created_at=NOW, disabled_at=None)
    assert authenticate(token, row, carol).is_admin
    with pytest.raises(InvalidRequest) as info:
        book.add_user(admin, 4, P.AddUser(req_id=5, name="carol"), carol, 4, NOW)
    assert (info.value.message, info.value.code) == ("user 'carol' already exists", "exists")
    with pytest.raises(AppError, match="invalid user name '1 x'"):
        book.add_user(admin, 4, P.AddUser(req_id=5, name="1 x"), None, 4, NOW)


# ---------------------------------------------------------------------- token requests


def test_creating_a_token() -> None:
    book = TokenBook()
    bob = Principal(user_id=2, user="bob", token_id="d" * 16, remote="h")
    fx = book.create(bob, 7, P.CreateToken(req_id=1, kind="site", site="polaris", name="agent",
                                           expires_in=3600.0), 4, SITE, NOW)
    (reply,) = fx.after
    assert isinstance(reply, Send) and isinstance(reply.msg, P.TokenCreated)
    row = row_of(fx.writes[0])
    assert (row.kind, row.user_id, row.site_id, row.name, row.created_at, row.expires_at,
            row.revoked_at) == ("site", 2, 5, "agent", NOW, NOW + 3600.0, None)
    assert fx.writes[1] == schema.insert_audit(
        2, "bob", "d" * 16, "h", "token.create", row.id,
        {"kind": "site", "site": "polaris", "expires_at": NOW + 3600.0}, NOW)
    assert reply.msg.info == P.TokenInfo(id=row.id, kind="site", site="polaris", name="agent",
                                         created_at=NOW, expires_at=NOW + 3600.0)
    assert fx.out == []
    secret_free(fx, reply.msg.token)
    assert authenticate(reply.msg.token, row, BOB).site_id == 5
    fx = book.create(bob, 7, P.CreateToken(req_id=2), 0, None, NOW)
    assert row_of(fx.writes[0]).kind == "user" and row_of(fx.writes[0]).expires_at is None


@pytest.mark.parametrize(("who", "msg", "live", "site", "cls", "message"), [
    (Principal(user_id=2, user="bob", site_id=5), P.CreateToken(req_id=1), 0, None,
     InvalidRequest, "only a user token can create tokens"),
    (Principal(user_id=2, user="bob"), P.CreateToken(req_id=1, name="n" * 201), 0, None,
     InvalidRequest, "a token's name is at most 200 characters"),
    (Principal(user_id=2, user="bob"), P.CreateToken(req_id=1, expires_in=0.0), 0, None,
     InvalidRequest, "expires_in must be between 0 and 10 years (in seconds)"),
    (Principal(user_id=2, user="bob"), P.CreateToken(req_id=1), 1000, None,
     InvalidRequest, "1000 live tokens already: revoke some first"),
    (Principal(user_id=2, user="bob"), P.CreateToken(req_id=1, kind="site"), 0, None,
     InvalidRequest, "a site token needs the site's name"),
    (Principal(user_id=2, user="bob"), P.CreateToken(req_id=1, kind="site", site="x"), 0, None,
     NotFound, "no site named 'x'; create it with `tidewater site add x`"),
    (Principal(user_id=1, user="alice"), P.CreateToken(req_id=1, kind="site", site="polaris"),
     0, SITE, NotFound, "no site named 'polaris'; create it with `tidewater site add polaris`"),
])
def test_token_creation_refusals(who: Principal, msg: P.CreateToken, live: int,
                                 site: SiteRec | None, cls: type[InvalidRequest],
                                 message: str) -> None:
    with pytest.raises(cls) as info:
        TokenBook().create(who, 1, msg, live, site, NOW)
    assert type(info.value) is cls and info.value.message == message


def test_revoking_someone_elses_token() -> None:
    book = TokenBook()
    _raw, row = minted("user", 1)
    bob = Principal(user_id=2, user="bob", token_id="d" * 16)
    with pytest.raises(NotFound, match=f"^no token '{row.id}'$"):
        book.revoke(bob, 1, P.RevokeToken(req_id=1, id=row.id), row, NOW)
    with pytest.raises(NotFound):
        book.revoke(bob, 1, P.RevokeToken(req_id=1, id="nope"), None, NOW)
    with pytest.raises(NotFound):  # a site token revokes nothing, not even its own user's
        book.revoke(replace(bob, user_id=1, site_id=5), 1, P.RevokeToken(req_id=1, id=row.id),
                    row, NOW)
    admin = Principal(user_id=3, user="root", is_admin=True)
    assert book.revoke(admin, 1, P.RevokeToken(req_id=1, id=row.id), row, NOW).writes[0] == (
        Op.REVOKE_TOKEN, (NOW, row.id))
    with pytest.raises(InvalidRequest) as info:
        book.revoke(admin, 1, P.RevokeToken(req_id=1, id=row.id), replace(row, revoked_at=1.0),
                    NOW)
    assert (info.value.message, info.value.code) == (f"token {row.id} is already revoked",
                                                     "final")


def test_listing_tokens_never_shows_a_secret() -> None:
    raw1, user_row = minted("user", 2, name="laptop")
    raw2, site_row = minted("site", 2, site_id=5)
    _raw3, gone = minted("site", 2, site_id=6)
    fx = TokenBook().list(Principal(user_id=2, user="bob"), 3, P.ListTokens(req_id=9),
                          [user_row, site_row, gone], {5: "polaris"}.get)
    assert fx.out == [Send(3, P.TokenList(req_id=9, tokens=[
        P.TokenInfo(id=user_row.id, kind="user", name="laptop", created_at=NOW),
        P.TokenInfo(id=site_row.id, kind="site", site="polaris", created_at=NOW),
        P.TokenInfo(id=gone.id, kind="site", site="", created_at=NOW)]))]
    text = repr(fx.out)
    for raw in (raw1, raw2):
        assert raw.partition(".")[2] not in text


def test_an_audit_entry() -> None:
    who = Principal(user_id=2, user="bob", token_id="d" * 16, remote="h")
    assert audit(who, "job.add", "polaris/3", NOW, nodes=2) == (
        Op.INSERT_AUDIT, (NOW, 2, "bob", "d" * 16, "h", "job.add", "polaris/3", '{"nodes":2}'))
    assert audit(None, "x", "y", NOW) == (Op.INSERT_AUDIT, (NOW, None, "", "", "", "x", "y",
                                                            "{}"))
    assert json.loads(audit(who, "a", "o", NOW, now=1, who=2)[1][7]) == {"now": 1, "who": 2}
    assert TokenBook.audit is audit and TokenBook.mint is mint
