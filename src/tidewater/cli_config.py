"""``tidewater login`` and ``tidewater config show``: profiles of the per-user config file.

The file, its precedence rules and the resolution live in
:mod:`tidewater.profiles`; this module only talks to the user.
"""

from __future__ import annotations

import json
import os
import sys

import click
from rich.table import Table

from .cli_base import _notice, _run, err, out, state
from .client import Client
from .config import Timeouts
from .errors import ConfigError
from .profiles import save_profile


def _read_token(token_file: str | None, flag: str | None) -> str:
    """The token to log in with: --token-file, --token, else stdin (piped) or a prompt."""
    if token_file:
        try:
            with open(os.path.expanduser(token_file)) as fh:
                return fh.read().strip()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {token_file!r}: {exc.strerror or exc}",
                                     param_hint="--token-file") from None
    if flag:
        return flag
    if not sys.stdin.isatty():
        return sys.stdin.readline().strip()
    value: str = click.prompt("token", hide_input=True)
    return value.strip()


@click.command()
@click.argument("url")
@click.option("--profile", "name", default="default", show_default=True,
              help="The profile to write.")
@click.option("--token-file", default=None, type=click.Path(dir_okay=False),
              help="Read the token from this file (default: --token, else stdin or a "
                   "prompt).")
@click.option("--site", default="", help="Default site of `submit` with this profile.")
@click.option("--default/--no-default", "make_default", default=True, show_default=True,
              help="Make this profile the one used when none is named.")
@click.pass_context
def login(ctx: click.Context, url: str, name: str, token_file: str | None, site: str,
          make_default: bool) -> None:
    """Check a token and save it in a profile.

    The token is verified against the controller at URL, then stored in a
    file readable by you only (mode 0600) beside the config file
    (~/.config/tidewater/config.toml, or under $XDG_CONFIG_HOME), and the
    profile records URL, that file, --ca-file and --site. Nothing is written
    when the controller refuses the token (exit 4) or cannot be reached (5).
    """
    st = state(ctx)
    if (ctx.get_parameter_source("name") == click.core.ParameterSource.DEFAULT
            and st.flags.get("profile")):
        name = str(st.flags["profile"])  # `tidewater --profile NAME login URL`
    token = _read_token(token_file, st.flags.get("token"))
    if not token:
        raise click.UsageError("no token given: pass --token-file, --token, or type it")
    ca_file = st.flags.get("ca_file") or ""
    if ca_file:
        ca_file = os.path.abspath(os.path.expanduser(ca_file))

    async def go() -> str:
        async with Client(url, token, name="cli", reconnect=False, ca_file=ca_file or None,
                          on_notice=_notice, timeouts=Timeouts()) as c:
            assert c.welcome is not None
            return c.welcome.user or c.welcome.site

    who = _run(go)
    try:
        path, token_path = save_profile(os.environ, name, {"url": url, "ca_file": ca_file,
                                                           "site": site},
                                        token=token, make_default=make_default)
    except (ConfigError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    err.print(f"logged in to {url} as {who!r}; profile {name!r} written to {path}"
              f"{' (the default)' if make_default else ''}, token in {token_path}",
              highlight=False, soft_wrap=True)


@click.group("config")
def config_group() -> None:
    """The client's settings and their sources."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Show each setting and where it came from.

    Each value comes from the first of: a flag, the environment, the
    selected profile, a default. The token itself is never shown, only its
    first characters.
    """
    st = state(ctx)
    r = st.resolved()
    rows = {}
    for key, s in r.settings().items():
        value, source = s.value, s.source
        if key == "token":
            if not value and r.token_file.value:
                value, source = st["token"], f"token_file ({r.token_file.source})"
            value = value[:8] + "..." if value else ""
        rows[key] = {"value": value, "source": source}
    if as_json:
        click.echo(json.dumps(rows))
        return
    table = Table("setting", "value", "source")
    for key, row in rows.items():
        table.add_row(key, row["value"] or "-", row["source"])
    out.print(table)
