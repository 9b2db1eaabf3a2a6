"""``tidewater demo``: a real workflow on an embedded controller and a local site.

1. start a controller on a temporary SQLite store (loopback, random port);
2. create a user, a site ``local`` and two apps (``frame``: analyse one
   synthetic detector frame with numpy; ``reduce``: merge all results);
3. start the site's agent, in this process, on the local fork scheduler with
   its autoscaler on: the site is idle, no pilot runs;
4. submit one ``frame`` task per frame: the agent hears the demand and
   submits a batch job, whose ``--pilots`` pilots start and take the work;
   progress shows as results are pushed back; ``reduce``, submitted at once
   as the child of every frame task, starts when the last one is done and
   returns ``summary.json`` inline;
5. print per-state counts, the idle site's reaction, throughput and
   latencies; cancel the batch job; fail if anything failed.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

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
from .proto import ParamSpec, TaskInfo, TaskSpec

console = Console(stderr=True)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def run_demo(*, frames: int, pilots: int, cores: int, keep: Path | None) -> bool:
    with tempfile.TemporaryDirectory(prefix="tidewater-demo-") as tmp:
        base = keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        db = str(base / "demo.db")
        out_dir = base / "results"
        token = await add_user(db, f"demo{int(time.time() * 1000)}")
        cfg = ControllerConfig(db=db, port=0, timeouts=Timeouts(heartbeat_interval=2,
                                                                lease_timeout=10))
        async with serve(cfg) as server, Client(server.url, token, name="demo") as client:
            console.print(f"controller on {server.url}, store {db}")
            _site, site_token = await client.add_site("local")
            py = sys.executable
            await client.add_app(
                "local", "frame",
                f"{py} -m tidewater.examples.frames analyze --seed {{seed}} --size {{size}} "
                f"--out-dir {{out}}",
                params=[ParamSpec(name="seed", type="int"),
                        ParamSpec(name="size", type="int", required=False, default=256),
                        ParamSpec(name="out")],
                description="find peaks in one synthetic detector frame",
            )
            await client.add_app(
                "local", "reduce",
                f"{py} -m tidewater.examples.frames reduce --dir {{dir}} --expect {{n}} "
                "--summary summary.json",
                params=[ParamSpec(name="dir"), ParamSpec(name="n", type="int")],
            )
            site_dir = base / "site"
            site_dir.mkdir(exist_ok=True)
            write_token(site_dir / "token", site_token)
            (site_dir / "job-template.sh").write_text(DEFAULT_TEMPLATE)
            settings = SiteSettings(
                site=SiteSection(name="local", controller=server.url, scheduler="local",
                                 python=py, work_root=str(base / "work"), poll_interval=2.0,
                                 cores_per_node=cores, pilot_idle_timeout=60.0,
                                 heartbeat_interval=2.0, wall_time_margin=5.0),
                scheduler={"state_dir": str(base / "jobs")},
                job=JobSection(wall_time_min=30),
                autoscale=AutoscaleSection(enabled=True, min_nodes_per_job=pilots,
                                           max_nodes_per_job=pilots, max_total_nodes=pilots),
                directory=str(site_dir),
            )
            agent = Agent(settings)
            async with anyio.create_task_group() as tg:
                await tg.start(agent.run)
                console.print("site 'local' is idle: no batch job, no pilot; its agent "
                              "(local scheduler, autoscaler on) is connected")
                try:
                    ok = await _workflow(client, frames, out_dir, pilots * cores)
                finally:
                    with anyio.move_on_after(20, shield=True):
                        await _release(client)
                    tg.cancel_scope.cancel()
            return ok


async def _release(client: Client) -> None:
    """Cancel the demo's batch jobs and wait until they are gone (their pilots with them)."""
    for job in await client.queue(site="local"):
        await client.queue_cancel(job.id)
    while True:
        if not await client.queue(site="local"):
            return
        await anyio.sleep(0.1)


async def _workflow(client: Client, frames: int, out_dir: Path, cores_total: int) -> bool:
    specs = [TaskSpec(app="frame", site="local", params={"seed": i, "out": str(out_dir)},
                      tags={"demo": "frames"}) for i in range(frames)]
    t0 = time.time()
    infos: list[TaskInfo] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as bar:
        sub = bar.add_task("submitted", total=frames)
        done = bar.add_task("analysed ", total=frames)
        tasks = await client.submit_many(specs, progress=lambda n: bar.advance(sub, n))
        # The reduction waits for every frame (AWAITING_PARENTS) and starts the moment
        # the last one finishes; its summary comes back inline as an output.
        reduce_task = await client.submit("reduce", site="local", parents=tasks,
                                          params={"dir": str(out_dir), "n": frames},
                                          outputs=["summary.json"])
        async for info in client.as_completed(tasks):
            infos.append(info)
            bar.advance(done)
    t1 = time.time()
    red = await reduce_task.result()
    summary = (await reduce_task.output("summary.json")).decode() \
        if red.state == "JOB_FINISHED" else ""
    infos.append(red)

    counts: dict[str, int] = {}
    for i in infos:
        counts[i.state] = counts.get(i.state, 0) + 1
    ok_frames = [i for i in infos[:-1] if i.state == "JOB_FINISHED"]
    queue_wait = [i.started_at - i.created_at for i in ok_frames if i.started_at]
    run_time = [i.finished_at - i.started_at for i in ok_frames
                if i.started_at and i.finished_at]

    table = Table(title="tidewater demo", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for state, n in sorted(counts.items()):
        table.add_row(f"tasks {state}", str(n))
    jobs = await client.queue(site="local", include_finished=True)
    submitted = jobs[0].submitted_at if jobs else None
    first_pilot = jobs[0].first_pilot_at if jobs else None
    if submitted is not None and first_pilot is not None:
        table.add_row(f"idle site -> batch job {jobs[0].id} submitted by the agent (ms)",
                      f"{1000 * (submitted - t0):.0f}")
        table.add_row("idle site -> its pilots connected (s)", f"{first_pilot - t0:.2f}")
    table.add_row("frames analysed per second", f"{frames / (t1 - t0):.1f}")
    table.add_row("submit -> start incl. queueing, median / p95 (ms)",
                  f"{1000 * statistics.median(queue_wait):.1f} / {1000 * _pct(queue_wait, .95):.1f}"
                  if queue_wait else "-")
    table.add_row("run time per frame, median (ms)",
                  f"{1000 * statistics.median(run_time):.1f}" if run_time else "-")
    if run_time:
        busy = sum(run_time)
        overhead = ((t1 - t0) * cores_total - busy) / len(run_time)
        table.add_row("pilot time per frame not spent running it (ms)",
                      f"{1000 * max(0.0, overhead):.1f}")
    table.add_row("reduce (child of all frames)", red.state)
    last_frame = max((i.finished_at for i in ok_frames if i.finished_at), default=None)
    if red.started_at and red.finished_at and last_frame:
        table.add_row("reduce: last frame done -> reduce started / running (ms)",
                      f"{1000 * (red.started_at - last_frame):.1f} / "
                      f"{1000 * (red.finished_at - red.started_at):.1f}")
    console.print(table)
    if summary:
        console.print(f"summary.json (an inline output): {' '.join(summary.split())}",
                      highlight=False)
    failed = [i for i in infos if i.state != "JOB_FINISHED"]
    for i in failed[:5]:
        console.print(f"[red]task {i.id} {i.state}[/red]: {i.error} {i.stderr_tail[-300:]}")
    return not failed
