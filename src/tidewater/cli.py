"""``tidewater`` command line: the same operations as the Python API.

This module holds the ``main`` group, its global options and the registration
of every command; the commands live in ``cli_*`` modules of one concept each.
"""

from __future__ import annotations

import logging

import click

from .cli_admin import audit, token, user
from .cli_apps import app
from .cli_example import example
from .cli_report import report
from .cli_server import backup, demo, dev_cert, server
from .cli_sites import pilot, queue, site
from .cli_tasks import cancel, download, ls, show, submit, watch


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
main.add_command(demo)
main.add_command(report)
main.add_command(example)


if __name__ == "__main__":
    main()
