"""``tidewater top``: your tasks, sites, pilots and batch jobs, live in the terminal.

The numbers an admin scrapes from ``/metrics``, for one user's own work:
task counts by state (in all and per site), each site's health with its
reason and when it was last heard from, its pilots' busy and free cores,
its batch jobs by state, and the tasks that ended in the last minute.

How it stays live without hammering the controller: a full refresh every
``--interval`` seconds (``Client.count``: one grouped read of the store,
``Client.sites`` and ``Client.queue``: memory), and between refreshes the
controller's push -- one ``watch`` per site -- moves each task's count from
its old state to its new one as the transition is committed. A refresh
replaces the counts; events the refresh already counted are not applied
again (see :meth:`Board.refresh`). Throughput comes from the same events,
seeded at start from the newest ended tasks (at most :data:`SEED_LIMIT`).

:class:`Board` is the pure part (no I/O, the clock an argument); the
command drives it and draws it with rich's ``Live``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio
import click
from anyio.abc import TaskGroup, TaskStatus
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from . import proto as P
from .cli_base import DURATION, _client, _run, out
from .client import Client
from .client_watch import Watcher
from .durations import format_ago
from .states import TaskState

WINDOW = 60.0
"""Seconds of "the last minute" in the throughput figures."""
SEED_LIMIT = 2000
"""Ended tasks read at start to seed the last minute (the newest ones)."""
FRAME_GAP = 0.25
"""Least time between two redraws: at most four a second however fast events come."""
STATE_ORDER = [s.value for s in TaskState if s != TaskState.CREATED]
ENDED = ("JOB_FINISHED", "FAILED", "KILLED")
JOB_ORDER = ["pending_submission", "queued", "running", "pending_deletion", "submit_failed",
             "finished"]


@dataclass
class Board:
    """What top shows, kept up to date from refreshes and pushed events. Pure."""

    by_site: dict[str, Counter[str]] = field(default_factory=dict)
    """Site -> state -> tasks."""
    sites: dict[str, P.SiteInfo] = field(default_factory=dict)
    jobs: dict[str, Counter[str]] = field(default_factory=dict)
    """Site -> batch-job state -> jobs not yet ended."""
    ended: dict[str, dict[int, tuple[float, str]]] = field(default_factory=dict)
    """Site -> task id -> (when, final state), for tasks that ended within the window."""
    mark: int = 0
    """Events up to this id are in the counts of the last refresh."""
    refreshed_at: float = 0.0
    events: int = 0
    """Events applied since the start."""
    seed_full: bool = False
    """The seed read :data:`SEED_LIMIT` tasks: the first minute may be undercounted."""

    def refresh(self, counts: P.TaskCounts, sites: list[P.SiteInfo],
                jobs: list[P.BatchJobInfo], mark: int, now: float) -> None:
        """Take a full refresh; ``mark`` is the newest event the client had received when
        the counts arrived (events are pushed in commit order on the same connection, so
        those up to it were committed before the counts were read and are in them)."""
        self.by_site = {site: Counter(states) for site, states in counts.by_site.items()}
        self.sites = {s.name: s for s in sites}
        self.jobs = {}
        for j in jobs:
            self.jobs.setdefault(j.site, Counter())[j.state] += 1
        self.mark = max(self.mark, mark)
        self.refreshed_at = now

    def seed(self, tasks: list[P.TaskInfo]) -> None:
        """The newest ended tasks (``Client.tasks(state=ENDED, newest=True)``), for the window."""
        self.seed_full = len(tasks) >= SEED_LIMIT
        for t in tasks:
            if t.finished_at is not None and t.state in ENDED:
                self.ended.setdefault(t.site, {})[t.id] = (t.finished_at, t.state)

    def apply(self, site: str, e: P.TaskEvent) -> None:
        """A committed transition of one of ``site``'s tasks."""
        if e.to_state in ENDED:
            self.ended.setdefault(site, {})[e.task_id] = (e.time, e.to_state)
        if e.id <= self.mark:
            return  # the last refresh counted it
        self.events += 1
        counts = self.by_site.setdefault(site, Counter())
        if e.from_state != TaskState.CREATED.value and counts[e.from_state] > 0:
            counts[e.from_state] -= 1
        counts[e.to_state] += 1

    def snapshot(self, now: float) -> dict[str, Any]:
        """Everything shown, as plain data (what ``--json`` prints)."""
        since = now - WINDOW
        by_state: Counter[str] = Counter()
        for counts in self.by_site.values():
            by_state.update(counts)
        window: dict[str, Counter[str]] = {}
        for site, ended in self.ended.items():
            for task_id in [i for i, (t, _) in ended.items() if t < since]:
                del ended[task_id]
            window[site] = Counter(state for _, state in ended.values())
        total_window: Counter[str] = Counter()
        for c in window.values():
            total_window.update(c)
        sites = []
        for name in sorted(set(self.sites) | set(self.by_site)):
            info = self.sites.get(name)
            connected = [p for p in (info.pilot_list if info else []) if p.connected]
            busy = sum(p.running for p in connected)
            free = sum(max(0, p.cores - p.running) for p in connected if not p.draining)
            sites.append({
                "name": name,
                "health": info.health if info else "",
                "reason": info.health_reason if info else "",
                "agent": bool(info and info.agent),
                "agent_seen": info.agent_seen if info else 0.0,
                "pilot_seen": info.pilot_seen if info else 0.0,
                "pilots": info.pilots if info else 0,
                "pilots_held": len(info.pilot_list) if info else 0,
                "cores": info.cores if info else 0,
                "busy": busy,
                "free": free,
                "jobs": _ordered(self.jobs.get(name, Counter()), JOB_ORDER),
                "tasks": _ordered(self.by_site.get(name, Counter()), STATE_ORDER),
                "tasks_total": sum(self.by_site.get(name, Counter()).values()),
                "ended_last_minute": _ordered(window.get(name, Counter()), list(ENDED)),
            })
        return {
            "time": now,
            "refreshed_at": self.refreshed_at,
            "tasks": {"total": sum(by_state.values()),
                      "by_state": _ordered(by_state, STATE_ORDER)},
            "last_minute": {"window_seconds": WINDOW,
                            "ended": _ordered(total_window, list(ENDED)),
                            "finished_per_second": total_window["JOB_FINISHED"] / WINDOW,
                            "at_least": self.seed_full},
            "sites": sites,
            "events": self.events,
        }


def _ordered(counts: Counter[str], order: list[str]) -> dict[str, int]:
    """The non-zero counts, known names in ``order`` first, others after by name."""
    known = [k for k in order if counts.get(k)]
    rest = sorted(k for k, v in counts.items() if v and k not in order)
    return {k: counts[k] for k in known + rest}


# ---------------------------------------------------------------------- drawing


HEALTH_STYLE = {"up": "green", "degraded": "yellow", "down": "red"}


def render(snap: dict[str, Any], url: str, interval: float | None) -> RenderableType:
    """The screen: a header, tasks per site by state, and the sites' health and capacity."""
    now = snap["time"]
    tasks = snap["tasks"]
    head = Text()
    head.append("tidewater top", style="bold")
    head.append(f"  {url}  ")
    refreshed = format_ago(snap["refreshed_at"], now)
    head.append(f"refreshed {refreshed}" + (f" (every {interval:g}s, live events between)"
                                           if interval else ""), style="dim")
    summary = Text(f"Tasks: {tasks['total']} total")
    for state, n in tasks["by_state"].items():
        summary.append(" · ")
        summary.append(f"{state} {n}", style=_state_style(state))
    lm = snap["last_minute"]
    ended = lm["ended"]
    minute = Text("Last minute: " + ("at least " if lm["at_least"] else ""))
    minute.append(f"{ended.get('JOB_FINISHED', 0)} finished "
                  f"({lm['finished_per_second']:.2f}/s)")
    minute.append(f", {ended.get('FAILED', 0)} failed, {ended.get('KILLED', 0)} killed")

    shown = [s for s in STATE_ORDER if s in tasks["by_state"]]
    counts = Table(title="Tasks by site", title_justify="left", expand=False)
    counts.add_column("site")
    counts.add_column("total", justify="right")
    for state in shown:
        counts.add_column(state, justify="right", style=_state_style(state))
    for s in snap["sites"]:
        counts.add_row(s["name"], str(s["tasks_total"]),
                       *[str(s["tasks"].get(state, "")) for state in shown])

    sites = Table(title="Sites", title_justify="left", expand=False)
    for col, justify in (("site", "left"), ("health", "left"), ("last heard", "left"),
                         ("pilots", "right"), ("busy", "right"), ("free", "right"),
                         ("batch jobs", "left"), ("done/min", "right"),
                         ("failed/min", "right"), ("why", "left")):
        sites.add_column(col, justify=justify)  # type: ignore[arg-type]
    for s in snap["sites"]:
        heard = max(s["agent_seen"], s["pilot_seen"])
        pilots = str(s["pilots"]) + (f" (+{s['pilots_held'] - s['pilots']} away)"
                                     if s["pilots_held"] > s["pilots"] else "")
        jobs = ", ".join(f"{k} {v}" for k, v in s["jobs"].items()) or "-"
        sites.add_row(
            s["name"], Text(s["health"] or "?", style=HEALTH_STYLE.get(s["health"], "")),
            format_ago(heard, now), pilots, str(s["busy"]), str(s["free"]), jobs,
            str(s["ended_last_minute"].get("JOB_FINISHED", 0)),
            str(s["ended_last_minute"].get("FAILED", 0)), s["reason"])
    return Group(head, summary, minute, Text(""), counts, Text(""), sites)


def _state_style(state: str) -> str:
    return {"JOB_FINISHED": "green", "FAILED": "red", "KILLED": "magenta",
            "RUNNING": "cyan"}.get(state, "")


# ---------------------------------------------------------------------- driving


class Top:
    """One client's board, its refreshes and its per-site watches."""

    def __init__(self, client: Client) -> None:
        self.c = client
        self.board = Board()
        self.watchers: dict[str, Watcher] = {}
        self.changed = anyio.Event()

    async def refresh(self, tg: TaskGroup | None) -> None:
        """Sites, batch jobs and counts; with ``tg``, a watch for each site not yet watched.

        Watches start before the counts are asked for, so no transition falls
        between the two.
        """
        sites = await self.c.sites()
        if tg is not None:
            for s in sites:
                if s.name not in self.watchers:
                    await tg.start(self._follow, s.name)
        jobs = await self.c.queue(limit=10_000)
        counts = await self.c.count()
        mark = max((w.last_event for w in self.watchers.values()), default=0)
        self.board.refresh(counts, sites, jobs, mark, time.time())

    async def seed(self) -> None:
        self.board.seed(await self.c.tasks(state=list(ENDED), newest=True, limit=SEED_LIMIT))

    async def _follow(self, site: str, *,
                      task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with self.c.watch(site=site) as w:
            self.watchers[site] = w
            task_status.started()
            async for e in w:
                self.board.apply(site, e)
                self.changed.set()


async def _live(client: Client, url: str, interval: float) -> None:
    top = Top(client)
    async with anyio.create_task_group() as tg:
        await top.refresh(tg)
        await top.seed()
        with Live(render(top.board.snapshot(time.time()), url, interval), console=out,
                  auto_refresh=False, screen=False) as live:
            while True:
                deadline = time.monotonic() + interval
                while (left := deadline - time.monotonic()) > 0:
                    # Redraw on events (at most every FRAME_GAP) and every second (ages).
                    with anyio.move_on_after(min(1.0, left)):
                        await top.changed.wait()
                    top.changed = anyio.Event()
                    live.update(render(top.board.snapshot(time.time()), url, interval),
                                refresh=True)
                    await anyio.sleep(FRAME_GAP)
                await top.refresh(tg)


@click.command("top", short_help="Your tasks, sites and pilots, live.")
@click.option("--interval", type=DURATION, default="5s", show_default=True,
              help="Time between full refreshes (at least 0.5s); pushed events update the "
                   "counts between.")
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts).")
@click.option("--json", "as_json", is_flag=True, help="With --once: the frame as JSON.")
@click.pass_context
def top(ctx: click.Context, interval: float, once: bool, as_json: bool) -> None:
    """Your tasks, sites, pilots and batch jobs, live: counts by state in all and per
    site, each site's health and why, when it was last heard from, its pilots' busy
    and free cores, its batch jobs by state, and the tasks ended in the last minute.

    Ctrl-C to leave.
    """
    if as_json and not once:
        raise click.UsageError("--json needs --once (one frame, then exit)")
    if interval < 0.5:
        raise click.BadParameter("at least 0.5s", param_hint="--interval")
    url = ctx.obj["url"]

    async def one() -> dict[str, Any]:
        async with _client(ctx) as c:
            t = Top(c)
            await t.refresh(None)
            await t.seed()
            return t.board.snapshot(time.time())

    if once:
        snap = _run(one)
        if as_json:
            click.echo(json.dumps(snap, indent=2))
        else:
            out.print(render(snap, url, None))
        return

    async def live() -> None:
        # Unlike one-shot commands, it reconnects (and its watches resume) if the link breaks.
        o = ctx.obj
        async with Client(o["url"], o["token"], name="top", ca_file=o["ca_file"] or None) as c:
            await _live(c, url, interval)

    _run(live, until_interrupted=True)
