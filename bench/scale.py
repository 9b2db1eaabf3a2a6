"""A store of a million tasks: controller memory, listings and submit latency at scale.

    .venv/bin/python bench/scale.py [-n 1000000] [--quick] [--db postgresql://...]

One controller process (``python -m tidewater server``, a SQLite file in a
temporary directory unless ``--db`` names an empty PostgreSQL database), a
user, two sites with the app ``true`` = ``/bin/true``: ``fill``, which has no
pilot, and ``bench``, which has one pilot process with one core. The store
is filled through the public client only (``submit_many`` in batches of
50,000, ``push_results=False``) with tasks on ``fill``, tagged ``run`` =
``i % 100``; they stay queued, as a million tasks waiting for an allocation
would. Figures are taken at each of these points:

1. ``1k queued``: 1,000 tasks submitted;
2. ``N queued``: N submitted (the same controller, as real submits leave it);
3. ``N queued, restarted``: the controller stopped (SIGTERM) and started again
   on the same store, so it holds the N tasks as recovery loads them; the
   pilot reconnects by itself;
4. ``N final, restarted``: every filled task cancelled through the client
   (``cancel`` in batches: KILLED, final, the store keeps them), then the
   controller restarted: a store of N final tasks, none of them in memory.

At each point:

* controller memory: resident set (VmRSS) and its peak (VmHWM) from /proc,
  and what the tasks add per task over the first point's figure;
* listings: ``client.tasks(..., limit=50)`` round trips, by state, tag,
  site and app (and everything, and a state almost no task is in), oldest
  and newest first, each asked ``--listing-repeats`` times: p50 [min-max]
  and p99, in ms;
* submit: ``--probes`` tasks on ``bench`` submitted one at a time, each
  awaited before the next, in 3 runs: ``submit()`` acknowledged (stored)
  and submit -> process started (``started_at - created_at``), median
  [min-max] of the per-run p50, in ms. The filled tasks are on another
  site, so the probes never wait behind them; the store and the
  controller's tables are the same size either way.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    PY,
    Spread,
    _spawn,
    collect,
    free_port,
    log_tail,
    machine_line,
    median,
    ms,
    p99,
    stop_processes,
    table,
    wait_listening,
    wait_pilots,
)

from tidewater.client import Client, TaskSpec  # noqa: E402
from tidewater.controller.users import add_user  # noqa: E402

FILL, PROBE = "fill", "bench"
BATCH = 50_000
SMALL = 1_000


def memory(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    got = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                got[key] = int(value.split()[0]) / 1024
    return got["VmRSS"], got["VmHWM"]


@dataclass
class Controller:
    """The controller process, restartable on the same port and store."""

    db: str
    base: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.base / f"server{self.starts}.log"

    async def start(self, timeout: float) -> None:
        self.starts += 1
        self.proc = _spawn([PY, "-m", "tidewater", "server", "--db", self.db, "--port",
                            str(self.port)], self.log)
        await wait_listening(self.proc, self.port, time.monotonic() + timeout, self.log)

    def stop(self) -> None:
        if self.proc is not None:
            stop_processes([self.proc], grace=60.0)  # a large store may take a while to close


@dataclass
class Point:
    name: str
    rss: float
    hwm: float
    tasks: int
    listings: dict[str, list[float]] = field(default_factory=dict)
    ack: list[list[float]] = field(default_factory=list)
    start: list[list[float]] = field(default_factory=list)
    failed: int = 0


def listings(queued_state: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("everything", {}),
        ("state of the filled tasks", {"state": queued_state}),
        ("state RUNNING (few tasks)", {"state": "RUNNING"}),
        ("tag run=42", {"tags": {"run": "42"}}),
        (f"site {FILL}", {"site": FILL}),
        ("app true", {"app": "true"}),
    ]


async def measure(c: Controller, client: Client, name: str, tasks: int, state: str,
                  repeats: int, probes: int) -> Point:
    assert c.proc is not None
    rss, hwm = memory(c.proc.pid)
    point = Point(name, rss, hwm, tasks)
    for label, kw in listings(state):
        for newest in (False, True):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                await client.tasks(limit=50, newest=newest, **kw)
                times.append(time.perf_counter() - t0)
            point.listings[f"{label}, {'newest' if newest else 'oldest'}"] = ms(times)
    for _run in range(3):
        ack: list[float] = []
        start: list[float] = []
        for _ in range(max(1, probes // 3)):
            t0 = time.perf_counter()
            task = await client.submit("true", site=PROBE, tags={"probe": "1"})
            ack.append(time.perf_counter() - t0)
            info = (await collect(client, [task], stall=10.0)).infos[task.id]
            if info.state != "JOB_FINISHED" or info.started_at is None:
                point.failed += 1
                continue
            start.append(info.started_at - info.created_at)
        point.ack.append(ms(ack))
        point.start.append(ms(start))
    return point


async def fill(client: Client, have: int, upto: int, ids: list[int]) -> None:
    t0 = time.monotonic()
    while have < upto:
        n = min(BATCH, upto - have)
        specs = [TaskSpec(app="true", site=FILL, tags={"run": str(i % 100)})
                 for i in range(have, have + n)]
        got = await client.submit_many(specs, push_results=False)
        ids.extend(t.id for t in got)
        have += n
        rate = have / max(time.monotonic() - t0, 1e-9)
        print(f"  {have:,} submitted ({rate:,.0f}/s)", file=sys.stderr, flush=True)


async def run(n: int, db: str | None, repeats: int, probes: int, timeout: float) -> list[Point]:
    base = Path(tempfile.mkdtemp(prefix="tidewater-scale-"))
    c = Controller(db=db or str(base / "scale.db"), base=base)
    pilot: subprocess.Popen[bytes] | None = None
    points: list[Point] = []
    ok = False
    try:
        await c.start(timeout)
        token = await add_user(c.db, f"scale{os.getpid()}")
        async with Client(c.url, token, name="scale") as client:
            for site in (FILL, PROBE):
                _s, site_token = await client.add_site(site)
                await client.add_app(site, "true", "/bin/true")
            env = {**os.environ, "TIDEWATER_URL": c.url, "TIDEWATER_TOKEN": site_token}
            plog = base / "pilot.log"
            pilot = _spawn([PY, "-m", "tidewater", "pilot", "--cores", "1", "--workdir",
                            str(base / "pilot")], plog, env)
            await wait_pilots(client, PROBE, 1, timeout, [pilot], [plog])
            for _ in range(20):  # warm-up: the pilot's first tasks are slower
                await collect(client, [await client.submit("true", site=PROBE)], stall=10.0)
            ids: list[int] = []
            await fill(client, 0, min(SMALL, n), ids)
            (first,) = await client.tasks(ids=ids[:1])
            queued = first.state
            points.append(await measure(c, client, f"{SMALL:,} queued", len(ids), queued,
                                        repeats, probes))
            print(f"  measured at {len(ids):,}", file=sys.stderr, flush=True)
            await fill(client, len(ids), n, ids)
            points.append(await measure(c, client, f"{n:,} queued", n, queued, repeats,
                                        probes))
            print(f"  measured at {n:,}", file=sys.stderr, flush=True)
        c.stop()
        await c.start(timeout)
        async with Client(c.url, token, name="scale") as client:
            await wait_pilots(client, PROBE, 1, timeout, [pilot], [plog])
            points.append(await measure(c, client, f"{n:,} queued, restarted", n, queued,
                                        repeats, probes))
            print("  measured after the restart; cancelling", file=sys.stderr, flush=True)
            for i in range(0, len(ids), 10_000):
                await client.cancel(ids[i : i + 10_000])
        c.stop()
        await c.start(timeout)
        async with Client(c.url, token, name="scale") as client:
            await wait_pilots(client, PROBE, 1, timeout, [pilot], [plog])
            points.append(await measure(c, client, f"{n:,} final, restarted", n, "KILLED",
                                        repeats, probes))
        ok = True
    finally:
        stop_processes([pilot] if pilot is not None else [])
        c.stop()
        _cleanup(base, ok=ok)
    return points


def _cleanup(base: Path, *, ok: bool) -> None:
    if not ok:
        for log in sorted(base.glob("*.log")):
            print(f"--- {log.name} (tail)\n{log_tail(log, 15)}", file=sys.stderr)
        print(f"(bench files kept in {base})", file=sys.stderr)
    else:
        shutil.rmtree(base, ignore_errors=True)


def report(points: Sequence[Point], repeats: int) -> None:
    base = points[0]
    rows = []
    for p in points:
        extra = (p.rss - base.rss) * 1024 * 1024 / max(p.tasks - base.tasks, 1)
        rows.append([p.name, f"{p.rss:.0f}", f"{p.hwm:.0f}",
                     f"{extra:.0f}" if p is not base else ""])
    print(table("controller memory (MB; bytes per task over the first point)",
                ["point", "RSS", "peak RSS", "B/task"], rows))
    print()
    names = list(base.listings)
    header = ["tasks(..., limit=50)", *(p.name for p in points)]
    rows = []
    for name in names:
        row: list[str] = [name]
        for p in points:
            v = p.listings[name]
            row.append(f"{median(v):.1f} [{min(v):.1f}-{max(v):.1f}] p99 {p99(v):.1f}")
        rows.append(row)
    print(table(f"listing round trip, ms: p50 [min-max] p99 of {repeats} calls (the filled "
                "tasks' state is the queued one, then KILLED at the last point)", header, rows))
    print()
    rows = []
    for label, get in (("submit acknowledged, p50", lambda p: p.ack),
                       ("submit -> process started, p50", lambda p: p.start)):
        row = [label]
        for p in points:
            row.append(Spread.of([median(r) for r in get(p)]).fmt(2))
        rows.append(row)
        row = [label.replace("p50", "p99, pooled")]
        for p in points:
            row.append(f"{p99([x for r in get(p) for x in r]):.2f}")
        rows.append(row)
    rows.append(["ratio of p50s to the first point", *(
        f"{median([median(r) for r in p.ack]) / median([median(r) for r in base.ack]):.2f} / "
        f"{median([median(r) for r in p.start]) / median([median(r) for r in base.start]):.2f}"
        for p in points)])
    print(table("submit, one at a time on the probe site, ms: median [min-max] of 3 runs' "
                "p50", ["figure", *(p.name for p in points)], rows))
    failed = sum(p.failed for p in points)
    if failed:
        print(f"WARNING: {failed} probe tasks did not finish")


def main() -> None:
    ap = argparse.ArgumentParser(description="Tidewater with a million tasks in its store.")
    ap.add_argument("-n", type=int, default=1_000_000, help="tasks to fill the store with")
    ap.add_argument("--quick", action="store_true", help="100,000 tasks instead")
    ap.add_argument("--db", default=None,
                    help="an empty PostgreSQL database (postgresql://...) instead of a "
                         "SQLite file in a temporary directory; it is left filled")
    ap.add_argument("--listing-repeats", type=int, default=30)
    ap.add_argument("--probes", type=int, default=150, help="probe tasks at each point")
    ap.add_argument("--startup-timeout", type=float, default=300.0,
                    help="seconds for the controller (recovery included) and the pilot")
    a = ap.parse_args()
    n = 100_000 if a.quick else a.n
    print(machine_line())
    t = time.monotonic()
    points = anyio.run(run, n, a.db, a.listing_repeats, a.probes, a.startup_timeout)
    print(f"(scale: {time.monotonic() - t:.0f}s in all)", file=sys.stderr)
    print(f"store: {'PostgreSQL' if a.db else 'SQLite'}, {n:,} tasks")
    report(points, a.listing_repeats)


if __name__ == "__main__":
    main()
