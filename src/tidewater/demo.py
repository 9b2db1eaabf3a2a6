"""``tidewater demo``: a real workflow on an embedded controller and a local site.

1. start a controller on a temporary SQLite store (loopback, random port);
2. create a user, a site ``local`` and three Python function apps, which run
   in the pilots' warm workers: ``frame`` (find the peaks in one detector
   frame, vectorised with numpy and :mod:`scipy.ndimage`), ``reduce`` (merge
   every frame's peaks into ``summary.json``) and ``noop``;
3. start the site's agent, in this process, on the local fork scheduler with
   its autoscaler on: the site is idle, no batch job, no pilot;
4. simulate the frames here (the instrument's side) and submit one ``frame``
   task per frame, the frame as a numpy argument: the agent hears the demand
   and submits a batch job whose ``--pilots`` pilots start and take the work.
   ``reduce``, submitted at once as the child of every frame task, starts when
   the last one is done and returns ``summary.json`` inline;
5. with the workers now warm, run ``--burst`` ``noop`` tasks one at a time:
   the round trip a user waits for, submit to result;
6. print every figure with what it means; check the results (every task
   finished, the peaks found are where they were simulated, the summary
   agrees with the frames' values, each no-op returned its argument); cancel
   the batch job. :func:`run_demo` returns False if any check failed.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import codec
from .agents.settings import (
    DEFAULT_TEMPLATE,
    AutoscaleSection,
    JobSection,
    SiteSection,
    SiteSettings,
    write_token,
)
from .agents.site import Agent
from .client import Client
from .config import ControllerConfig, Timeouts
from .controller import serve
from .controller.users import add_user
from .examples import frames as fr
from .proto import BatchJobInfo, TaskInfo, TaskSpec

console = Console(stderr=True)

FRAME_SIZE = 256
WARM_UP = 10
"""No-op calls before the burst's measured ones: each worker imports the function's module."""
DEADLINE = 300.0
"""The frames and the burst take seconds; after this long something is stuck: give up."""
MIN_RECALL = 0.9
"""Share of the simulated peaks that must be found (peaks that overlap merge into one)."""
MIN_PRECISION = 0.9
"""Share of the peaks found that must match a simulated one."""


@dataclass
class Report:
    """What the demo measured and found wrong; printed at the end."""

    frames: int
    pilots: int
    cores: int
    t0: float = 0.0  # frames submitted (wall clock)
    frame_infos: list[TaskInfo] = field(default_factory=list)
    reduce_info: TaskInfo | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    job: BatchJobInfo | None = None
    peaks_true: int = 0
    peaks_found: int = 0
    peaks_matched: int = 0
    burst: list[float] = field(default_factory=list)  # seconds, one per measured no-op
    burst_infos: list[TaskInfo] = field(default_factory=list)
    task_ids: list[int] = field(default_factory=list)  # every task submitted
    problems: list[str] = field(default_factory=list)

    @property
    def workers(self) -> str:
        return (f"{self.pilots} pilot{'s' if self.pilots > 1 else ''} x {self.cores} "
                f"core{'s' if self.cores > 1 else ''}")


def _pct(values: list[float], q: float) -> float:
    """The ``q`` quantile, nearest rank (the value at or below which ``q`` of them lie)."""
    values = sorted(values)
    return values[max(0, min(len(values) - 1, int(np.ceil(q * len(values))) - 1))]


async def run_demo(*, frames: int, pilots: int, cores: int, burst: int,
                   keep: Path | None) -> bool:
    """Run the demo, print its figures; False if a task failed or a result was wrong."""
    with tempfile.TemporaryDirectory(prefix="tidewater-demo-") as tmp:
        base = keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        db = str(base / "demo.db")
        token = await add_user(db, f"demo{int(time.time() * 1000)}")
        cfg = ControllerConfig(db=db, port=0, timeouts=Timeouts(heartbeat_interval=2,
                                                                lease_timeout=10))
        async with serve(cfg) as server, Client(server.url, token, name="demo") as client:
            console.print(f"controller on {server.url}, store {db}")
            _site, site_token = await client.add_site("local")
            await client.add_app("local", "frame", function="tidewater.examples.frames:analyze",
                                 description="find the peaks in one detector frame")
            await client.add_app("local", "reduce", function="tidewater.examples.frames:reduce",
                                 description="merge every frame's peaks into summary.json")
            await client.add_app("local", "noop", function="tidewater.examples.functions:noop")
            site_dir = base / "site"
            site_dir.mkdir(exist_ok=True)
            write_token(site_dir / "token", site_token)
            (site_dir / "job-template.sh").write_text(DEFAULT_TEMPLATE)
            settings = SiteSettings(
                site=SiteSection(name="local", controller=server.url, scheduler="local",
                                 python=sys.executable, work_root=str(base / "work"),
                                 poll_interval=2.0, cores_per_node=cores,
                                 pilot_idle_timeout=60.0, heartbeat_interval=2.0,
                                 wall_time_margin=5.0),
                scheduler={"state_dir": str(base / "jobs")},
                job=JobSection(wall_time_min=30),
                autoscale=AutoscaleSection(enabled=True, min_nodes_per_job=pilots,
                                           max_nodes_per_job=pilots, max_total_nodes=pilots),
                directory=str(site_dir),
            )
            agent = Agent(settings)
            report = Report(frames=frames, pilots=pilots, cores=cores)
            async with anyio.create_task_group() as tg:
                await tg.start(agent.run)
                console.print("site 'local' is idle: no batch job, no pilot; its agent "
                              "(local fork scheduler, autoscaler on) is connected")
                try:
                    with anyio.move_on_after(DEADLINE) as scope:
                        await _frames(client, report, base / "results")
                        await _burst(client, report, burst)
                    if scope.cancelled_caught:
                        report.problems.append(
                            f"not done after {DEADLINE:g} s: {len(report.frame_infos)} of "
                            f"{frames} frames and {len(report.burst_infos)} of "
                            f"{WARM_UP + burst} no-op tasks had finished")
                    report.job = next(iter(await client.queue(site="local",
                                                              include_finished=True)), None)
                finally:
                    released = time.perf_counter()
                    with anyio.move_on_after(20, shield=True) as scope:
                        await _release(client, report.task_ids)
                    if scope.cancelled_caught:
                        report.problems.append("the batch job had not ended 20 s after it was "
                                               "cancelled (its pilots exit after 60 s idle)")
                    else:
                        console.print(f"clean-up: batch job cancelled, its pilots gone, in "
                                      f"{time.perf_counter() - released:.1f} s")
                    tg.cancel_scope.cancel()
            _print(report)
            return not report.problems


async def _release(client: Client, task_ids: list[int]) -> None:
    """Cancel whatever of the demo's tasks is left (none, unless something went wrong), then
    its batch jobs, and wait until they are gone (their pilots with them)."""
    if task_ids:
        await client.cancel(task_ids)
    cancelled: set[int] = set()
    while jobs := await client.queue(site="local"):
        for job in jobs:  # one the autoscaler asked for while we cancelled is cancelled too
            if job.id not in cancelled:
                await client.queue_cancel(job.id)
                cancelled.add(job.id)
        await anyio.sleep(0.1)


async def _frames(client: Client, report: Report, out_dir: Path) -> None:
    """Simulate, submit and analyse the frames on the idle site, then reduce them."""
    n = report.frames
    started = time.perf_counter()
    simulated = [fr.simulate(i, FRAME_SIZE) for i in range(n)]
    mib = sum(f.nbytes for f, _ in simulated) / 2**20
    console.print(f"simulated {n} detector frames of {FRAME_SIZE}x{FRAME_SIZE} uint16 "
                  f"({mib:.1f} MiB) on this client, the instrument's side, in "
                  f"{time.perf_counter() - started:.2f} s")
    specs = [TaskSpec(app="frame", site="local", tags={"demo": "frames"},
                      args=codec.encode_call((frame, i, str(out_dir)), {}))
             for i, (frame, _) in enumerate(simulated)]
    values: dict[int, dict[str, Any]] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as bar:
        sub = bar.add_task("frames submitted", total=n)
        done = bar.add_task("frames analysed ", total=n)
        report.t0 = time.time()
        tasks = await client.submit_many(specs, progress=lambda k: bar.advance(sub, k))
        report.task_ids += [t.id for t in tasks]
        index = {t.id: i for i, t in enumerate(tasks)}
        # The reduction waits for every frame (AWAITING_PARENTS) and starts the moment
        # the last one finishes; its summary comes back inline as an output.
        reduce_task = await client.submit("reduce", site="local", parents=tasks,
                                          args=(str(out_dir), n), outputs=["summary.json"],
                                          tags={"demo": "reduce"})
        report.task_ids.append(reduce_task.id)
        async for info in client.as_completed(tasks):
            report.frame_infos.append(info)
            if info.state == "JOB_FINISHED" and info.result is not None:
                values[index[info.id]] = codec.decode(info.result)
            bar.advance(done)
    red = report.reduce_info = await reduce_task.result()
    if red.state == "JOB_FINISHED":
        report.summary = json.loads(await reduce_task.output("summary.json"))
        if red.result is None or codec.decode(red.result) != report.summary:
            report.problems.append("reduce returned something other than its summary.json")

    for info in [*report.frame_infos, red]:
        if info.state != "JOB_FINISHED":
            why = info.error or (info.stderr_tail.strip().splitlines() or [""])[-1]
            report.problems.append(f"{info.app} task {info.id} {info.state}: {why}")
    for i, (_frame, truth) in enumerate(simulated):
        report.peaks_true += len(truth)
        if i in values:
            found = np.asarray(values[i]["centroids"], dtype=np.float64)
            report.peaks_found += len(found)
            report.peaks_matched += fr.match(found, truth)
    recall = report.peaks_matched / max(1, report.peaks_true)
    precision = report.peaks_matched / max(1, report.peaks_found)
    if recall < MIN_RECALL or precision < MIN_PRECISION:
        report.problems.append(f"peaks: recall {recall:.3f}, precision {precision:.3f} "
                               f"(at least {MIN_RECALL} and {MIN_PRECISION} expected)")
    if report.summary and (report.summary.get("frames") != n
                           or report.summary.get("peaks") != report.peaks_found):
        report.problems.append(f"summary.json says {report.summary.get('frames')} frames and "
                               f"{report.summary.get('peaks')} peaks; the frames' values say "
                               f"{len(values)} and {report.peaks_found}")


async def _burst(client: Client, report: Report, burst: int) -> None:
    """No-op tasks one at a time, on warm workers: submit() -> result, as a user waits."""
    for i in range(WARM_UP + burst):
        t = time.perf_counter()
        task = await client.submit("noop", site="local", args=(i,), tags={"demo": "burst"})
        report.task_ids.append(task.id)
        info = await task.result()
        took = time.perf_counter() - t
        value = codec.decode(info.result) if info.result is not None else None
        if info.state != "JOB_FINISHED" or value != i:
            report.problems.append(f"no-op task {info.id}: {info.state}, returned {value!r} "
                                   f"for {i} {info.error}".strip())
        report.burst_infos.append(info)
        if i >= WARM_UP:
            report.burst.append(took)


def _print(r: Report) -> None:
    def table(title: str, caption: str) -> Table:
        t = Table(title=f"[bold]{title}[/bold]", caption=caption, title_justify="left",
                  caption_justify="left", show_header=False, expand=True)
        t.add_column("figure", ratio=1)
        t.add_column("value", justify="right", no_wrap=True)
        return t

    ok = [i for i in r.frame_infos if i.state == "JOB_FINISHED" and i.started_at
          and i.finished_at]
    starts = sorted(i.started_at for i in ok if i.started_at)

    idle = table("1. idle site -> work running (s after the client began submitting the frames)",
                 "The site had no batch job and no pilot; its agent asked for one when the "
                 "frames waited.")
    j = r.job
    if j is not None:
        for label, at in (
            (f"agent's autoscaler asked for batch job {j.id} ({j.nodes} "
             f"node{'s' if j.nodes != 1 else ''}, one pilot on each)",
             j.created_at),
            ("the local scheduler's submit command returned", j.submitted_at),
            ("the job's first pilot process started", j.first_pilot_process_at),
            ("that pilot connected to the controller", j.first_pilot_at),
        ):
            if at:
                idle.add_row(label, f"{at - r.t0:.2f}")
    if starts:
        idle.add_row("the first frame started in a worker", f"{starts[0] - r.t0:.2f}")
    console.print(idle)

    # A pilot starts a warm worker for each of its cores on first use: its first frames
    # pay for a new interpreter and the imports of numpy and scipy, the rest do not.
    # (With several cores a worker may finish its first frame before another is needed:
    # then a warm call is counted as a first one.)
    first: list[TaskInfo] = []
    warm: list[TaskInfo] = []
    seen: Counter[str] = Counter()
    for i in sorted(ok, key=lambda i: i.started_at or 0.0):
        seen[i.pilot] += 1
        (first if seen[i.pilot] <= r.cores else warm).append(i)
    warm_ms = [1000 * ((i.finished_at or 0.0) - (i.started_at or 0.0)) for i in warm]
    wait_s = [i.started_at - i.created_at for i in ok if i.started_at]
    frames = table(f"2. {r.frames} frames: a function app in warm workers ({r.workers})",
                   "Every frame was submitted at once, before any pilot existed: its wait "
                   "is the site's start-up plus its place in the queue.")
    if ok:
        if warm_ms:
            frames.add_row("one frame's analysis in a warm worker, started -> finished, "
                           "median / p99 (ms)",
                           f"{statistics.median(warm_ms):.1f} / {_pct(warm_ms, .99):.1f}")
        frames.add_row("a worker's first frame: it starts the worker, which imports numpy "
                       "and scipy (ms)",
                       ", ".join(f"{1000 * ((i.finished_at or 0.0) - (i.started_at or 0.0)):.0f}"
                                 for i in first))
        last = max(i.finished_at or 0.0 for i in ok)
        frames.add_row("all frames: first started -> last finished (s)",
                       f"{last - starts[0]:.2f}")
        all_warm = max(i.finished_at or 0.0 for i in first)
        after = [i for i in warm if (i.finished_at or 0.0) > all_warm]
        if len(after) >= 10 and last > all_warm:  # fewer make no rate
            frames.add_row(f"frames analysed per second once every worker was warm "
                           f"({len(after)} frames)", f"{len(after) / (last - all_warm):.0f}")
        frames.add_row(f"submit -> start, median / max (s): queueing behind the other "
                       f"frames for {r.workers}, plus the start-up above",
                       f"{statistics.median(wait_s):.2f} / {max(wait_s):.2f}")
    frames.add_row("peaks simulated / found / found within 2 px of a simulated one",
                   f"{r.peaks_true} / {r.peaks_found} / {r.peaks_matched}")
    red = r.reduce_info
    if red is not None:
        frames.add_row("reduce, the child of every frame", red.state)
        if red.started_at and red.finished_at and ok:
            last = max(i.finished_at for i in ok if i.finished_at)
            frames.add_row("reduce: last frame finished -> reduce started / its run (ms)",
                           f"{1000 * (red.started_at - last):.1f} / "
                           f"{1000 * (red.finished_at - red.started_at):.1f}")
    console.print(frames)
    if r.summary:
        console.print(f"summary.json, reduce's output, returned inline: "
                      f"{json.dumps(r.summary, separators=(', ', ': '))}", highlight=False)

    if r.burst:
        rt = table("3. warm round trip: submit() -> result on this client, one task at a time, "
                   "workers already running",
                   f"{len(r.burst)} no-op function tasks, each submitted when the previous "
                   f"result arrived (after {WARM_UP} unmeasured), over a websocket, stored "
                   "in SQLite, run in a pilot's warm worker.")
        ms = [1000 * s for s in r.burst]
        rt.add_row("round trip p50 / p99 / max (ms)",
                   f"{_pct(ms, .5):.1f} / {_pct(ms, .99):.1f} / {max(ms):.1f}")
        rt.add_row("tasks per second, one at a time", f"{len(ms) / (sum(ms) / 1000):.0f}")
        console.print(rt)

    states = Counter(i.state for i in [*r.frame_infos,
                                       *([r.reduce_info] if r.reduce_info else []),
                                       *r.burst_infos])
    console.print("tasks by final state: " + (", ".join(
        f"{s} {k}" for s, k in sorted(states.items())) or "none"), highlight=False)
    for p in r.problems[:10]:
        console.print(f"[red]wrong:[/red] {p}", highlight=False)
    if len(r.problems) > 10:
        console.print(f"[red]wrong:[/red] and {len(r.problems) - 10} more", highlight=False)
