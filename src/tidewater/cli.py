"""``tidewater`` command line: the same operations as the Python API."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import click
import msgspec
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from . import apps as appmod
from . import cli_lifecycle
from .cli_base import _client, _kv, _run, err, out
from .cli_example import example
from .cli_report import report
from .cli_top import top
from .config import ControllerConfig, Limits, Timeouts, default_db
from .errors import TidewaterError
from .proto import (
    AppHooks,
    FileInfo,
    Input,
    Output,
    ParamSpec,
    Resources,
    Route,
    TaskInfo,
    TaskSpec,
)

INLINE_MAX = 1024 * 1024
"""Largest ``@LOCALFILE`` sent inline (the controller's default ``max_inline_bytes``)."""


def _url_problem(url: str) -> str | None:
    """What is wrong with a transfer URL, or None (the controller checks the same way)."""
    from .errors import TransferError
    from .urls import parse_url

    try:
        parse_url(url)
    except TransferError as exc:
        return exc.message
    return None


def _parse_input(value: str) -> Input:
    """``PATH=SOURCE`` -> Input; SOURCE is a URL, ``@LOCALFILE`` or ``task:ID:OUTPUT``.

    Reads a ``@LOCALFILE``. Raises click.BadParameter saying what is wrong.
    """
    path, eq, src = value.partition("=")
    if not eq or not path or not src:
        raise click.BadParameter(
            f"{value!r} must look like PATH=SOURCE, SOURCE a url (file://, sftp://, "
            "globus://), @LOCALFILE or task:ID:OUTPUT")
    if src.startswith("@"):
        local = Path(src[1:]).expanduser()
        try:
            size = local.stat().st_size
            if not local.is_file():
                raise click.BadParameter(f"{path}: {str(local)!r} is not a file")
            if size > INLINE_MAX:
                raise click.BadParameter(
                    f"{path}: {str(local)!r} is {size} bytes; files sent inline are at most "
                    f"1 MiB: give it a url instead ({path}=file://... or sftp://...)")
            return Input(path=path, data=local.read_bytes())
        except OSError as exc:
            raise click.BadParameter(
                f"{path}: cannot read {str(local)!r}: {exc.strerror or exc}") from None
    if src.startswith("task:"):
        tid, colon, output = src[5:].partition(":")
        if not colon or not tid.isdigit() or int(tid) <= 0 or not output:
            raise click.BadParameter(
                f"{path}: {src!r} must look like task:ID:OUTPUT (a task id and one of its "
                "outputs, e.g. task:12:result.h5)")
        return Input(path=path, task=int(tid), output=output)
    if "://" not in src:
        raise click.BadParameter(
            f"{path}: {src!r} is not a source: give a url (file:///abs/path, sftp://host/path, "
            f"globus://ENDPOINT/path), @LOCALFILE or task:ID:OUTPUT")
    problem = _url_problem(src)
    if problem:
        raise click.BadParameter(f"{path}: {problem} ({src!r})")
    return Input(path=path, url=src)


def _parse_output(value: str) -> Output:
    """``PATH`` or ``PATH=URL`` -> Output. Raises click.BadParameter."""
    path, eq, url = value.partition("=")
    if not path:
        raise click.BadParameter(f"{value!r} must look like PATH or PATH=URL")
    if eq:
        if not url:
            raise click.BadParameter(f"{value!r}: give a url after '=', or only PATH to "
                                     "keep the output with the task")
        problem = _url_problem(url)
        if problem:
            raise click.BadParameter(f"{path}: {problem} ({url!r})")
    return Output(path=path, url=url)


def _inputs_option(_ctx: click.Context, _param: click.Parameter,
                   values: tuple[str, ...]) -> list[Input]:
    return [_parse_input(v) for v in values]


def _outputs_option(_ctx: click.Context, _param: click.Parameter,
                    values: tuple[str, ...]) -> list[Output]:
    return [_parse_output(v) for v in values]


def _parents_option(_ctx: click.Context, _param: click.Parameter,
                    values: tuple[int, ...]) -> tuple[int, ...]:
    for v in values:
        if v <= 0:
            raise click.BadParameter(f"{v} is not a task id")
    return values


def _hook_option(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if value:
        from . import codec

        try:
            codec.check_import_path(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3] if t else "-"


@click.group()
@click.option("--url", envvar="TIDEWATER_URL", default="ws://127.0.0.1:8765",
              show_default=True,
              help="Controller URL (or TIDEWATER_URL); several, comma-separated, for a "
                   "leader and its standbys: the first that answers is used.")
@click.option("--token", envvar="TIDEWATER_TOKEN", default="", help="Token (or TIDEWATER_TOKEN).")
@click.option("--ca-file", envvar="TIDEWATER_CA_FILE", default="",
              type=click.Path(dir_okay=False),
              help="CA certificate a wss:// controller is verified against (or "
                   "TIDEWATER_CA_FILE; default: the system trust store).")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, url: str, token: str, ca_file: str, verbose: int) -> None:
    """Tidewater: send analysis tasks to HPC sites and get results in seconds."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ctx.obj = {"url": url, "token": token, "ca_file": ca_file}


# ---------------------------------------------------------------------- server


@main.command()
@click.option("--db", default=default_db, show_default="~/.tidewater/tidewater.db",
              help="The store: a SQLite file (path or sqlite:///path) or "
                   "postgresql://user@host/db.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--lease-timeout", default=30.0, show_default=True, type=float,
              help="Seconds of pilot silence before its tasks are retried.")
@click.option("--heartbeat", default=5.0, show_default=True, type=float,
              help="Pilot heartbeat interval in seconds.")
@click.option("--disconnect-grace", default=None, type=float,
              show_default="3 heartbeats, at most --lease-timeout",
              help="Seconds a pilot whose connection closed has to come back before its "
              "tasks are retried.")
@click.option("--max-frame-bytes", default=Limits().max_frame_bytes, show_default=True,
              type=int, help="Largest websocket frame accepted.")
@click.option("--max-tasks-per-submit", default=Limits().max_tasks_per_submit,
              show_default=True, type=int)
@click.option("--max-params-bytes", default=Limits().max_params_bytes, show_default=True,
              type=int, help="Largest parameters + tags + environment of one task.")
@click.option("--max-inline-bytes", default=None, type=int,
              show_default=f"{Limits().max_inline_bytes}, at most a quarter of --max-frame-bytes",
              help="Largest inline data of one task: its inline inputs together, "
              "a function's arguments or return value, an output sent back inline.")
@click.option("--max-requests-per-second", default=Limits().requests_per_second,
              show_default=True, type=float, help="Per client connection (bursts of 2 s worth).")
@click.option("--tls-cert", default="", type=click.Path(dir_okay=False),
              help="PEM certificate: serve wss:// (with --tls-key; see `tidewater dev-cert`).")
@click.option("--tls-key", default="", type=click.Path(dir_okay=False),
              help="PEM private key of --tls-cert.")
@click.option("--dashboard-port", type=int, default=None,
              help="Also serve the web dashboard on this port (docs/dashboard.md; off if not given).")
@click.option("--dashboard-host", default="127.0.0.1", show_default=True,
              help="The dashboard's listening address.")
@click.option("--allow-plaintext", is_flag=True,
              help="Serve ws:// on a non-loopback --host (only behind a TLS proxy or tunnel).")
def server(db: str, host: str, port: int, lease_timeout: float, heartbeat: float,
           disconnect_grace: float | None, max_frame_bytes: int, max_tasks_per_submit: int, max_params_bytes: int,
           tls_cert: str, tls_key: str, allow_plaintext: bool,
           max_requests_per_second: float, max_inline_bytes: int | None,
           dashboard_port: int | None, dashboard_host: str) -> None:
    """Run a controller until SIGINT or SIGTERM (graceful; a second signal: at once).

    Several controllers may share one store: one leads, the others wait for
    its lock without listening, and take over when it goes.

    Outside loopback it serves TLS only: give --tls-cert and --tls-key.
    """
    from .controller import Server
    from .tls import check_listen

    logging.getLogger("tidewater").setLevel(min(logging.getLogger().level, logging.INFO))
    if max_inline_bytes is None:
        max_inline_bytes = max(1, min(Limits().max_inline_bytes, max_frame_bytes // 4))
    elif not 0 < max_inline_bytes <= max_frame_bytes // 4:
        raise click.UsageError(
            f"--max-inline-bytes must be between 1 and a quarter of --max-frame-bytes "
            f"({max_frame_bytes // 4}): a frame must hold at least one task's inline data")
    cfg = ControllerConfig(
        db=db, host=host, port=port,
        timeouts=Timeouts(lease_timeout=lease_timeout, heartbeat_interval=heartbeat,
                          disconnect_grace=disconnect_grace),
        limits=Limits(max_frame_bytes=max_frame_bytes,
                      max_tasks_per_submit=max_tasks_per_submit,
                      max_params_bytes=max_params_bytes, max_inline_bytes=max_inline_bytes,
                      requests_per_second=max_requests_per_second),
        tls_cert=tls_cert, tls_key=tls_key, allow_plaintext=allow_plaintext,
        dashboard_port=dashboard_port, dashboard_host=dashboard_host,
    )
    try:
        check_listen(cfg)
    except TidewaterError as exc:
        raise click.UsageError(str(exc)) from None

    async def go() -> None:
        srv = Server(cfg)
        async with anyio.create_task_group() as tg:

            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
                    async for signum in sigs:
                        name = signal.Signals(signum).name
                        if not srv.url or srv.stopping:
                            # A standby holds nothing; a second signal means now.
                            logging.getLogger("tidewater.controller").info(
                                "%s: stopping now", name)
                            tg.cancel_scope.cancel()
                            return
                        logging.getLogger("tidewater.controller").info(
                            "%s: shutting down gracefully (within %gs)", name, cfg.timeouts.close)
                        srv.stop()

            async def serve() -> None:
                await srv.run()
                tg.cancel_scope.cancel()

            tg.start_soon(on_signals)
            tg.start_soon(serve)

    _run(go)


@main.command("backup")
@click.argument("dest", type=click.Path(dir_okay=False))
@click.option("--db", default=default_db, show_default="~/.tidewater/tidewater.db",
              help="The store to copy: a SQLite file (path or sqlite:///path) or "
                   "postgresql://user@host/db.")
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
def backup(dest: str, db: str, force: bool) -> None:
    """Copy the store to DEST, consistently, while the controller runs.

    SQLite: an online backup into a new file (written aside, then renamed).
    PostgreSQL: `pg_dump -Fc` (needs pg_dump on PATH); restore with pg_restore.
    """
    from .controller.store.backup import backup as take

    done = _run(lambda: take(db, dest, force=force))
    err.print(f"copied {done.store} to {done.dest}: {done.tasks} tasks, "
              f"{done.size:,} bytes", highlight=False, soft_wrap=True)
    err.print(f"to restore: {done.restore}", highlight=False, soft_wrap=True)


@main.command("dev-cert")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--host", "hosts", multiple=True,
              help="Another name or IP the controller is reached by (repeatable).")
@click.option("--days", type=int, default=825, show_default=True, help="Validity.")
@click.option("--force", is_flag=True, help="Replace certificate files already there.")
def dev_cert(directory: str, hosts: tuple[str, ...], days: int, force: bool) -> None:
    """Make a development CA and a server certificate signed by it, in DIRECTORY.

    The certificate names localhost, 127.0.0.1, ::1, this machine's host name
    and every --host. The CA's private key is not kept: its ca.pem vouches for
    this server certificate only.
    """
    import datetime as dt
    import socket

    from .tls import CA_FILE, CERT_FILE, KEY_FILE, dev_cert_names, issue_dev_cert, write_dev_cert

    names = dev_cert_names(socket.gethostname(), hosts)
    try:
        made = issue_dev_cert(names, now=dt.datetime.now(dt.UTC), days=days)
        write_dev_cert(directory, made, force=force)
    except TidewaterError as exc:
        raise click.ClickException(str(exc)) from None
    d = Path(directory).expanduser().resolve()
    host = hosts[0] if hosts else socket.gethostname()
    shown = f"[{host}]" if ":" in host else host
    err.print(
        f"wrote {d / CA_FILE} (the CA: give it to clients, agents and pilots)\n"
        f"      {d / CERT_FILE} (the server certificate, for {', '.join(names)})\n"
        f"      {d / KEY_FILE} (its private key, mode 0600: keep it on the controller)\n"
        "serve TLS:\n"
        f"  tidewater server --host 0.0.0.0 --tls-cert {d / CERT_FILE} "
        f"--tls-key {d / KEY_FILE}\n"
        "connect, verifying the server:\n"
        f"  tidewater --url wss://{shown}:8765 --ca-file {d / CA_FILE} ...\n"
        f"  (or TIDEWATER_CA_FILE={d / CA_FILE}; a site agent: ca_file in its settings.toml)",
        highlight=False, soft_wrap=True,
    )


def _duration(text: str | None) -> float | None:
    """30d, 12h, 90m, 45s or plain seconds -> seconds (None stays None)."""
    if text is None:
        return None
    t = text.strip().lower()
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    try:
        if t and t[-1] in units:
            value = float(t[:-1]) * units[t[-1]]
        else:
            value = float(t)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration (30d, 12h, 90m, 3600)") from None
    if value <= 0:
        raise click.BadParameter(f"{text!r} must be positive")
    return value


def _local(ctx: click.Context, db: str | None) -> str | None:
    """The store to work on directly, or None to go through the controller (admin token)."""
    if db is not None:
        return db
    return None if ctx.obj["token"] else default_db()


@main.group()
def user() -> None:
    """Users. With --db (or no token set): on the store, as the server's owner.
    With an admin's token: through the controller."""


@user.command("add")
@click.argument("name")
@click.option("--db", default=None, help="Work on this store (a path or postgresql:// URL) "
              "directly (the server's owner).")
@click.option("--admin", is_flag=True, help="May add and remove users (the first user is one).")
@click.option("--expires", default=None, help="The token expires after this long (30d, 12h).")
@click.pass_context
def user_add(ctx: click.Context, name: str, db: str | None, admin: bool,
             expires: str | None) -> None:
    """Create a user and print their token (shown only once)."""
    from .controller.users import add_user

    seconds = _duration(expires)
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


@user.command("remove")
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
@click.pass_context
def user_ls(ctx: click.Context, db: str | None) -> None:
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
    for name, created, admin, removed in rows:
        flags = ("admin " if admin else "") + ("removed" if removed else "")
        click.echo(f"{name}\t{datetime.fromtimestamp(created):%Y-%m-%d %H:%M}\t{flags.strip()}")


# ---------------------------------------------------------------------- tokens and audit


@main.group()
def token() -> None:
    """Your tokens: create, list (never the secret), revoke."""


@token.command("create")
@click.option("--site", default=None, help="A site token for this site (default: a user token).")
@click.option("--name", default="", help="What it is for (shown in `token ls`).")
@click.option("--expires", default=None, help="Expire after this long (30d, 12h).")
@click.pass_context
def token_create(ctx: click.Context, site: str | None, name: str, expires: str | None) -> None:
    """Mint a token and print it (shown only once)."""
    seconds = _duration(expires)

    async def go() -> Any:
        async with _client(ctx) as c:
            return await c.create_token(site=site, name=name, expires_in=seconds)

    info, secret = _run(go)
    err.print(f"token {info.id} ({info.kind}{' for ' + info.site if info.site else ''}); "
              "keep it secret, it is not stored:")
    click.echo(secret)


@token.command("ls")
@click.option("--all", "all_", is_flag=True, help="Include revoked tokens.")
@click.pass_context
def token_ls(ctx: click.Context, all_: bool) -> None:
    """List your tokens by id."""

    async def go() -> list[Any]:
        async with _client(ctx) as c:
            return await c.tokens(include_revoked=all_)

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


@token.command("revoke")
@click.argument("token_id")
@click.pass_context
def token_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke a token: it stops working and its connections close at once."""

    async def go() -> None:
        async with _client(ctx) as c:
            await c.revoke_token(token_id)

    _run(go)
    err.print(f"token {token_id} revoked")


@main.command()
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


# ---------------------------------------------------------------------- sites and apps


@main.group()
def site() -> None:
    """Sites: where tasks run."""


@site.command("add")
@click.argument("name")
@click.pass_context
def site_add(ctx: click.Context, name: str) -> None:
    """Create a site and print its token (for its pilots and agent; shown once)."""

    async def go() -> str:
        async with _client(ctx) as c:
            _info, token = await c.add_site(name)
            return token

    token = _run(go)
    err.print(f"site {name!r} created; its token (keep it secret, it is not stored):")
    click.echo(token)


@site.command("ls")
@click.option("--pilots", is_flag=True, help="Also list every pilot, with when it was last heard.")
@click.option("--json", "json_out", is_flag=True, help="JSON, for scripts.")
@click.pass_context
def site_ls(ctx: click.Context, pilots: bool, json_out: bool) -> None:
    """List your sites: health (up, degraded, down) and why, agent, pilots, capacity."""

    async def go() -> list[Any]:
        async with _client(ctx) as c:
            return await c.sites()

    sites = _run(go)
    if json_out:
        click.echo(msgspec.json.encode(sites).decode())
        return
    table = Table("site", "health", "agent", "batch jobs", "pilots", "cores", "gpus",
                  "last heard", "why")
    now = time.time()
    for s in sites:
        style = {"up": "green", "degraded": "yellow", "down": "red"}.get(s.health, "")
        heard = max(s.agent_seen, s.pilot_seen)
        table.add_row(s.name, Text(s.health, style=style), "connected" if s.agent else "-",
                      str(s.batch_jobs), str(s.pilots), str(s.cores), str(s.gpus),
                      f"{now - heard:.0f} s ago" if heard else "-", Text(s.health_reason))
    out.print(table)
    if pilots:
        ptable = Table("site", "pilot", "host", "connected", "running", "cores", "gpus",
                       "batch job", "last heard")
        for s in sites:
            for p in s.pilot_list:
                ptable.add_row(s.name, p.pilot_id, p.hostname,
                               "yes" if p.connected else "no (lease running)",
                               str(p.running), str(p.cores), str(p.gpus),
                               str(p.batch_job or "-"),
                               f"{now - p.last_seen:.0f} s ago" if p.last_seen else "-")
        out.print(ptable)


@site.command("init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--name", required=True, help="The site's name (created on the controller if new).")
@click.option("--scheduler", type=click.Choice(["slurm", "pbs", "lsf", "cobalt", "local"]),
              required=True)
@click.option("--site-token", default="", envvar="TIDEWATER_SITE_TOKEN",
              help="Token of an existing site (default: create the site with your user token).")
@click.option("--option", "options", multiple=True,
              help="key=value option of the scheduler adapter (repeatable).")
@click.pass_context
def site_init(ctx: click.Context, directory: str, name: str, scheduler: str, site_token: str,
              options: tuple[str, ...]) -> None:
    """Write a site directory: settings.toml, job-template.sh and the site token."""
    from .agents.settings import init_site

    token = site_token
    if not token:
        async def go() -> str:
            async with _client(ctx) as c:
                _info, t = await c.add_site(name)
                return t

        token = _run(go)
    try:
        ca = ctx.obj["ca_file"]
        d = init_site(directory, name=name, scheduler=scheduler, controller=ctx.obj["url"],
                      token=token, options=_kv(options, "option"),
                      ca_file=str(Path(ca).expanduser().resolve()) if ca else "")
    except TidewaterError as exc:
        raise click.ClickException(str(exc)) from None
    err.print(f"site {name!r} ({scheduler}) set up in {d}; edit {d / 'settings.toml'} "
              f"and {d / 'job-template.sh'}, then run `tidewater site start {directory}`")


@site.command("start")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
def site_start(directory: str) -> None:
    """Run the site's agent: batch jobs on its scheduler, until SIGINT or SIGTERM.

    Stopping leaves the batch jobs (and the pilots in them) running; started
    again, the agent adopts them.
    """
    from .agents.settings import load
    from .agents.site import Agent

    logging.getLogger("tidewater").setLevel(min(logging.getLogger().level, logging.INFO))
    try:
        settings = load(directory)
        agent = Agent(settings)
    except TidewaterError as exc:
        raise click.ClickException(str(exc)) from None

    async def go() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(agent.run)
            err.print(f"agent of site {settings.site.name!r} connected to "
                      f"{settings.site.controller} ({settings.site.scheduler})")
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    # Batch jobs are left running: a restarted agent adopts them.
                    with anyio.move_on_after(
                            settings.site.scheduler_timeout + Timeouts().close + 5):
                        await agent.stop(f"{signal.Signals(signum).name} received")
                    tg.cancel_scope.cancel()
                    return

    _run(go)


# ---------------------------------------------------------------------- batch jobs


@main.group()
def queue() -> None:
    """Batch jobs: pilots on a site's scheduler."""


def _minutes(text: str) -> int:
    """30, 30m, 1h, 1h30m, 1:30:00 -> minutes."""
    t = text.strip().lower()
    try:
        if ":" in t:
            parts = [int(p) for p in t.split(":")]
            while len(parts) < 3:
                parts.insert(0, 0)
            h, m, sec = parts[-3:]
            return h * 60 + m + (1 if sec else 0)
        total, num = 0, ""
        for ch in t:
            if ch.isdigit():
                num += ch
            elif ch in "hm" and num:
                total += int(num) * (60 if ch == "h" else 1)
                num = ""
            else:
                raise ValueError(ch)
        return total + (int(num) if num else 0)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a wall time (30, 30m, 1h30m, 1:30:00)") from None


@queue.command("submit")
@click.option("--site", required=True)
@click.option("--nodes", type=int, default=1, show_default=True)
@click.option("--wall-time", default="30m", show_default=True, help="30m, 1h30m or 1:30:00.")
@click.option("--queue", "queue_", default="", help="Queue or partition.")
@click.option("--project", default="", help="Project or account to charge.")
@click.pass_context
def queue_submit(ctx: click.Context, site: str, nodes: int, wall_time: str, queue_: str,
                 project: str) -> None:
    """Ask SITE's agent for a batch job; prints its id."""
    minutes = _minutes(wall_time)

    async def go() -> Any:
        async with _client(ctx) as c:
            return await c.queue_submit(site, nodes=nodes, wall_time_min=minutes, queue=queue_,
                                        project=project)

    job = _run(go)
    click.echo(job.id)


@queue.command("ls")
@click.option("--site", default=None)
@click.option("--all", "all_", is_flag=True, help="Include finished jobs.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def queue_ls(ctx: click.Context, site: str | None, all_: bool, as_json: bool) -> None:
    """List batch jobs: scheduler id, state, nodes, start and end."""

    async def go() -> list[Any]:
        async with _client(ctx) as c:
            return await c.queue(site=site, include_finished=all_)

    jobs = _run(go)
    if as_json:
        for j in jobs:
            click.echo(msgspec.json.encode(j).decode())
        return
    table = Table("id", "site", "scheduler id", "state", "nodes", "wall", "queue", "pilots",
                  "started", "ended", "note")
    for j in jobs:
        note = j.error or j.flagged or j.reason
        table.add_row(str(j.id), j.site, j.scheduler_id or "-", j.state, str(j.nodes),
                      f"{j.wall_time_min}m", j.queue or "-", str(j.pilots),
                      _when(j.started_at), _when(j.ended_at), note)
    out.print(table)


@queue.command("cancel")
@click.argument("job_id", type=int)
@click.pass_context
def queue_cancel(ctx: click.Context, job_id: int) -> None:
    """Cancel a batch job (its agent removes it from the scheduler)."""

    async def go() -> None:
        async with _client(ctx) as c:
            await c.queue_cancel(job_id)

    _run(go)
    err.print(f"batch job {job_id}: cancel requested")


@main.group()
def app() -> None:
    """Apps: command templates registered on a site."""


@app.command("add")
@click.option("--site", required=True)
@click.option("--param", "params", multiple=True,
              help="Declare a parameter: name[:str|int|float|bool][=default]. "
                   "Without any, every {placeholder} is a required string.")
@click.option("--description", default="")
@click.option("--replace", is_flag=True, help="Replace an existing app of that name.")
@click.option("--function", default="",
              help="A Python function app instead of COMMAND: the callable's import path on "
                   "the site, e.g. mypkg.analysis:integrate.")
@click.option("--preprocess", default="", callback=_hook_option, metavar="PKG.MOD:NAME",
              help="Called on the site before each run, in the task's directory.")
@click.option("--postprocess", default="", callback=_hook_option, metavar="PKG.MOD:NAME",
              help="Called after each successful run; raising fails the attempt.")
@click.option("--on-error", default="", callback=_hook_option, metavar="PKG.MOD:NAME",
              help="Called when a run fails; returns 'retry' or 'fail'.")
@click.option("--on-timeout", default="", callback=_hook_option, metavar="PKG.MOD:NAME",
              help="Called when a run times out; returns 'retry' or 'fail'.")
@click.argument("name")
@click.argument("command", required=False, default="")
@click.pass_context
def app_add(ctx: click.Context, site: str, params: tuple[str, ...], description: str,
            replace: bool, function: str, preprocess: str, postprocess: str, on_error: str,
            on_timeout: str, name: str, command: str) -> None:
    """Register NAME on a site to run COMMAND, e.g. 'echo hello {name}'
    (or, with --function, a Python callable that exists on the site).

    Parameter values are always inserted shell-quoted, as one word. Hooks are
    callables that exist on the site, like --function (see tidewater.hooks).
    """
    if bool(command) == bool(function):
        raise click.UsageError("give either COMMAND or --function")
    try:
        specs: list[ParamSpec] | None = [appmod.parse_param_decl(p) for p in params] or None
    except TidewaterError as exc:
        raise click.BadParameter(str(exc)) from None
    hooks = AppHooks(preprocess=preprocess, postprocess=postprocess, on_error=on_error,
                     on_timeout=on_timeout)

    async def go() -> Any:
        async with _client(ctx) as c:
            return await c.add_app(site, name, command, params=specs, description=description,
                                   replace=replace, function=function,
                                   hooks=hooks if _hooks(hooks) else None)

    info = _run(go)
    shown = f"; hooks {_hooks(info.hooks)}" if _hooks(info.hooks) else ""
    if info.function:
        err.print(f"app {info.name!r} on {info.site!r}: Python function {info.function}{shown}",
                  markup=False, highlight=False)
        return
    decl = ", ".join(
        f"{p.name}:{p.type}" + ("" if p.required else f"={p.default}") for p in info.params
    )
    err.print(f"app {info.name!r} on {info.site!r}: {info.command}  "
              f"({decl or 'no parameters'}){shown}", markup=False, highlight=False)


def _hooks(hooks: AppHooks | None) -> str:
    """``preprocess=pkg.mod:name, ...`` for the hooks that are set ("" for none)."""
    if hooks is None:
        return ""
    return ", ".join(f"{k}={v}" for k, v in msgspec.structs.asdict(hooks).items() if v)


@app.command("ls")
@click.option("--site", default=None)
@click.pass_context
def app_ls(ctx: click.Context, site: str | None) -> None:
    """List apps."""

    async def go() -> list[Any]:
        async with _client(ctx) as c:
            return await c.apps(site)

    apps = _run(go)
    with_hooks = any(_hooks(a.hooks) for a in apps)
    table = Table("site", "app", "command", "parameters", *(["hooks"] if with_hooks else []))
    for a in apps:
        decl = ", ".join(f"{p.name}:{p.type}" + ("" if p.required else f"={p.default}")
                         for p in a.params)
        hooks = [Text(_hooks(a.hooks).replace(", ", "\n"))] if with_hooks else []
        table.add_row(a.site, a.name, a.command, decl, *hooks)
    out.print(table)


# ---------------------------------------------------------------------- pilot


@main.command()
@click.option("--site", default="", help="Site name (implied by a site token).")
@click.option("--cores", type=int, default=lambda: os.cpu_count() or 1,
              show_default="all cores")
@click.option("--gpus", type=int, default=0, show_default=True)
@click.option("--prefetch", type=int, default=2, show_default=True,
              help="Extra cores' worth of tasks kept queued locally.")
@click.option("--workdir", default="", help="Root of task work directories.",
              show_default="~/.tidewater/work")
@click.option("--pilot-id", default="", help="Stable id (default: host + random).")
@click.option("--heartbeat", type=float, default=5.0, show_default=True)
@click.option("--token-file", default="", help="Read the token from this file (re-read on reconnect).")
@click.option("--batch-job", type=int, default=0,
              help="The batch job this pilot runs in (its nodes and end time are discovered).")
@click.option("--idle-timeout", type=float, default=None, help="Exit after this many idle seconds.")
@click.option("--wall-margin", type=float, default=30.0, show_default=True,
              help="Seconds before the batch job's end to stop taking and running tasks.")
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=Timeouts().drain,
              show_default=True,
              help="On SIGTERM/SIGINT, seconds running tasks may finish before they are "
              "killed and handed back (a second signal: at once).")
@click.option("--launcher", default="", help="MPI launcher for multi-rank tasks "
              "(mpiexec, cray-mpiexec, mpirun, srun, aprun, jsrun).")
@click.option("--head", is_flag=True, help="Head mode: serve every node of the batch job, "
              "launching every task through --launcher.")
@click.option("--relay", envvar="TIDEWATER_RELAY", default="", metavar="HOST:PORT",
              help="Connect through the site agent's relay at HOST:PORT (compute nodes that "
              "cannot reach the controller); TLS and the token still go to the controller. "
              "Or TIDEWATER_RELAY.")
@click.pass_context
def pilot(ctx: click.Context, site: str, cores: int, gpus: int, prefetch: int, workdir: str,
          pilot_id: str, heartbeat: float, token_file: str, batch_job: int,
          idle_timeout: float | None, wall_margin: float, drain_timeout: float, launcher: str,
          head: bool, relay: str) -> None:
    """Run a pilot on this machine: it runs the site's tasks until stopped.

    SIGTERM or SIGINT: it takes no more work, hands back what has not started,
    lets running tasks finish for up to --drain-timeout seconds, hands back
    what still runs, and exits 0. A second signal skips the wait.
    """
    import socket

    from .pilot import PilotConfig, run_pilot
    from .pilot.nodes import Node, discover

    logging.getLogger("tidewater").setLevel(min(logging.getLogger().level, logging.INFO))
    o = ctx.obj
    if not o["token"] and not token_file:
        raise click.UsageError("a pilot needs a token: set TIDEWATER_TOKEN, --token or --token-file")
    if relay:
        from .transport import format_address, parse_address
        try:
            relay = format_address(*parse_address(relay, "--relay"))
        except TidewaterError as exc:
            raise click.BadParameter(str(exc), param_hint="--relay") from None
    explicit = ctx.get_parameter_source("cores") == click.core.ParameterSource.COMMANDLINE
    host = socket.gethostname()
    end_time = None
    head_nodes = []
    if batch_job:
        try:
            alloc = discover(os.environ, read_file=lambda f: Path(f).read_text(), hostname=host,
                             local_cores=cores, local_gpus=gpus, now=time.time())
        except TidewaterError as exc:
            raise click.UsageError(f"cannot read the batch job's allocation: {exc}") from None
        end_time = alloc.end_time
        if head:
            # The scheduler's slot counts may not be the nodes' cores (LSF, Cobalt): the
            # site's configured node shape wins when given.
            explicit_gpus = ctx.get_parameter_source("gpus") == click.core.ParameterSource.COMMANDLINE
            head_nodes = [
                Node(n.host, cores if explicit else n.cores, gpus if explicit_gpus else n.gpus)
                for n in alloc.nodes
            ]
        else:
            mine = [n for n in alloc.nodes if n.host.split(".")[0] == host.split(".")[0]]
            if mine and not explicit:
                cores, gpus = mine[0].cores, mine[0].gpus
        index = next((os.environ[v] for v in ("TIDEWATER_NODE_INDEX", "SLURM_PROCID", "PMI_RANK")
                      if v in os.environ), "0")
        pilot_id = pilot_id or f"job{batch_job}-{host}-{index}-{os.urandom(3).hex()}"
    cfg = PilotConfig(url=o["url"], token=o["token"], site=site, cores=cores, gpus=gpus,
                      prefetch=prefetch, workdir=workdir, pilot_id=pilot_id,
                      timeouts=Timeouts(heartbeat_interval=heartbeat, drain=drain_timeout),
                      token_file=token_file,
                      batch_job=batch_job, end_time=end_time, wall_margin=wall_margin,
                      idle_timeout=idle_timeout, launcher=launcher or None, head_nodes=head_nodes,
                      ca_file=o["ca_file"], relay=relay)
    _run(lambda: run_pilot(cfg))


# ---------------------------------------------------------------------- tasks


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=False)


@main.command()
@click.option("--site", "site", required=True, multiple=True,
              help="A site; repeat it, or give 'any' (your sites with the app), and the "
                   "controller routes each task to one of them.")
@click.option("--policy", default="", metavar="POLICY",
              help="How to route among several sites: earliest-start (default), "
                   "shortest-backlog, round-robin.")
@click.option("--tag", "tags", multiple=True, help="key=value (repeatable).")
@click.option("--priority", type=int, default=0)
@click.option("--cores", type=int, default=1)
@click.option("--gpus", type=int, default=0)
@click.option("--timeout", type=float, default=None, help="Seconds before the task is killed.")
@click.option("--retries", type=int, default=3, show_default=True)
@click.option("--params-file", type=click.File("r"), default=None,
              help="JSON lines, one object of parameters per task: submit many at once.")
@click.option("--wait", is_flag=True, help="Wait for the tasks and show their results.")
@click.option("--args", "call_args", default=None,
              help="A function app's arguments as a JSON list (e.g. '[3, \"x\"]').")
@click.option("--input", "inputs", multiple=True, callback=_inputs_option,
              metavar="PATH=SOURCE",
              help="Put SOURCE at PATH in the task's directory before it runs: a url "
                   "(file://, sftp://, globus://), @LOCALFILE (sent inline, up to 1 MiB) or "
                   "task:ID:OUTPUT (another task's output). Repeatable.")
@click.option("--output", "outputs", multiple=True, callback=_outputs_option,
              metavar="PATH[=URL]",
              help="A file or directory the task leaves: sent to URL if given, else kept "
                   "(`tidewater download`). Repeatable.")
@click.option("--parent", "parents", multiple=True, type=int, callback=_parents_option,
              metavar="ID",
              help="A task that must finish first. Repeatable.")
@click.argument("app")
@click.argument("params", nargs=-1)
@click.pass_context
def submit(ctx: click.Context, site: tuple[str, ...], policy: str, tags: tuple[str, ...],
           priority: int, cores: int,
           gpus: int, timeout: float | None, retries: int, params_file: Any, wait: bool,
           call_args: str | None, inputs: list[Input], outputs: list[Output],
           parents: tuple[int, ...], app: str, params: tuple[str, ...]) -> None:
    """Submit APP with PARAMS (name=value ...); prints the task ids.

    --input, --output and --parent apply to every task (also with --params-file).
    """
    from . import codec

    blob = b""
    if call_args is not None:
        try:
            values = json.loads(call_args)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"--args: {exc}") from None
        if not isinstance(values, list):
            raise click.BadParameter("--args must be a JSON list")
        blob = codec.encode_call(tuple(values), {})
    base: dict[str, Any] = dict(_kv(params, "parameter"))
    rows: list[dict[str, Any]] = [base]
    if params_file is not None:
        try:
            rows = [{**base, **json.loads(line)} for line in params_file if line.strip()]
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"--params-file: {exc}") from None
    from .client import route_fields

    where = route_fields(site[0] if len(site) == 1 else list(site), policy)
    specs = [TaskSpec(app=app, **where, params=r, tags=_kv(tags, "tag"), priority=priority,
                      resources=Resources(cores=cores, gpus=gpus), timeout=timeout,
                      max_retries=retries, args=blob, inputs=inputs, outputs=outputs,
                      parents=list(parents)) for r in rows]

    async def go() -> int:
        async with _client(ctx) as c:
            if len(specs) == 1 and not wait:
                (task,) = await c.submit_many(specs, push_results=False)
                click.echo(task.id)
                return 0
            with _progress() as bar:
                sub = bar.add_task("submitted", total=len(specs))
                tasks = await c.submit_many(specs, progress=lambda n: bar.advance(sub, n),
                                            push_results=wait)
                if not wait:
                    for t in tasks:
                        click.echo(t.id)
                    return 0
                done = bar.add_task("finished ", total=len(tasks))
                infos: list[TaskInfo] = []
                async for info in c.as_completed(tasks):
                    infos.append(info)
                    bar.advance(done)
            bad = [i for i in infos if i.state != "JOB_FINISHED"]
            if len(infos) == 1:
                _show(infos[0])
            else:
                _table(sorted(infos, key=lambda i: i.id)[-50:])
                err.print(f"{len(infos) - len(bad)} finished, {len(bad)} did not")
            return 1 if bad else 0

    sys.exit(_run(go))


def _show(i: TaskInfo) -> None:
    out.print(f"task {i.id} [bold]{i.state}[/bold] app={i.app} site={i.site} "
              f"exit={i.exit_code} attempt={i.attempt}")
    if i.error:
        out.print(f"error: {i.error}")
    if i.started_at and i.finished_at:
        out.print(f"queued {i.started_at - i.created_at:.3f}s, ran {i.finished_at - i.started_at:.3f}s")
    if i.result is not None:
        from . import codec

        try:
            shown = repr(codec.decode(i.result))
        except ValueError as exc:
            shown = f"(cannot decode: {exc})"
        out.print(f"result: {shown[:2000]}", markup=False, highlight=False)
    if i.files:
        _files(i.files)
    for r in i.routes:
        _route(r)
    if i.stdout_tail:
        out.print("--- stdout (tail) ---", style="dim")
        out.print(i.stdout_tail, end="" if i.stdout_tail.endswith("\n") else "\n", markup=False,
                  highlight=False)
    if i.stderr_tail:
        out.print("--- stderr (tail) ---", style="dim")
        out.print(i.stderr_tail, end="" if i.stderr_tail.endswith("\n") else "\n", markup=False,
                  highlight=False)


def _secs(x: float | None) -> str:
    return "never" if x is None else f"{x:.1f}s"


def _route(r: Route) -> None:
    out.print(f"routed to {r.chosen} by {r.policy} at {_when(r.time)}"
              + (f" ({r.reason})" if r.reason else ""), highlight=False)
    table = Table(box=None, pad_edge=False)
    for col in ("site", "health", "est. start", "est. finish", "backlog", "transfer", "run",
                "note"):
        table.add_column(col)
    for e in r.candidates:
        table.add_row(("* " if e.site == r.chosen else "  ") + e.site, e.health,
                      _secs(e.start), _secs(e.finish), str(e.backlog), _secs(e.transfer),
                      _secs(e.run), e.note)
    out.print(table)


def _files(files: list[FileInfo]) -> None:
    """A task's inputs and outputs: where each comes from or goes, and what became of it."""
    table = Table("dir", "path", "state", "size", "url / source", "sha256", "error")
    for f in files:
        if f.url:
            where = f.url
        elif f.task:
            where = f"task:{f.task}:{f.output}"
        else:
            where = "inline" if f.direction == "in" else "-"
        table.add_row(f.direction, Text(f.path), f.state, "" if f.size is None else str(f.size),
                      Text(where), f.sha256[:12], Text(f.error))
    out.print(table)


def _table(infos: list[TaskInfo]) -> None:
    table = Table("id", "app", "site", "state", "exit", "tags", "created", "ran (s)")
    for i in infos:
        ran = f"{i.finished_at - i.started_at:.3f}" if i.started_at and i.finished_at else ""
        table.add_row(str(i.id), i.app, i.site, i.state, "" if i.exit_code is None else
                      str(i.exit_code), ",".join(f"{k}={v}" for k, v in i.tags.items()),
                      _when(i.created_at), ran)
    out.print(table)


@main.command("ls")
@click.option("--state", "states", multiple=True, help="Only tasks in this state (repeatable).")
@click.option("--tag", "tags", multiple=True, help="key=value (repeatable, all must match).")
@click.option("--site", default=None)
@click.option("--app", "app_name", default=None)
@click.option("--limit", type=int, default=100, show_default=True,
              help="Show the most recent LIMIT matching tasks.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def ls(ctx: click.Context, states: tuple[str, ...], tags: tuple[str, ...], site: str | None,
       app_name: str | None, limit: int, as_json: bool) -> None:
    """List tasks."""

    async def go() -> list[TaskInfo]:
        async with _client(ctx) as c:
            return await c.tasks(state=list(states), tags=_kv(tags, "tag"), site=site,
                                 app=app_name, limit=limit, newest=True)

    infos = _run(go)
    if as_json:
        for i in infos:
            click.echo(msgspec.json.encode(i).decode())
    else:
        _table(infos)


@main.command()
@click.argument("task_id", type=int)
@click.option("--wait", is_flag=True, help="Wait until the task is final.")
@click.pass_context
def show(ctx: click.Context, task_id: int, wait: bool) -> None:
    """Show one task, with the tail of its output."""

    async def go() -> TaskInfo:
        async with _client(ctx) as c:
            if wait:
                (info,) = await c.wait([task_id])
                return info
            (info,) = await c.tasks(ids=[task_id])
            return info

    try:
        _show(_run(go))
    except ValueError:
        err.print(f"[red]error:[/red] no task with id {task_id}")
        sys.exit(1)


@main.command()
@click.argument("task_id", type=int)
@click.argument("name")
@click.argument("dest", default=".", type=click.Path(path_type=Path))
@click.pass_context
def download(ctx: click.Context, task_id: int, name: str, dest: Path) -> None:
    """Write output NAME of a finished task to DEST (a file, or a directory to put it in;
    default: here). Prints the path written and its size."""

    async def go() -> Path:
        async with _client(ctx) as c:
            try:
                return await c.download(task_id, name, dest)
            except OSError as exc:
                raise click.ClickException(f"cannot write {str(dest)!r}: "
                                           f"{exc.strerror or exc}") from None

    path = _run(go)
    click.echo(f"{path}\t{path.stat().st_size} bytes")


@main.command()
@click.option("--tag", "tags", multiple=True, help="key=value (repeatable).")
@click.option("--id", "ids", multiple=True, type=int)
@click.option("--state", "states", multiple=True)
@click.option("--site", default=None)
@click.option("--since", type=int, default=0, help="Replay events after this event id first.")
@click.pass_context
def watch(ctx: click.Context, tags: tuple[str, ...], ids: tuple[int, ...],
          states: tuple[str, ...], site: str | None, since: int) -> None:
    """Print task events as they happen (pushed, not polled). Ctrl-C to stop."""

    async def go() -> None:
        async with _client(ctx) as c:
            async with c.watch(tags=_kv(tags, "tag"), ids=list(ids), states=list(states),
                               site=site, since_event=since) as events:
                async for e in events:
                    out.print(f"{_when(e.time)} #{e.id} task {e.task_id} "
                              f"{e.from_state} -> [bold]{e.to_state}[/bold]"
                              + (f" {e.data}" if e.data else ""), highlight=False)

    try:
        _run(go)
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("ids", nargs=-1, type=int, required=True)
@click.pass_context
def cancel(ctx: click.Context, ids: tuple[int, ...]) -> None:
    """Cancel tasks (running ones are killed)."""

    async def go() -> list[int]:
        async with _client(ctx) as c:
            return await c.cancel(list(ids))

    done = _run(go)
    for i in ids:
        click.echo(f"{i}\t{'cancelled' if i in done else 'already final'}")


# ---------------------------------------------------------------------- demo


@main.command()
@click.option("--frames", type=int, default=200, show_default=True,
              help="Detector frames to analyse.")
@click.option("--pilots", type=int, default=2, show_default=True)
@click.option("--cores", type=int, default=1, show_default=True, help="Cores per pilot.")
@click.option("--burst", type=int, default=200, show_default=True,
              help="No-op tasks run one at a time to measure the warm round trip.")
@click.option("--keep", type=click.Path(path_type=Path), default=None,
              help="Keep the store and outputs in this directory.")
def demo(frames: int, pilots: int, cores: int, burst: int, keep: Path | None) -> None:
    """Embedded controller + idle local site + pilots: frame analysis, then warm round trips."""
    import importlib.util

    if importlib.util.find_spec("scipy") is None:
        raise click.ClickException(
            "the demo's frame analysis needs scipy: pip install 'tidewater-hpc[demo]' "
            "(scripts/demo.sh installs it)")
    if frames < 1 or pilots < 1 or cores < 1 or burst < 0:
        raise click.ClickException("--frames, --pilots and --cores must be at least 1, "
                                   "--burst at least 0")
    from .demo import run_demo

    started = time.perf_counter()
    ok = anyio.run(lambda: run_demo(frames=frames, pilots=pilots, cores=cores, burst=burst,
                                    keep=keep))
    err.print(f"demo {'passed' if ok else 'FAILED'} in {time.perf_counter() - started:.1f} s "
              "(all of `tidewater demo`: controller, site, pilots, frames, burst, clean-up)",
              highlight=False)
    sys.exit(0 if ok else 1)


main.add_command(report)
main.add_command(example)
main.add_command(cli_lifecycle.retry)
main.add_command(cli_lifecycle.logs)
main.add_command(top)


if __name__ == "__main__":
    main()
