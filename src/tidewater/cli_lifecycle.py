"""``tidewater retry`` and ``tidewater logs``: a task's life after it ended, at the command line.

``retry`` sends FAILED tasks back to run under the same ids (``Client.retry``);
``logs`` prints a task's whole stdout or stderr from its site, and with
``--follow`` keeps printing while it runs (``Client.logs``/``follow_logs``).
See docs/tasks.md.
"""

from __future__ import annotations

import sys

import click

from .cli_base import DURATION, Exit, _client, _kv, _run, err


@click.command(short_help="Run failed tasks again, same ids.")
@click.argument("ids", nargs=-1, type=int)
@click.option("--tag", "tags", multiple=True, help="key=value (repeatable, all must match).")
@click.option("--state", "states", multiple=True,
              help="Only tasks in this state; only FAILED ones are ever retried.")
@click.option("--site", default=None, help="Only tasks of this site.")
@click.option("--app", "app_name", default=None, help="Only tasks of this app.")
@click.pass_context
def retry(ctx: click.Context, ids: tuple[int, ...], tags: tuple[str, ...],
          states: tuple[str, ...], site: str | None, app_name: str | None) -> None:
    """Run FAILED tasks again under the same ids: the tasks IDS, or those matching the
    filters (``--state FAILED`` alone: every failed task). Children that failed because
    a retried task failed wait for it again. Prints each task sent back to run; exits
    with status 3 when none was (tasks in other states are left alone)."""
    filtered = bool(tags or states or site or app_name)
    if ids and filtered:
        raise click.UsageError("give task ids or filters (--tag, --state, --site, --app), "
                               "not both")
    if not ids and not filtered:
        raise click.UsageError("name the tasks to retry: ids, or filters (--state FAILED "
                               "retries every failed task)")

    async def go() -> list[int]:
        async with _client(ctx) as c:
            if ids:
                return await c.retry(list(ids))
            return await c.retry(state=list(states), tags=_kv(tags, "tag"), site=site,
                                 app=app_name)

    done = _run(go)
    for i in done:
        click.echo(f"{i}\tretried")
    for i in ids:
        if i not in done:
            click.echo(f"{i}\tnot failed: left alone")
    if not done:
        err.print("no task was retried (only FAILED tasks are)", highlight=False)
        sys.exit(Exit.NOT_FOUND)


@click.command(short_help="Print a task's whole stdout or stderr.")
@click.argument("task_id", type=int)
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing while the task runs; stop once it is final.")
@click.option("--stderr", "use_stderr", is_flag=True, help="Its stderr instead of stdout.")
@click.option("--interval", type=DURATION, default="0.5s", show_default=True,
              help="With --follow: how long between reads while the task runs.")
@click.pass_context
def logs(ctx: click.Context, task_id: int, follow: bool, use_stderr: bool,
         interval: float) -> None:
    """Print a task's whole stdout (or stderr) from its work directory on its site."""
    sink = sys.stdout.buffer

    async def go() -> None:
        async with _client(ctx) as c:
            if not follow:
                sink.write(await c.logs(task_id, stderr=use_stderr))
                sink.flush()
                return
            async for piece in c.follow_logs(task_id, stderr=use_stderr, interval=interval):
                sink.write(piece)
                sink.flush()

    _run(go, until_interrupted=True)
