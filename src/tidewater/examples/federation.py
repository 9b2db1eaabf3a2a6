"""``tidewater example federation``: the federation experiment at laptop scale.

Balsam's paper sends a stream of XPCS analyses from light sources to several
HPC sites and compares routing policies. Here, on one machine:

* an embedded controller (SQLite, loopback), one user;
* three sites, each with its own :class:`~tidewater.agents.site.Agent` (run in
  this process, as ``tidewater demo`` does), local fork scheduler state
  directory, work root and autoscaler. They differ as HPC sites do: cores per
  pilot, the local scheduler's ``start_delay`` (a batch queue's wait) and, on
  ``slow``, an analysis that takes twice as long (:func:`analyse_half_speed`);
* two instruments (``aps`` and ``als``), each a client session of its own with
  a data directory of simulated HDF5 speckle stacks, served over SFTP by a real
  ``sshd`` (:mod:`tidewater.examples.sshd`);
* for each routing policy in turn, from idle sites (no batch job, no pilot),
  the same paced stream of tasks to ``site="any"``: each stages its stack in
  over SFTP, computes g2 with ``xpcs-correlator`` in a warm worker, checks the
  fitted correlation time against the simulated one
  (:func:`tidewater.examples.xpcs.analyse`) and stages ``g2.h5`` back out.

:func:`run` returns what was measured and what was found wrong: a task that
did not finish, a fit off its tolerance, a result file that did not arrive, a
route that breaks its policy's rule (:func:`route_problems`). Which policy was
fastest is printed, never asserted: on two shared cores it is a measurement,
not an invariant.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.table import Table

from .. import codec, latency
from ..agents.settings import (
    DEFAULT_TEMPLATE,
    AutoscaleSection,
    JobSection,
    SiteSection,
    SiteSettings,
    TransfersSection,
    write_token,
)
from ..agents.site import Agent
from ..client import Client
from ..config import ControllerConfig, Timeouts
from ..controller import serve
from ..controller.users import add_user
from ..latency import LatencyRow, Series
from ..proto import Route, TaskInfo
from . import xpcs

POLICIES = ("earliest-start", "shortest-backlog", "round-robin")
INSTRUMENTS = ("aps", "als")
DEADLINE = 600.0
"""One policy's stream takes about a minute at the default sizes; past this, give up."""
TOLERANCE = 0.2
RING_TOLERANCE = 0.45
"""The fit's tolerances for these small stacks (relative error of the averaged fit and of
each ring's). :mod:`~tidewater.examples.xpcs`'s 10 % and 25 % are calibrated on 500
frames of 128x128; 200 frames of 64x64 hold a tenth of the pixel pairs, so the noise of
the fit is about three times larger: over 48 such stacks the averaged fit was off by 7.5 %
at worst, the worst ring by 36 %. The mistakes the check is for (lags in frames read as
seconds, the field's decay fitted for the intensity's) are off by a factor of two."""
RELEASE = 60.0
"""Seconds to wait for a policy's batch jobs to be gone before the next policy starts."""


@dataclass(frozen=True)
class SiteSpec:
    """One site of the experiment: how fast it is and how long its queue makes a job wait."""

    name: str
    cores: int
    """Cores per pilot (one pilot per batch job, at most one job at a time)."""
    start_delay: float
    """The local scheduler's start delay: seconds a batch job waits PENDING."""
    function: str = "tidewater.examples.xpcs:analyse"


SITES = (
    SiteSpec("fast", cores=2, start_delay=0.0),
    SiteSpec("medium", cores=1, start_delay=3.0),
    SiteSpec("slow", cores=1, start_delay=6.0,
             function="tidewater.examples.federation:analyse_half_speed"),
)


def analyse_half_speed(**kwargs: Any) -> dict[str, Any]:
    """:func:`~tidewater.examples.xpcs.analyse`, then idle as long again: a site whose
    cores are half as fast (the idle time holds the worker, not this machine's CPU)."""
    result = xpcs.analyse(**kwargs)
    time.sleep(float(result["seconds"]))
    return result


@dataclass(frozen=True)
class Item:
    """One task of the stream: which instrument sends which stack, when."""

    index: int
    instrument: str
    stack: Path
    at: float
    """Seconds after the stream's start."""


@dataclass
class PolicyRun:
    """One policy's run of the stream."""

    policy: str
    infos: list[TaskInfo] = field(default_factory=list)
    values: dict[int, dict[str, Any]] = field(default_factory=dict)
    latency: list[LatencyRow] = field(default_factory=list)
    throughput: dict[str, Series] = field(default_factory=dict)
    utilization: dict[str, Series] = field(default_factory=dict)
    started: float = 0.0
    ended: float = 0.0
    """When the last task reached its final state (after its stage out)."""
    totals: list[float] = field(default_factory=list)
    """Each finished task's total seconds, created to JOB_FINISHED."""
    problems: list[str] = field(default_factory=list)

    @property
    def makespan(self) -> float:
        """Seconds from the first submit to the last task's end (its g2.h5 staged out)."""
        return max(0.0, self.ended - self.started)

    @property
    def per_site(self) -> Counter[str]:
        return Counter(i.site for i in self.infos if i.state == "JOB_FINISHED")


@dataclass
class Result:
    runs: list[PolicyRun]
    sites: tuple[SiteSpec, ...]
    tasks: int
    frames: int
    size: int

    @property
    def problems(self) -> list[str]:
        return [f"{r.policy}: {p}" for r in self.runs for p in r.problems]


# ------------------------------------------------------------------ the routing rules (pure)


def _finish(e: Any) -> float:
    return float("inf") if e.finish is None else float(e.finish)


def route_problems(policy: str, routes: list[tuple[int, Route]]) -> list[str]:
    """Where the first routes of one owner's tasks (``(task id, route)``) break ``policy``.

    * ``earliest-start``: the chosen site's estimated finish is the soonest of
      the candidates that are not down;
    * ``shortest-backlog``: its backlog per connected core (at least one) is the
      least of theirs;
    * ``round-robin``: in task id order, each choice is the candidate after the
      previous one in name order (the per-owner cursor advancing by one).
    """
    problems = []
    prev: str | None = None
    for task_id, r in sorted(routes, key=lambda x: x[0]):
        if r.policy != policy:
            problems.append(f"task {task_id} was routed by {r.policy}, not {policy}")
            continue
        ups = [e for e in r.candidates if e.health != "down"] or list(r.candidates)
        names = sorted(e.site for e in ups)
        chosen = next((e for e in ups if e.site == r.chosen), None)
        if chosen is None:
            problems.append(f"task {task_id} went to {r.chosen}, not a candidate: {names}")
            continue
        if policy == "earliest-start":
            best = min(_finish(e) for e in ups)
            if _finish(chosen) > best:
                problems.append(f"task {task_id} went to {r.chosen} (est. finish "
                                f"{_finish(chosen):.3g} s) though another finished at {best:.3g} s")
        elif policy == "shortest-backlog":
            def load(e: Any) -> float:
                return float(e.backlog) / max(int(e.cores), 1)

            best = min(load(e) for e in ups)
            if load(chosen) > best:
                problems.append(f"task {task_id} went to {r.chosen} ({load(chosen):.3g} tasks "
                                f"per core) though another had {best:.3g}")
        elif policy == "round-robin":
            if prev is not None and prev in names:
                want = names[(names.index(prev) + 1) % len(names)]
                if r.chosen != want:
                    problems.append(f"task {task_id} went to {r.chosen} after {prev}; "
                                    f"round-robin over {names} gives {want}")
            prev = r.chosen
    return problems


# ------------------------------------------------------------------------------ the driver


def make_stream(data: dict[str, Path], *, tasks: int, frames: int, size: int,
                interval: float) -> list[Item]:
    """Simulate one stack per task in its instrument's data directory (the instruments take
    turns, a task every ``interval`` seconds), each with its own seed and correlation time."""
    items = []
    for i in range(tasks):
        inst = INSTRUMENTS[i % len(INSTRUMENTS)]
        tau = (0.03, 0.04, 0.05, 0.06)[i % 4]  # 3 to 6 frames: many independent pairs
        path = xpcs.simulate(data[inst] / f"stack-{i:03d}.h5", frames=frames, size=size,
                             tau=tau, dt=0.01, seed=1000 + i)
        items.append(Item(i, inst, path, i * interval))
    return items


def _site_settings(spec: SiteSpec, base: Path, url: str, sftp: dict[str, str]) -> SiteSettings:
    site_dir = base / "sites" / spec.name
    return SiteSettings(
        site=SiteSection(name=spec.name, controller=url, scheduler="local",
                         python=sys.executable, work_root=str(site_dir / "work"),
                         poll_interval=1.0, cores_per_node=spec.cores, pilot_idle_timeout=120.0,
                         pilot_prefetch=0, heartbeat_interval=2.0, wall_time_margin=5.0,
                         pilot_drain_timeout=2.0),
        scheduler={"state_dir": str(site_dir / "jobs"), "start_delay": spec.start_delay,
                   "kill_grace": 5.0},
        job=JobSection(wall_time_min=30),
        autoscale=AutoscaleSection(enabled=True, min_nodes_per_job=1, max_nodes_per_job=1,
                                   max_total_nodes=1, retry_after=2.0),
        transfers=TransfersSection(**sftp),  # type: ignore[arg-type]
        directory=str(site_dir),
    )


def _write_site(site_dir: Path, token: str) -> None:
    site_dir.mkdir(parents=True, exist_ok=True)
    write_token(site_dir / "token", token)
    (site_dir / "job-template.sh").write_text(DEFAULT_TEMPLATE)


async def run(*, base: Path, sftp_url: Any, sftp: dict[str, str], tasks: int = 24,
              frames: int = 200, size: int = 64, interval: float = 0.5,
              policies: tuple[str, ...] = POLICIES, sites: tuple[SiteSpec, ...] = SITES,
              plots: Path | None = None, console: Console | None = None) -> Result:
    """Run the stream once per policy and print each one's tables; see the module docstring.

    ``sftp_url(path)`` is the sftp:// URL of an absolute path behind the sshd, ``sftp`` the
    sites' ``[transfers]`` settings to reach it (``sftp_identity``, ``sftp_known_hosts``).
    ``base`` holds the store, the sites and the instruments' data. Returns what was
    measured; its ``problems`` say what went wrong (empty when every task finished with
    its fit in tolerance, its g2.h5 back, and every route following its policy).
    Raises ConfigError (matplotlib missing) only if ``plots`` is given.
    """
    con = console or Console(width=None if sys.stdout.isatty() else 160)
    data = {inst: base / "beamlines" / inst for inst in INSTRUMENTS}
    for d in data.values():
        d.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    stream = make_stream(data, tasks=tasks, frames=frames, size=size, interval=interval)
    con.print(f"simulated {tasks} stacks of {frames}x{size}x{size} speckle frames in "
              f"{time.perf_counter() - t:.1f} s: {', '.join(f'{d}' for d in data.values())}, "
              f"served over SFTP at {sftp_url(str(base))}", highlight=False)
    db = str(base / "federation.db")
    token = await add_user(db, "beamlines")
    cfg = ControllerConfig(db=db, port=0, timeouts=Timeouts(heartbeat_interval=2,
                                                            lease_timeout=10))
    result = Result(runs=[], sites=sites, tasks=tasks, frames=frames, size=size)
    async with serve(cfg) as server, Client(server.url, token, name="aps") as aps, \
            Client(server.url, token, name="als") as als:
        clients = {"aps": aps, "als": als}
        agents = []
        for spec in sites:
            _s, site_token = await aps.add_site(spec.name)
            await aps.add_app(spec.name, "xpcs", function=spec.function,
                              description="g2 of an HDF5 stack by xpcs-correlator")
            settings = _site_settings(spec, base, server.url, sftp)
            await anyio.to_thread.run_sync(_write_site, Path(settings.directory), site_token)
            agents.append(Agent(settings))
        con.print("sites: " + "; ".join(
            f"{s.name}: {s.cores}-core pilot, queue wait {s.start_delay:g} s"
            + (", analysis at half speed" if s.function != SITES[0].function else "")
            for s in sites), highlight=False)
        async with anyio.create_task_group() as tg:
            for agent in agents:
                await tg.start(agent.run)
            try:
                for policy in policies:
                    pr = PolicyRun(policy)
                    result.runs.append(pr)
                    with anyio.move_on_after(DEADLINE) as scope:
                        await _one_policy(pr, clients, stream, sftp_url, base, tasks)
                    if scope.cancelled_caught:
                        pr.problems.append(f"not done after {DEADLINE:g} s: {len(pr.infos)} "
                                           f"of {tasks} tasks had ended")
                    await _release(aps, [s.name for s in sites], pr)
                    _print_policy(con, pr)
                    if plots is not None:
                        await anyio.to_thread.run_sync(_plots, pr, plots)
            finally:
                tg.cancel_scope.cancel()
    _print_summary(con, result)
    if plots is not None:
        con.print(f"plots in {plots}", highlight=False)
    return result


async def _one_policy(pr: PolicyRun, clients: dict[str, Client], stream: list[Item],
                      sftp_url: Any, base: Path, tasks: int) -> None:
    tags = {"policy": pr.policy}
    out_dir = {inst: base / "beamlines" / inst / "results" / pr.policy for inst in INSTRUMENTS}
    submitted: dict[str, list[tuple[int, Item]]] = {inst: [] for inst in INSTRUMENTS}
    all_sent = {inst: anyio.Event() for inst in INSTRUMENTS}
    pr.started = time.time()
    t0 = anyio.current_time()

    async def instrument(inst: str) -> None:
        client = clients[inst]
        for item in (i for i in stream if i.instrument == inst):
            # The pacing is the experiment's (a steady stream), not a synchronisation.
            await anyio.sleep(max(0.0, t0 + item.at - anyio.current_time()))
            task = await client.submit(
                "xpcs", site="any", policy=pr.policy, max_retries=0,
                kwargs={"stack": "stack.h5", "out": "g2.h5", "tolerance": TOLERANCE,
                        "ring_tolerance": RING_TOLERANCE},
                inputs={"stack.h5": sftp_url(str(item.stack))},
                outputs={"g2.h5": sftp_url(str(out_dir[inst] / f"{item.stack.stem}.h5"))},
                tags={**tags, "instrument": inst, "item": str(item.index)})
            submitted[inst].append((task.id, item))
        all_sent[inst].set()

    async def collect(inst: str) -> None:
        client = clients[inst]
        await all_sent[inst].wait()  # results are read once the stream is sent
        ids = [tid for tid, _ in submitted[inst]]
        items = dict(submitted[inst])
        async for info in client.as_completed(ids):
            pr.infos.append(info)
            item = items[info.id]
            if info.state != "JOB_FINISHED":
                why = info.error or (info.stderr_tail.strip().splitlines() or [""])[-1]
                pr.problems.append(f"task {info.id} ({inst} {item.stack.name}) on "
                                   f"{info.site}: {info.state} {why}")
                continue
            value = codec.decode(info.result) if info.result is not None else None
            if not isinstance(value, dict) or value.get("rel_error", 1.0) > TOLERANCE:
                pr.problems.append(f"task {info.id}: fit {value!r} off the simulated tau")
                continue
            pr.values[info.id] = value
            back = out_dir[inst] / f"{item.stack.stem}.h5"
            if not back.exists():
                pr.problems.append(f"task {info.id}: {back} did not arrive")

    async with anyio.create_task_group() as tg:
        for inst in INSTRUMENTS:
            tg.start_soon(instrument, inst)
            tg.start_soon(collect, inst)
    if len(pr.infos) != tasks:
        pr.problems.append(f"{len(pr.infos)} of {tasks} tasks ended")
    routes = [(i.id, i.routes[0]) for i in pr.infos if i.routes]
    if len(routes) != len(pr.infos):
        pr.problems.append(f"{len(pr.infos) - len(routes)} tasks have no route recorded")
    pr.problems += route_problems(pr.policy, routes)
    client = clients["aps"]  # one user: either session sees both instruments' tasks
    phases = await client.phases(tags=tags)
    pr.ended = max((p.created_at + p.total for p in phases if p.total is not None),
                   default=pr.started)
    pr.totals = [p.total for p in phases if p.state == "JOB_FINISHED" and p.total is not None]
    pr.latency = await client.latency_report(by_tag="instrument", tags=tags)
    bin_s = max(1.0, pr.makespan / 30)
    pr.throughput = await client.throughput_report(bin_seconds=bin_s, tags=tags)
    pr.utilization = await client.utilization_report(bin_seconds=bin_s, tags=tags)


async def _release(client: Client, sites: list[str], pr: PolicyRun) -> None:
    """Cancel the sites' batch jobs and wait until they are gone: the next policy starts
    from idle sites, as this one did."""
    cancelled: set[int] = set()
    with anyio.move_on_after(RELEASE, shield=True) as scope:
        while jobs := [j for s in sites for j in await client.queue(site=s)]:
            for job in jobs:
                if job.id not in cancelled:
                    await client.queue_cancel(job.id)
                    cancelled.add(job.id)
            await anyio.sleep(0.2)  # polling the queue under the deadline above
    if scope.cancelled_caught:
        pr.problems.append(f"batch jobs still there {RELEASE:g} s after they were cancelled")


# ------------------------------------------------------------------------------- printing


def _secs(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _print_policy(con: Console, pr: PolicyRun) -> None:
    table = Table("route", "tasks", "stage in", "run delay", "run", "stage out", "total",
                  title=f"[bold]{pr.policy}[/bold]: median seconds per phase, per route",
                  title_justify="left")
    for r in sorted(pr.latency, key=lambda r: (r.tag or "", r.site)):
        table.add_row(latency.route_label(r, "instrument"), str(r.tasks), _secs(r.stage_in),
                      _secs(r.run_delay), _secs(r.run), _secs(r.stage_out), _secs(r.total))
    con.print(table)
    rate = ", ".join(f"{s} {n} ({60 * n / pr.makespan:.0f}/min)" if pr.makespan else f"{s} {n}"
                     for s, n in sorted(pr.per_site.items()))
    con.print(f"{pr.policy}: {len(pr.values)} of {len(pr.infos)} tasks finished with their fit "
              f"in tolerance in {pr.makespan:.1f} s; per site: {rate}", highlight=False)
    for p in pr.problems[:10]:
        con.print(f"[red]wrong:[/red] {p}", highlight=False)


def _print_summary(con: Console, r: Result) -> None:
    names = [s.name for s in r.sites]
    table = Table("policy", "makespan (s)", "tasks/min", *(f"{n} tasks (/min)" for n in names),
                  "median total (s)", "wrong",
                  title=f"[bold]{r.tasks} XPCS tasks ({r.frames}x{r.size}x{r.size} frames) "
                        "from two instruments, per routing policy[/bold]",
                  title_justify="left")
    for pr in r.runs:
        span = pr.makespan or float("nan")
        totals = pr.totals
        table.add_row(pr.policy, f"{pr.makespan:.1f}", f"{60 * len(pr.values) / span:.1f}",
                      *(f"{pr.per_site[n]} ({60 * pr.per_site[n] / span:.1f})" for n in names),
                      f"{statistics.median(totals):.2f}" if totals else "-",
                      str(len(pr.problems)))
    con.print(table)
    if len(r.runs) > 1 and all(pr.makespan for pr in r.runs):
        best = min(r.runs, key=lambda pr: pr.makespan)
        con.print("fastest here: " + best.policy + "; " + ", ".join(
            f"{pr.policy} {100 * (pr.makespan / best.makespan - 1):+.1f} %"
            for pr in r.runs if pr is not best)
            + " (makespan; one run on a shared laptop-scale machine, not a benchmark)",
            highlight=False)


def _plots(pr: PolicyRun, directory: Path) -> None:
    from ..plots import plot_series

    directory.mkdir(parents=True, exist_ok=True)

    plot_series(pr.throughput, directory / f"throughput-{pr.policy}.png",
                title=f"tasks finished per site ({pr.policy})", ylabel="tasks finished",
                step=True)
    plot_series(pr.utilization, directory / f"utilization-{pr.policy}.png",
                title=f"busy cores per site ({pr.policy})", ylabel="busy cores")
