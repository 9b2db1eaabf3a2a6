"""``tidewater cancel``, ``wait`` and ``summary``: acting on task ids or on a filter of tasks.

A filter is the options ``ls`` takes (``--tag k=v``, ``--state S``,
``--site``, ``--app``), all of which must match. The matching ids are read
through the client a page at a time, then acted on.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
import msgspec
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .cli_base import DURATION, Exit, _client, _kv, _run, err, fail, out
from .client import Client
from .durations import format_duration
from .errors import NotFound
from .proto import TaskCounts, TaskInfo
from .states import FINAL, STORED, TaskState

PAGE = 1000
"""Tasks read per request when listing a filter's matches."""


def _filter_options(fn: Any) -> Any:
    for opt in reversed([
        click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE",
                     help="Tasks with this tag (repeatable, all must match)."),
        click.option("--state", "states", multiple=True,
                     help="Tasks in this state (repeatable)."),
        click.option("--site", default=None, help="Tasks of this site."),
        click.option("--app", "app_name", default=None, help="Tasks of this app."),
    ]):
        fn = opt(fn)
    return fn


def _has_filter(tags: tuple[str, ...], states: tuple[str, ...], site: str | None,
                app_name: str | None) -> bool:
    return bool(tags or states or site or app_name)


async def matching_ids(c: Client, *, ids: tuple[int, ...], tags: tuple[str, ...],
                       states: list[str], site: str | None, app_name: str | None) -> list[int]:
    """Ids of the tasks matching every filter (among ``ids`` when given), oldest first,
    read a page at a time. Raises NotFound / InvalidRequest as the controller does."""
    found: list[int] = []
    after = 0
    while True:
        page = await c.tasks(ids=list(ids), state=states, tags=_kv(tags, "--tag"), site=site,
                             app=app_name, limit=PAGE, after_id=after)
        found.extend(t.id for t in page)
        if len(page) < PAGE:
            return found
        after = page[-1].id


@click.command()
@click.argument("ids", nargs=-1, type=int)
@_filter_options
@click.pass_context
def cancel(ctx: click.Context, ids: tuple[int, ...], tags: tuple[str, ...],
           states: tuple[str, ...], site: str | None, app_name: str | None) -> None:
    """Cancel tasks by id or by filter.

    Running tasks are killed. With --tag, --state, --site or --app, every
    matching task that is not final yet is cancelled (with ids too: those of
    them that match). Prints each id and what became of it, then how many
    were cancelled; exits 3 (not found) when none was.
    """
    filtered = _has_filter(tags, states, site, app_name)
    if not ids and not filtered:
        raise click.UsageError("give task ids, or a filter: --tag, --state, --site, --app")
    if states and set(states) <= FINAL:
        raise click.UsageError(f"tasks in {', '.join(states)} are final already: "
                               "nothing to cancel")
    # Final tasks cannot be cancelled: only the others are listed.
    live = [s for s in states if s not in FINAL] or sorted(s.value for s in STORED - FINAL)

    async def go() -> tuple[list[int], list[int]]:
        async with _client(ctx) as c:
            wanted = list(ids)
            if filtered:
                wanted = await matching_ids(c, ids=ids, tags=tags, states=live, site=site,
                                            app_name=app_name)
            done: list[int] = []
            for k in range(0, len(wanted), PAGE):
                done += await c.cancel(wanted[k:k + PAGE])
            return wanted, done

    wanted, done = _run(go)
    cancelled = set(done)
    for i in wanted:
        click.echo(f"{i}\t{'cancelled' if i in cancelled else 'already final'}")
    err.print(f"{len(cancelled)} cancelled, {len(wanted) - len(cancelled)} already final",
              highlight=False)
    if not cancelled:
        fail("no task was cancelled" + ("" if wanted else ": none matched"), Exit.NOT_FOUND)


@click.command()
@click.argument("ids", nargs=-1, type=int)
@_filter_options
@click.option("--timeout", type=DURATION, default=None,
              help="Give up after this long (exit 5).")
@click.option("--json", "as_json", is_flag=True,
              help="Each task's final state as one JSON object per line, as it arrives.")
@click.pass_context
def wait(ctx: click.Context, ids: tuple[int, ...], tags: tuple[str, ...],
         states: tuple[str, ...], site: str | None, app_name: str | None,
         timeout: float | None, as_json: bool) -> None:
    """Wait for tasks by id or by filter.

    The tasks matching when it starts are waited for, with a progress bar
    on stderr (when it is a terminal). Exits 0 when every one finished,
    1 when any failed or was killed, 3 when none matched, 5 on --timeout.
    """
    if not ids and not _has_filter(tags, states, site, app_name):
        raise click.UsageError("give task ids, or a filter: --tag, --state, --site, --app")

    async def go() -> list[TaskInfo]:
        async with _client(ctx) as c:
            wanted = await matching_ids(c, ids=ids, tags=tags, states=list(states), site=site,
                                        app_name=app_name)
            missing = sorted(set(ids) - set(wanted))
            if ids and missing and not _has_filter(tags, states, site, app_name):
                raise NotFound(f"no task with id {', '.join(map(str, missing))}")
            if not wanted:
                raise NotFound("no task matched")
            infos: list[TaskInfo] = []
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=err, transient=False,
                          disable=not err.is_terminal) as bar:
                done = bar.add_task("final", total=len(wanted))
                try:
                    async for info in c.as_completed(wanted, timeout=timeout):
                        infos.append(info)
                        bar.advance(done)
                        if as_json:
                            click.echo(msgspec.json.encode(info).decode())
                except TimeoutError:
                    raise TimeoutError(
                        f"--timeout {format_duration(timeout or 0)} passed: {len(infos)} of "
                        f"{len(wanted)} tasks final") from None
            return infos

    infos = _run(go)
    bad = [i for i in infos if i.state != "JOB_FINISHED"]
    err.print(f"{len(infos) - len(bad)} finished, {len(bad)} did not"
              + (f" ({', '.join(f'{i.id} {i.state}' for i in bad[:20])}"
                 f"{', ...' if len(bad) > 20 else ''})" if bad else ""), highlight=False)
    sys.exit(Exit.FAILED if bad else Exit.OK)


@click.command()
@_filter_options
@click.option("--last", "last", type=DURATION, default=None,
              help="Only tasks created in the last LAST (1h, 2d, 30m...).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object: by_state, by_site (then by state), total.")
@click.pass_context
def summary(ctx: click.Context, tags: tuple[str, ...], states: tuple[str, ...],
            site: str | None, app_name: str | None, last: float | None, as_json: bool) -> None:
    """Count tasks by state and by site.

    Counts every task of yours matching the filter (all of them without
    one), as the controller has stored them: one table of states, then one
    row per site with its tasks per state.
    """
    since = None if last is None else time.time() - last

    async def go() -> TaskCounts:
        async with _client(ctx) as c:
            return await c.count(state=list(states), tags=_kv(tags, "--tag"), site=site,
                                 app=app_name, since=since)

    counts = _run(go)
    if as_json:
        click.echo(json.dumps({"by_state": counts.by_state, "by_site": counts.by_site,
                               "total": counts.total}))
        return
    order = [s.value for s in TaskState if s.value in counts.by_state]
    table = Table("state", "tasks")
    for s in order:
        table.add_row(Text(s, style=_STYLE.get(s, "")), str(counts.by_state[s]))
    table.add_row(Text("total", style="bold"), str(counts.total))
    out.print(table)
    if counts.by_site:
        per_site = Table("site", *order, "total")
        for name in sorted(counts.by_site):
            row = counts.by_site[name]
            per_site.add_row(name, *(str(row.get(s, 0)) for s in order),
                             str(sum(row.values())))
        out.print(per_site)


_STYLE = {"JOB_FINISHED": "green", "FAILED": "red", "KILLED": "yellow", "RUNNING": "cyan"}
