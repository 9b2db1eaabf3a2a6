"""Throughput of /bin/true command tasks over two pilot cores, beside the peers.

    .venv/bin/python bench/throughput.py [-n 10000] [--repeats 3] [--layout 2x1|1x2]
                                         [--no-peers] [--peer-repeats 1]

A controller process (SQLite store) and pilot processes: ``2x1`` (default)
is 2 pilots x 1 core, ``1x2`` is 1 pilot x 2 cores. Each run submits ``n``
``/bin/true`` tasks with ``client.submit_many`` and awaits them all with
``client.as_completed``. tasks/s = n / (last result on the client - first
submit). Also shown: how long ``submit_many`` took to have every task
stored (acknowledged), and the first result's arrival.

The same controller and pilots serve every run (warm); the store grows by
``n`` tasks per run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers as peer_mod  # noqa: E402
from common import Spread, cluster, collect, cpu_times, machine_line, table, warn_incomplete  # noqa: E402

from tidewater.proto import TaskSpec  # noqa: E402


@dataclass
class Run:
    n: int
    total: float  # first submit -> last result
    submitted: float  # first submit -> submit_many returned (all stored)
    first: float  # first submit -> first result
    failed: int
    lost: int  # results the first Wait never delivered (see README)

    @property
    def rate(self) -> float:
        return self.n / self.total


async def one_run(c, n: int) -> Run:  # type: ignore[no-untyped-def]
    specs = [TaskSpec(app="true", site=c.site) for _ in range(n)]
    first = [0.0]

    def seen(_info: object) -> None:
        if not first[0]:
            first[0] = time.perf_counter()

    t0 = time.perf_counter()
    tasks = await c.client.submit_many(specs)
    t1 = time.perf_counter()
    got = await collect(c.client, tasks, on_result=seen)
    failed = sum(1 for i in got.infos.values() if i.state != "JOB_FINISHED")
    return Run(n=n, total=got.last - t0, submitted=t1 - t0, first=first[0] - t0,
               failed=failed, lost=len(got.lost))


CpuUse = dict[str, list[float]]  # process -> [user, sys, tasks' user, tasks' sys]


async def measure(n: int, repeats: int, pilots: int, cores: int, warmup: int,
                  pilot_root: str | None) -> tuple[list[Run], CpuUse]:
    runs = []
    use: CpuUse = {}
    async with cluster(pilots=pilots, cores=cores, pilot_root=pilot_root) as c:
        pids = {"controller": c.server.pid, "client (this process)": os.getpid()}
        pids.update({f"pilot {k}": p.pid for k, p in enumerate(c.pilots)})
        if warmup:
            await one_run(c, warmup)
        for _ in range(repeats):
            before = {name: cpu_times(pid) for name, pid in pids.items()}
            runs.append(await one_run(c, n))
            for name, pid in pids.items():
                b, a = before[name], cpu_times(pid)
                if a is not None and b is not None:
                    acc = use.setdefault(name, [0.0] * 4)
                    for i in range(4):
                        acc[i] += a[i] - b[i]
    return runs, use


def cpu_table(runs: list[Run], use: CpuUse) -> str:
    """Where the CPU went, per 1,000 tasks, over all timed runs (Linux /proc)."""
    per = 1000.0 / sum(r.n for r in runs)
    wall = sum(r.total for r in runs) * per
    rows = []
    total = 0.0
    for name, (u, s, cu, cs) in use.items():
        rows.append([name, f"{u * per:.2f}", f"{s * per:.2f}",
                     f"{(cu + cs) * per:.2f}" if name.startswith("pilot") else ""])
        total += u + s + (cu + cs if name.startswith("pilot") else 0.0)
    rows.append(["all of the above", "", "", f"{total * per:.2f}"])
    return table(f"CPU seconds per 1,000 tasks (wall {wall:.2f} s per 1,000 tasks; "
                 f"{total * per / wall:.2f} of {os.cpu_count()} cores busy)",
                 ["process", "user", "system", "its tasks (user+sys)"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description="Tidewater throughput of /bin/true tasks.")
    ap.add_argument("-n", type=int, default=10_000, help="tasks per run")
    ap.add_argument("--repeats", "-r", type=int, default=3)
    ap.add_argument("--layout", choices=("2x1", "1x2"), default="2x1",
                    help="pilots x cores per pilot (2 cores in all)")
    ap.add_argument("--warmup", type=int, default=200, help="tasks run before timing")
    ap.add_argument("--pilot-root", default=None, metavar="DIR",
                    help="put the pilots' per-task work directories under DIR (e.g. /dev/shm; "
                         "default: the benchmark's temporary directory under $TMPDIR)")
    ap.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure ProcessPoolExecutor, Dask and Parsl (default on)")
    ap.add_argument("--peer-n", type=int, default=None,
                    help="tasks per peer run (default: -n)")
    ap.add_argument("--peer-repeats", type=int, default=1,
                    help="runs per peer and task kind (default 1, to stay under 3 minutes)")
    ap.add_argument("--peer-timeout", type=float, default=120.0,
                    help="seconds allowed per peer")
    a = ap.parse_args()
    pilots, cores = (2, 1) if a.layout == "2x1" else (1, 2)
    print(machine_line())
    t = time.monotonic()
    runs, use = anyio.run(measure, a.n, a.repeats, pilots, cores, a.warmup, a.pilot_root)
    print(f"(tidewater: {time.monotonic() - t:.1f}s including start-up)", file=sys.stderr)
    rows = [[i, f"{r.rate:.0f}", f"{r.total:.2f}", f"{r.submitted:.2f}",
             f"{1000 * r.first:.0f}", r.failed, r.lost] for i, r in enumerate(runs, 1)]
    where = a.pilot_root or tempfile.gettempdir()
    print(table(f"tidewater: {a.n} /bin/true tasks, {pilots} pilot(s) x {cores} core(s), "
                f"task dirs in {where}",
                ["run", "tasks/s", "total s", "all stored s", "first result ms", "failed",
                 "lost"],
                rows))
    print()
    print(table(f"tidewater across {len(runs)} runs: median [min-max]",
                ["figure", "value", "target"],
                [["/bin/true tasks/s, 2 cores", Spread.of([r.rate for r in runs]).fmt(0),
                  ">= 800"],
                 ["submit_many: all stored, s", Spread.of([r.submitted for r in runs]).fmt(2),
                  ""]]))
    if use:
        print()
        print(cpu_table(runs, use))
    warn_incomplete(sum(r.failed for r in runs), sum(r.lost for r in runs))
    if a.peers:
        print()
        pn = a.peer_n or a.n
        res = peer_mod.run_all("throughput", n=pn, repeats=a.peer_repeats,
                               timeout=a.peer_timeout)
        peer_mod.print_throughput(res, pn)
        print()
        summ = peer_mod.throughput_summary(res)
        names = list(peer_mod.PEERS)

        def cell(peer: str, kind: str) -> str:
            v = summ.get(peer, {}).get(kind)
            return f"{v:.0f}" if v else "-"

        tw = Spread.of([r.rate for r in runs]).median
        print(table("comparison (tasks/s, median over runs; '-' = peer not measured; "
                    "tidewater's function tasks: bench/functions.py)", ["figure", "tidewater", *names],
                    [["/bin/true tasks, 2 cores", f"{tw:.0f}", *(cell(p, "true") for p in names)],
                     ["no-op function tasks", "functions.py", *(cell(p, "noop") for p in names)]]))


if __name__ == "__main__":
    main()
