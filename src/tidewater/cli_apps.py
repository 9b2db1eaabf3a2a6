"""``tidewater app``: command templates and Python functions registered on a site."""

from __future__ import annotations

from typing import Any

import click
import msgspec
from rich.table import Table
from rich.text import Text

from . import apps as appmod
from .cli_base import _client, _run, err, out
from .errors import TidewaterError
from .proto import (
    AppHooks,
    ParamSpec,
)


def _hook_option(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if value:
        from . import codec

        try:
            codec.check_import_path(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@click.group()
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
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def app_ls(ctx: click.Context, site: str | None, as_json: bool) -> None:
    """List apps."""

    async def go() -> list[Any]:
        async with _client(ctx) as c:
            return await c.apps(site)

    apps = _run(go)
    if as_json:
        for a in apps:
            click.echo(msgspec.json.encode(a).decode())
        return
    with_hooks = any(_hooks(a.hooks) for a in apps)
    table = Table("site", "app", "command or function", "parameters",
                  *(["hooks"] if with_hooks else []))
    for a in apps:
        decl = ", ".join(f"{p.name}:{p.type}" + ("" if p.required else f"={p.default}")
                         for p in a.params)
        hooks = [Text(_hooks(a.hooks).replace(", ", "\n"))] if with_hooks else []
        what = a.command or (f"function {a.function}" if a.function else "")
        table.add_row(a.site, a.name, Text(what), decl, *hooks)
    out.print(table)
