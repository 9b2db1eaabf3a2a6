"""``tidewater report latency|throughput|utilization``: latency accounting reports.

The tasks' phases come from the controller (``Client.phases``); the tables
and series are built here with :mod:`tidewater.latency`, and plots are drawn
with :mod:`tidewater.plots` (matplotlib, the ``plots`` extra) only when asked.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

import click
from rich.table import Table

from . import latency
from .cli_base import DURATION, _client, _kv, _run, out
from .latency import LatencyRow, Series


def _secs(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if v < 10 else f"{v:.1f}"


def _filters(tags: tuple[str, ...], site: str | None, app_name: str | None,
             limit: int, last: float | None) -> dict[str, Any]:
    return {"tags": _kv(tags, "tag"), "site": site, "app": app_name, "limit": limit,
            "since": None if last is None else time.time() - last}


def _phases(ctx: click.Context, filters: dict[str, Any]) -> list[Any]:
    async def go() -> list[Any]:
        async with _client(ctx) as c:
            return await c.phases(**filters)

    return _run(go)


_FILTER_OPTIONS = [
    click.option("--tag", "tags", multiple=True, help="key=value (repeatable, all must match)."),
    click.option("--site", default=None, help="Only this site's tasks."),
    click.option("--app", "app_name", default=None, help="Only this app's tasks."),
    click.option("--limit", type=int, default=100_000, show_default=True,
                 help="Read at most LIMIT tasks (the oldest matching)."),
    click.option("--last", type=DURATION, default=None, metavar="DURATION",
                 help="Only tasks created in the last DURATION (90s, 30m, 2h...)."),
    click.option("--json", "as_json", is_flag=True, help="JSON, for scripts."),
]


def _with_filters(fn: Any) -> Any:
    for opt in reversed(_FILTER_OPTIONS):
        fn = opt(fn)
    return fn


@click.group(short_help='Latency, throughput and utilisation.')
def report() -> None:
    """Latency, throughput and utilisation of tasks (from their state changes)."""


def latency_table(rows: list[LatencyRow], by_tag: str | None, *,
                  finished_only: bool = True) -> Table:
    which = "finished tasks" if finished_only else "all tasks"
    table = Table("route", "tasks", "stage in (s)", "run delay (s)", "run (s)",
                  "stage out (s)", "total (s)", title=f"median seconds per phase ({which})")
    for r in rows:
        table.add_row(latency.route_label(r, by_tag), str(r.tasks), _secs(r.stage_in),
                      _secs(r.run_delay), _secs(r.run), _secs(r.stage_out), _secs(r.total))
    return table


@report.command("latency", short_help='Median seconds of each phase per route.')
@_with_filters
@click.option("--by-tag", default=None, metavar="KEY",
              help="A route per value of this tag as well as per site (e.g. instrument).")
@click.option("--all", "include_all", is_flag=True,
              help="Count failed, killed and live tasks too (default: finished tasks only).")
@click.pass_context
def latency_cmd(ctx: click.Context, tags: tuple[str, ...], site: str | None,
                app_name: str | None, limit: int, last: float | None, as_json: bool,
                by_tag: str | None, include_all: bool) -> None:
    """Median seconds per route of stage in, run delay, run, stage out and total.

    A route is a site, or with --by-tag KEY a (KEY's value, site) pair.
    """
    rows = latency.latency_table(_phases(ctx, _filters(tags, site, app_name, limit, last)),
                                 by_tag=by_tag, finished_only=not include_all)
    if as_json:
        click.echo(json.dumps([asdict(r) for r in rows]))
    else:
        out.print(latency_table(rows, by_tag, finished_only=not include_all))


def _series_out(series: dict[str, Series], *, as_json: bool, plot: str | None, title: str,
                ylabel: str, step: bool) -> None:
    if plot:
        from .plots import plot_series

        path = plot_series(series, plot, title=title, ylabel=ylabel, step=step)
        click.echo(f"wrote {path}", err=True)
    if as_json:
        click.echo(json.dumps({site: [list(p) for p in pts] for site, pts in series.items()}))
        return
    table = Table("site", "time", ylabel, title=title)
    for site, points in series.items():
        for t, v in points:
            table.add_row(site, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)),
                          f"{v:.3g}")
    out.print(table)


_PLOT = click.option("--plot", default=None, metavar="FILE",
                     help="Also draw FILE (.png or .svg; needs the plots extra: matplotlib).")
_BIN = click.option("--bin", "bin_seconds", type=DURATION, default=60.0,
                    show_default=True, help="Bin width (seconds, or 30s, 5m...).")


@report.command("throughput", short_help='Tasks finished over time, per site.')
@_with_filters
@_BIN
@_PLOT
@click.option("--per-bin", is_flag=True, help="Tasks finished in each bin, not cumulative.")
@click.pass_context
def throughput_cmd(ctx: click.Context, tags: tuple[str, ...], site: str | None,
                   app_name: str | None, limit: int, last: float | None, as_json: bool,
                   bin_seconds: float, plot: str | None, per_bin: bool) -> None:
    """Tasks finished over time, per site (cumulative unless --per-bin)."""
    series = latency.throughput(_phases(ctx, _filters(tags, site, app_name, limit, last)),
                                bin_seconds=bin_seconds, cumulative=not per_bin)
    _series_out(series, as_json=as_json, plot=plot, title="throughput",
                ylabel="tasks finished" + (" per bin" if per_bin else ""), step=True)


@report.command("utilization", short_help='Busy cores over time, per site.')
@_with_filters
@_BIN
@_PLOT
@click.option("--unit", type=click.Choice(["cores", "tasks"]), default="cores",
              show_default=True, help="Count the cores running tasks hold, or the tasks.")
@click.pass_context
def utilization_cmd(ctx: click.Context, tags: tuple[str, ...], site: str | None,
                     app_name: str | None, limit: int, last: float | None, as_json: bool,
                     bin_seconds: float, plot: str | None, unit: str) -> None:
    """Busy cores (or running tasks) over time per site, averaged over each bin."""
    series = latency.utilization(_phases(ctx, _filters(tags, site, app_name, limit, last)),
                                 now=time.time(), bin_seconds=bin_seconds, unit=unit)
    _series_out(series, as_json=as_json, plot=plot, title="utilization",
                ylabel=f"busy {unit}", step=False)
