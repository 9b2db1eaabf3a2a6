"""``tidewater`` command line: the same operations as the Python API.

This module holds the ``main`` group, its global options and the registration
of every command; the commands live in ``cli_*`` modules of one concept each.
The global options (``--url``, ``--token``, ``--ca-file``, ``--profile``,
``-v``) are accepted before or after the subcommand: :class:`MainGroup`
gives every registered command (and the commands of its groups) a hidden
copy of them. Exit codes: :class:`tidewater.cli_base.Exit`.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from .cli_admin import audit, token, user
from .cli_apps import app
from .cli_base import state
from .cli_config import config_group, login
from .cli_example import example
from .cli_filters import cancel, summary, wait
from .cli_lifecycle import logs, retry
from .cli_report import report
from .cli_server import backup, demo, dev_cert, server
from .cli_sites import pilot, queue, site
from .cli_tasks import download, ls, show, submit, watch
from .cli_top import top


def _flag(key: str) -> Any:
    def store(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        state(ctx).set_flag(key, value)
    return store


def _verbose(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    st = state(ctx)
    st.verbose += value
    if value:
        logging.getLogger().setLevel(max(logging.DEBUG, logging.WARNING - 10 * st.verbose))


def global_options(*, hidden: bool) -> list[click.Option]:
    """The options every command takes, before or after its name."""
    return [
        click.Option(["--url"], default=None, expose_value=False, callback=_flag("url"),
                     hidden=hidden, metavar="URL",
                     help="Controller URL (or TIDEWATER_URL, or the profile's; default "
                          "ws://127.0.0.1:8765); several, comma-separated, for a leader and "
                          "its standbys: the first that answers is used."),
        click.Option(["--token"], default=None, expose_value=False, callback=_flag("token"),
                     hidden=hidden, help="Token (or TIDEWATER_TOKEN, or the profile's "
                     "token file)."),
        click.Option(["--ca-file"], default=None, expose_value=False, hidden=hidden,
                     callback=_flag("ca_file"), type=click.Path(dir_okay=False),
                     help="CA certificate a wss:// controller is verified against (or "
                          "TIDEWATER_CA_FILE, or the profile's; default: the system trust "
                          "store)."),
        click.Option(["--profile"], default=None, expose_value=False, hidden=hidden,
                     callback=_flag("profile"), metavar="NAME",
                     help="Use this profile of ~/.config/tidewater/config.toml (or "
                          "TIDEWATER_PROFILE; default: its default_profile)."),
        click.Option(["-v", "--verbose"], count=True, expose_value=False, hidden=hidden,
                     callback=_verbose, help="More logging (-vv for debug)."),
    ]


def _attach(cmd: click.Command) -> None:
    """Give ``cmd`` (and, for a group, its commands) the global options it lacks."""
    taken = {o for p in cmd.params for o in p.opts + p.secondary_opts}
    names = {p.name for p in cmd.params}
    for opt in global_options(hidden=True):
        if not taken & set(opt.opts) and opt.name not in names:
            cmd.params.append(opt)
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            _attach(sub)


class MainGroup(click.Group):
    """The top group: a command added to it accepts the global options too."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        _attach(cmd)
        super().add_command(cmd, name)


@click.group(cls=MainGroup, context_settings={"help_option_names": ["-h", "--help"]},
             params=global_options(hidden=False))
@click.version_option(package_name="tidewater-hpc", prog_name="tidewater",
                      message="%(prog)s %(version)s")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Tidewater: send analysis tasks to HPC sites and get results in seconds.

    Global options may come before or after the command. Exit codes: 0 success,
    1 a task failed (or another error), 2 usage, 3 not found, 4 refused
    (token or permission), 5 controller unreachable or timed out.
    """
    st = state(ctx)
    level = max(logging.DEBUG, logging.WARNING - 10 * st.verbose)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


# ---------------------------------------------------------------------- registration
# One line per command; a new command module adds its own line here.

main.add_command(server)
main.add_command(backup)
main.add_command(dev_cert)
main.add_command(user)
main.add_command(token)
main.add_command(audit)
main.add_command(site)
main.add_command(queue)
main.add_command(pilot)
main.add_command(app)
main.add_command(submit)
main.add_command(ls)
main.add_command(show)
main.add_command(download)
main.add_command(watch)
main.add_command(cancel)
main.add_command(wait)
main.add_command(summary)
main.add_command(demo)
main.add_command(report)
main.add_command(example)
main.add_command(retry)
main.add_command(logs)
main.add_command(login)
main.add_command(config_group)
main.add_command(top)


if __name__ == "__main__":
    main()
