"""Latency of one task at a time on a warm pilot, beside the peers.

    .venv/bin/python bench/latency.py [--repeats 5] [-k 200] [--no-peers]

A controller process (SQLite store), one pilot process with one core, app
``true`` = ``/bin/true``. For each of ``repeats`` runs, ``k`` tasks are
submitted ONE at a time, each awaited before the next:

* round trip  -- ``client.submit()`` then ``task.result()``, on the client's
  clock: the trivial-command round trip;
* to start    -- ``TaskInfo.started_at - TaskInfo.created_at``: controller
  accepts the Submit -> pilot has started the process (same machine, so
  the controller's and the pilot's wall clocks agree);
* breakdown (p50): submit acknowledged (commit), process run time on the
  pilot (``finished_at - started_at``), and delivery (pilot saw the exit ->
  result on the client).

Tidewater's Python function tasks are measured by ``bench/functions.py``
(and ``bench/compare.py``); this script measures command tasks
(``/bin/true``). The peers are shown for both a no-op function and a
``/bin/true`` function.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers as peer_mod  # noqa: E402
from common import Spread, cluster, collect, machine_line, median, ms, p99, table, warn_incomplete  # noqa: E402


@dataclass
class Run:
    rtt: list[float] = field(default_factory=list)
    start: list[float] = field(default_factory=list)
    ack: list[float] = field(default_factory=list)
    proc: list[float] = field(default_factory=list)
    deliver: list[float] = field(default_factory=list)
    failed: int = 0
    lost: int = 0


async def one_task(c, run: Run | None) -> None:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    task = await c.client.submit("true", site=c.site)
    t1 = time.perf_counter()
    got = await collect(c.client, [task], stall=5.0)
    t2 = got.last
    w2 = time.time() - (time.perf_counter() - t2)
    info = got.infos[task.id]
    if run is None:
        return
    if got.lost:
        run.lost += 1  # its round trip is meaningless: left out
        return
    if info.state != "JOB_FINISHED" or info.started_at is None or info.finished_at is None:
        run.failed += 1
        return
    run.rtt.append(t2 - t0)
    run.ack.append(t1 - t0)
    run.start.append(info.started_at - info.created_at)
    run.proc.append(info.finished_at - info.started_at)
    run.deliver.append(w2 - info.finished_at)


async def measure(repeats: int, k: int, warmup: int, pilot_root: str | None) -> list[Run]:
    runs: list[Run] = []
    async with cluster(pilots=1, cores=1, pilot_root=pilot_root) as c:
        for _ in range(warmup):
            await one_task(c, None)
        for _ in range(repeats):
            run = Run()
            for _ in range(k):
                await one_task(c, run)
            runs.append(run)
    return runs


def report(runs: list[Run], k: int) -> None:
    rows = []
    for i, r in enumerate(runs, 1):
        rtt, st = ms(r.rtt), ms(r.start)
        rows.append([i, f"{median(rtt):.2f}", f"{p99(rtt):.2f}", f"{median(st):.2f}",
                     f"{p99(st):.2f}", f"{median(ms(r.ack)):.2f}", f"{median(ms(r.proc)):.2f}",
                     f"{median(ms(r.deliver)):.2f}", r.failed, r.lost])
    print(table(
        f"tidewater: one /bin/true task at a time, 1 pilot x 1 core, {k} tasks per run (ms)",
        ["run", "rtt p50", "rtt p99", "start p50", "start p99", "ack p50", "proc p50",
         "deliver p50", "failed", "lost"], rows))
    print()

    def sp(vals: list[float]) -> str:
        return Spread.of(vals).fmt(2)

    rtt50 = [median(ms(r.rtt)) for r in runs]
    rtt99 = [p99(ms(r.rtt)) for r in runs]
    st50 = [median(ms(r.start)) for r in runs]
    st99 = [p99(ms(r.start)) for r in runs]
    all_rtt = ms(x for r in runs for x in r.rtt)
    all_st = ms(x for r in runs for x in r.start)
    print(table(
        f"tidewater across {len(runs)} runs: median [min-max] of the per-run figure; "
        "pooled = all tasks together (ms)",
        ["figure", "p50", "p99", "pooled p50", "pooled p99", "target"],
        [["(a) round trip, /bin/true", sp(rtt50), sp(rtt99), f"{median(all_rtt):.2f}",
          f"{p99(all_rtt):.2f}", "p50 <= 5"],
         ["(b) submit -> process started", sp(st50), sp(st99), f"{median(all_st):.2f}",
          f"{p99(all_st):.2f}", "<= 3 / <= 15"],
         ["(c) no-op command round trip = (a)", sp(rtt50), sp(rtt99), "", "", ""]]))
    warn_incomplete(sum(r.failed for r in runs), sum(r.lost for r in runs))


def main() -> None:
    ap = argparse.ArgumentParser(description="Tidewater latency, one task at a time.")
    ap.add_argument("--repeats", "-r", type=int, default=5)
    ap.add_argument("-k", type=int, default=200, help="tasks per run")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--pilot-root", default=None, metavar="DIR",
                    help="put the pilots' per-task work directories under DIR (e.g. /dev/shm; "
                         "default: the benchmark's temporary directory under $TMPDIR)")
    ap.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure ProcessPoolExecutor, Dask and Parsl (default on)")
    ap.add_argument("--peer-timeout", type=float, default=90.0,
                    help="seconds allowed per peer")
    a = ap.parse_args()
    print(machine_line())
    t = time.monotonic()
    runs = anyio.run(measure, a.repeats, a.k, a.warmup, a.pilot_root)
    print(f"(tidewater: {time.monotonic() - t:.1f}s including start-up)", file=sys.stderr)
    report(runs, a.k)
    if a.peers:
        print()
        res = peer_mod.run_all("latency", k=a.k, repeats=a.repeats, timeout=a.peer_timeout)
        peer_mod.print_latency(res, a.k)
        print()
        compare(runs, peer_mod.latency_summary(res))


def compare(runs: list[Run], peers: dict[str, dict[str, tuple[float, float]]]) -> None:
    """Tidewater beside the peers: medians over runs of the per-run p50 and p99 (ms)."""
    names = list(peer_mod.PEERS)
    tw50 = median([median(ms(r.rtt)) for r in runs])
    tw99 = median([p99(ms(r.rtt)) for r in runs])

    def cell(peer: str, kind: str, i: int) -> str:
        v = peers.get(peer, {}).get(kind)
        return f"{v[i]:.2f}" if v else "-"

    rows = [
        ["round trip, /bin/true task, p50", f"{tw50:.2f}", *(cell(p, "true", 0) for p in names)],
        ["round trip, /bin/true task, p99", f"{tw99:.2f}", *(cell(p, "true", 1) for p in names)],
        ["round trip, no-op function, p50", "functions.py", *(cell(p, "noop", 0) for p in names)],
        ["round trip, no-op function, p99", "functions.py", *(cell(p, "noop", 1) for p in names)],
    ]
    print(table("comparison (ms; median over runs; '-' = peer not measured; tidewater's "
                "function tasks: bench/functions.py)", ["figure", "tidewater", *names], rows))


if __name__ == "__main__":
    main()
