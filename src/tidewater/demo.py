"""``tidewater demo``: a real workflow on an embedded controller and local pilots.

1. start a controller on a temporary SQLite store (loopback, random port);
2. create a user, a site ``local`` and two apps (``frame``: analyse one
   synthetic detector frame with numpy; ``reduce``: merge all results);
3. start ``--pilots`` pilot processes on this machine;
4. submit one ``frame`` task per frame, show progress as results are pushed
   back, then run ``reduce`` over their outputs;
5. print per-state counts, throughput and latencies; fail if anything failed.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
from anyio.abc import Process
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

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
                f"{py} -m tidewater.examples.frames reduce --dir {{dir}} --expect {{n}}",
                params=[ParamSpec(name="dir"), ParamSpec(name="n", type="int")],
            )
            procs: list[Process] = []
            env = {**os.environ, "TIDEWATER_TOKEN": site_token, "TIDEWATER_URL": server.url}
            try:
                for k in range(pilots):
                    procs.append(await anyio.open_process(
                        [py, "-m", "tidewater.cli", "pilot", "--cores", str(cores),
                         "--workdir", str(base / f"pilot{k}"), "--heartbeat", "2"],
                        env=env, stdin=None, stdout=None,
                        stderr=open(base / f"pilot{k}.log", "wb"),  # noqa: ASYNC230, SIM115
                    ))
                ok = await _workflow(client, frames, out_dir, pilots * cores)
            finally:
                for p in procs:
                    p.terminate()
                with anyio.move_on_after(10, shield=True):
                    for p in procs:
                        await p.wait()
            return ok


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
        async for info in client.as_completed(tasks):
            infos.append(info)
            bar.advance(done)
    t1 = time.time()
    r0 = time.time()
    reduce_task = await client.submit("reduce", site="local",
                                      params={"dir": str(out_dir), "n": frames})
    red = await reduce_task.result()
    reduce_rtt = time.time() - r0
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
    table.add_row("reduce", red.state)
    if red.started_at and red.finished_at:
        table.add_row("reduce: submit -> result / of which running (ms)",
                      f"{1000 * reduce_rtt:.1f} / {1000 * (red.finished_at - red.started_at):.1f}")
    console.print(table)
    if red.stdout_tail:
        console.print(f"summary: {red.stdout_tail.strip()}", highlight=False)
    failed = [i for i in infos if i.state != "JOB_FINISHED"]
    for i in failed[:5]:
        console.print(f"[red]task {i.id} {i.state}[/red]: {i.error} {i.stderr_tail[-300:]}")
    return not failed
