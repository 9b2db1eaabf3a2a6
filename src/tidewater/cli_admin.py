"""``tidewater user``, ``token`` and ``audit``: who may do what, and what they did."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click
import msgspec
from rich.table import Table

from .cli_base import DURATION, _client, _run, _when, err, out
from .config import default_db


def _local(ctx: click.Context, db: str | None) -> str | None:
    """The store to work on directly, or None to go through the controller (admin token)."""
    if db is not None:
        return db
    return None if ctx.obj["token"] else default_db()


@click.group(short_help="Users: add, list, remove.")
def user() -> None:
    """Users. With --db (or no token set): on the store, as the server's owner.
    With an admin's token: through the controller."""


@user.command("add", short_help='Create a user and print their token.')
@click.argument("name")
@click.option("--db", default=None, help="Work on this store (a path or postgresql:// URL) "
              "directly (the server's owner).")
@click.option("--admin", is_flag=True, help="May add and remove users (the first user is one).")
@click.option("--expires", type=DURATION, default=None,
              help="The token expires after this long (30d, 12h).")
@click.pass_context
def user_add(ctx: click.Context, name: str, db: str | None, admin: bool,
             expires: float | None) -> None:
    """Create a user and print their token (shown only once)."""
    from .controller.users import add_user

    seconds = expires
    store = _local(ctx, db)
    if store is not None:
        token = _run(lambda: add_user(store, name, admin=admin or None, expires_in=seconds))
    else:
        async def go() -> str:
            async with _client(ctx) as c:
                return await c.add_user(name, admin=admin, expires_in=seconds)

        token = _run(go)
    err.print(f"user {name!r} created; their token (keep it secret, it is not stored):")
    click.echo(token)


@user.command("remove", short_help='Remove a user and revoke their tokens.')
@click.argument("name")
@click.option("--db", default=None, help="Work on this store (a path or postgresql:// URL) "
              "directly (the server's owner).")
@click.pass_context
def user_remove(ctx: click.Context, name: str, db: str | None) -> None:
    """Remove a user: every token revoked, every connection closed; their data is kept."""
    from .controller.users import remove_user

    store = _local(ctx, db)
    if store is not None:
        n = _run(lambda: remove_user(store, name))
        err.print(f"user {name!r} removed; {n} tokens revoked")
        return

    async def go() -> None:
        async with _client(ctx) as c:
            await c.remove_user(name)

    _run(go)
    err.print(f"user {name!r} removed")


@user.command("ls")
@click.option("--db", default=None, help="Read this store directly (the server's owner).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def user_ls(ctx: click.Context, db: str | None, as_json: bool) -> None:
    """List users."""
    from .controller.users import list_users

    store = _local(ctx, db)
    if store is not None:
        rows = _run(lambda: list_users(store))
    else:
        async def go() -> list[tuple[str, float, bool, float | None]]:
            async with _client(ctx) as c:
                return [(u.name, u.created_at, u.admin, u.removed_at) for u in await c.users()]

        rows = _run(go)
    if as_json:
        for name, created, admin, removed in rows:
            click.echo(json.dumps({"name": name, "created_at": created, "admin": admin,
                                   "removed_at": removed}))
        return
    table = Table("user", "created", "admin", "removed")
    for name, created, admin, removed in rows:
        table.add_row(name, f"{datetime.fromtimestamp(created):%Y-%m-%d %H:%M}",
                      "admin" if admin else "-",
                      f"{datetime.fromtimestamp(removed):%Y-%m-%d %H:%M}" if removed else "-")
    out.print(table)


# ---------------------------------------------------------------------- tokens and audit


@click.group(short_help='Your tokens: create, list, revoke.')
def token() -> None:
    """Your tokens: create, list (never the secret), revoke."""


@token.command("create")
@click.option("--site", default=None, help="A site token for this site (default: a user token).")
@click.option("--name", default="", help="What it is for (shown in `token ls`).")
@click.option("--expires", type=DURATION, default=None, help="Expire after this long (30d, 12h).")
@click.pass_context
def token_create(ctx: click.Context, site: str | None, name: str, expires: float | None) -> None:
    """Mint a token and print it (shown only once)."""
    seconds = expires

    async def go() -> Any:
        async with _client(ctx) as c:
            return await c.create_token(site=site, name=name, expires_in=seconds)

    info, secret = _run(go)
    err.print(f"token {info.id} ({info.kind}{' for ' + info.site if info.site else ''}); "
              "keep it secret, it is not stored:")
    click.echo(secret)


@token.command("ls")
@click.option("--all", "all_", is_flag=True, help="Include revoked tokens.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def token_ls(ctx: click.Context, all_: bool, as_json: bool) -> None:
    """List your tokens by id."""

    async def go() -> list[Any]:
        async with _client(ctx) as c:
            return await c.tokens(include_revoked=all_)

    if as_json:
        for t in _run(go):
            click.echo(msgspec.json.encode(t).decode())
        return

    table = Table("id", "kind", "site / job", "name", "created", "expires", "revoked")
    for t in _run(go):
        where = t.site + (f" job {t.batch_job}" if t.batch_job else "")
        table.add_row(t.id, t.kind, where or "-", t.name or "-",
                      f"{datetime.fromtimestamp(t.created_at):%Y-%m-%d %H:%M}",
                      f"{datetime.fromtimestamp(t.expires_at):%Y-%m-%d %H:%M}"
                      if t.expires_at else "-",
                      f"{datetime.fromtimestamp(t.revoked_at):%Y-%m-%d %H:%M}"
                      if t.revoked_at else "-")
    out.print(table)


@token.command("revoke", short_help='Revoke a token at once.')
@click.argument("token_id")
@click.pass_context
def token_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke a token: it stops working and its connections close at once."""

    async def go() -> None:
        async with _client(ctx) as c:
            await c.revoke_token(token_id)

    _run(go)
    err.print(f"token {token_id} revoked")


@click.command(short_help='Show who did what, when and from where.')
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--all", "all_", is_flag=True, help="Everyone's entries (admins).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def audit(ctx: click.Context, limit: int, all_: bool, as_json: bool) -> None:
    """The audit trail: who did what, when and from where."""

    async def go() -> list[Any]:
        async with _client(ctx) as c:
            return await c.audit(limit=limit, everyone=all_)

    entries = _run(go)
    if as_json:
        for e in entries:
            click.echo(msgspec.json.encode(e).decode())
        return
    table = Table("time", "user", "token", "from", "action", "object", "detail")
    for e in entries:
        table.add_row(_when(e.time), e.user, e.token_id or "-", e.remote or "-", e.action,
                      e.object, e.detail)
    out.print(table)
