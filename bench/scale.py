"""A store of a million tasks: controller memory, listings and submit latency at scale.

    .venv/bin/python bench/scale.py [-n 1000000] [--quick] [--db postgresql://...]

Two controller processes (``python -m tidewater server``), each with a
user, two sites with the app ``true`` = ``/bin/true`` -- ``fill``, which has
no pilot, and ``bench``, which has one pilot process with one core -- and a
store of its own: the *small* one (SQLite) gets 1,000 tasks, the *large*
one N (SQLite files, or the empty PostgreSQL databases ``--small-db`` and
``--db`` name: give both to compare submit latencies on one backend).
Stores are filled through the public client only (``submit_many`` in
batches of 50,000, ``push_results=False``) with tasks on ``fill``, tagged
``run`` = ``i % 100``; they stay queued, as tasks waiting for an allocation
would. Figures are taken at three points:

1. ``N queued``: right after the fill (the controller as real submits leave it);
2. ``N queued, restarted``: the large controller stopped (SIGTERM) and
   started again on its store, so it holds the N tasks as recovery loads
   them; its pilot reconnects by itself;
3. ``N final, restarted``: every filled task cancelled through the client
   (``cancel`` in batches: KILLED, final, the store keeps them), then the
   large controller restarted: a store of N final tasks, none in memory.

At each point, the two controllers in turn (one listing call or one probe
on each, alternately, so both see the same load from the rest of the
machine):

* controller memory: resident set (VmRSS) and its peak (VmHWM) from /proc;
  bytes per task = (large RSS - small RSS) / (N - 1,000);
* listings: ``client.tasks(..., limit=50)`` round trips by state, tag, site
  and app (and everything, and a state almost no task is in), oldest and
  newest first, each ``--listing-repeats`` times: p50 [min-max] and p99, ms;
* counts: ``client.count(...)`` of the same filters (each reads every
  matching task, so it grows with the matches: a summary, not a page);
* submit: ``--probes`` tasks on ``bench`` submitted one at a time, each
  awaited before the next, in 3 runs: ``submit()`` acknowledged (stored)
  and submit -> process started (``started_at - created_at``), median
  [min-max] of the per-run p50 on each controller, and their ratio. The
  filled tasks are on the other site, so probes never wait behind them;
  the store and the controller's tables are as large either way.
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
    p99,
    stop_processes,
    table,
    wait_listening,
    wait_pilots,
)

from tidewater.client import Client  # noqa: E402
from tidewater.controller.users import add_user  # noqa: E402
from tidewater.proto import TaskSpec  # noqa: E402

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
class Stack:
    """A controller with its user, the two sites, a pilot on PROBE and its filled tasks."""

    c: Controller
    token: str = ""
    pilot: subprocess.Popen[bytes] | None = None
    ids: list[int] = field(default_factory=list)

    @property
    def plog(self) -> Path:
        return self.c.base / "pilot.log"

    async def setup(self, name: str, timeout: float) -> None:
        self.c.base.mkdir(parents=True, exist_ok=True)
        await self.c.start(timeout)
        self.token = await add_user(self.c.db, f"{name}{os.getpid()}")
        async with Client(self.c.url, self.token, name="scale") as client:
            for site in (FILL, PROBE):
                _s, site_token = await client.add_site(site)
                await client.add_app(site, "true", "/bin/true")
            env = {**os.environ, "TIDEWATER_URL": self.c.url, "TIDEWATER_TOKEN": site_token}
            self.pilot = _spawn([PY, "-m", "tidewater", "pilot", "--cores", "1", "--workdir",
                                 str(self.c.base / "pilot")], self.plog, env)
            await self.wait_pilot(client, timeout)
            for _ in range(20):  # warm-up: the pilot's first tasks are slower
                await collect(client, [await client.submit("true", site=PROBE)], stall=10.0)

    async def wait_pilot(self, client: Client, timeout: float) -> None:
        assert self.pilot is not None
        await wait_pilots(client, PROBE, 1, timeout, [self.pilot], [self.plog])

    def client(self) -> Client:
        return Client(self.c.url, self.token, name="scale")

    async def restart(self, timeout: float) -> None:
        self.c.stop()
        await self.c.start(timeout)

    def stop(self) -> None:
        stop_processes([self.pilot] if self.pilot is not None else [])
        self.c.stop()


@dataclass
class Side:
    """What one controller gave at one point."""

    rss: float = 0.0
    hwm: float = 0.0
    listings: dict[str, list[float]] = field(default_factory=dict)
    ack: list[list[float]] = field(default_factory=list)
    start: list[list[float]] = field(default_factory=list)
    failed: int = 0

    def p50s(self, what: str) -> list[float]:
        return [median(r) for r in getattr(self, what)]


@dataclass
class Point:
    name: str
    small: Side
    large: Side


def listings(queued_state: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("everything", {}),
        ("state of the filled tasks", {"state": queued_state}),
        ("state RUNNING (few tasks)", {"state": "RUNNING"}),
        ("tag run=42", {"tags": {"run": "42"}}),
        (f"site {FILL}", {"site": FILL}),
        ("app true", {"app": "true"}),
    ]


async def probe(client: Client, side: Side, ack: list[float], start: list[float]) -> None:
    t0 = time.perf_counter()
    task = await client.submit("true", site=PROBE, tags={"probe": "1"})
    ack.append(1000 * (time.perf_counter() - t0))
    info = (await collect(client, [task], stall=10.0)).infos[task.id]
    if info.state != "JOB_FINISHED" or info.started_at is None:
        side.failed += 1
    else:
        start.append(1000 * (info.started_at - info.created_at))


async def measure(name: str, small: tuple[Stack, Client], large: tuple[Stack, Client],
                  states: tuple[str, str], repeats: int, probes: int) -> Point:
    """Both controllers, turn about (one call or probe each), so both see the same load."""
    point = Point(name, Side(), Side())
    pairs = [(small, point.small, states[0]), (large, point.large, states[1])]
    for (stack, _client), side, _state in pairs:
        assert stack.c.proc is not None
        side.rss, side.hwm = memory(stack.c.proc.pid)
    for i, (label, _kw) in enumerate(listings(states[0])):
        for newest in (False, True):
            key = f"{label}, {'newest' if newest else 'oldest'}"
            for _ in range(repeats):
                for (_stack, client), side, state in pairs:
                    kw = listings(state)[i][1]
                    t0 = time.perf_counter()
                    await client.tasks(limit=50, newest=newest, **kw)
                    side.listings.setdefault(key, []).append(
                        1000 * (time.perf_counter() - t0))
        # A count reads every match (not a page): fewer calls.
        for _ in range(max(3, repeats // 6)):
            for (_stack, client), side, state in pairs:
                kw = listings(state)[i][1]
                t0 = time.perf_counter()
                await client.count(**kw)
                side.listings.setdefault(f"count: {label}", []).append(
                    1000 * (time.perf_counter() - t0))
    for _run in range(3):
        runs: list[tuple[list[float], list[float]]] = [([], []) for _ in pairs]
        for _ in range(max(1, probes // 3)):
            for ((_stack, client), side, _state), (ack, start) in zip(pairs, runs, strict=True):
                await probe(client, side, ack, start)
        for (_p, side, _state), (ack, start) in zip(pairs, runs, strict=True):
            side.ack.append(ack)
            side.start.append(start)
    print(f"  measured: {name}", file=sys.stderr, flush=True)
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


async def run(n: int, db: str | None, small_db: str | None, repeats: int, probes: int,
              timeout: float) -> list[Point]:
    """A controller with N tasks ("large") beside one with 1,000 ("small"), measured in turn."""
    base = Path(tempfile.mkdtemp(prefix="tidewater-scale-"))
    small = Stack(Controller(db=small_db or str(base / "small" / "scale.db"),
                             base=base / "small"))
    large = Stack(Controller(db=db or str(base / "large" / "scale.db"), base=base / "large"))
    points: list[Point] = []
    ok = False
    try:
        await small.setup("small", timeout)
        await large.setup("large", timeout)
        async with small.client() as sc:
            async with large.client() as lc:
                await fill(sc, 0, SMALL, small.ids)
                await fill(lc, 0, n, large.ids)
                (first,) = await sc.tasks(ids=small.ids[:1])
                queued = first.state
                points.append(await measure(f"{n:,} queued", (small, sc), (large, lc),
                                            (queued, queued), repeats, probes))
            await large.restart(timeout)
            async with large.client() as lc:
                await large.wait_pilot(lc, timeout)
                points.append(await measure(f"{n:,} queued, restarted", (small, sc),
                                            (large, lc), (queued, queued), repeats, probes))
                print("  cancelling", file=sys.stderr, flush=True)
                for i in range(0, len(large.ids), 10_000):
                    await lc.cancel(large.ids[i : i + 10_000])
            await large.restart(timeout)
            async with large.client() as lc:
                await large.wait_pilot(lc, timeout)
                points.append(await measure(f"{n:,} final, restarted", (small, sc),
                                            (large, lc), (queued, "KILLED"), repeats, probes))
        ok = True
    finally:
        large.stop()
        small.stop()
        _cleanup(base, ok=ok)
    return points


def _cleanup(base: Path, *, ok: bool) -> None:
    if not ok:
        for log in sorted(base.glob("*/*.log")):
            print(f"--- {log} (tail)\n{log_tail(log, 15)}", file=sys.stderr)
        print(f"(bench files kept in {base})", file=sys.stderr)
    else:
        shutil.rmtree(base, ignore_errors=True)


def report(points: Sequence[Point], n: int, repeats: int) -> None:
    rows = []
    for p in points:
        per_task = (p.large.rss - p.small.rss) * 1024 * 1024 / (n - SMALL)
        rows.append([p.name, f"{p.large.rss:.0f}", f"{p.large.hwm:.0f}", f"{p.small.rss:.0f}",
                     f"{per_task:.0f}"])
    print(table(f"controller memory, MB (B/task: over the {SMALL:,}-task controller's RSS)",
                ["point", "RSS", "peak RSS", f"RSS at {SMALL:,}", "B/task"], rows))
    print()
    first = points[0]
    header = ["tasks(..., limit=50)", f"{SMALL:,} queued", *(p.name for p in points)]
    rows = []
    for key, small in first.small.listings.items():
        rows.append([key, *(f"{median(v):.1f} [{min(v):.1f}-{max(v):.1f}] p99 {p99(v):.1f}"
                            for v in (small, *(p.large.listings[key] for p in points)))])
    print(table(f"listing round trip, ms: p50 [min-max] p99 of {repeats} calls, counts of "
                f"{max(3, repeats // 6)} (the filled tasks' state is the queued one, KILLED "
                "once cancelled)", header, rows))
    print()
    rows = []
    for p in points:
        for what, label in (("ack", "submit acknowledged"),
                            ("start", "submit -> process started")):
            s, lg = p.small.p50s(what), p.large.p50s(what)
            pooled_s = [x for r in getattr(p.small, what) for x in r]
            pooled_l = [x for r in getattr(p.large, what) for x in r]
            rows.append([p.name, label, Spread.of(s).fmt(2), Spread.of(lg).fmt(2),
                         f"{median(lg) / median(s):.2f}", f"{p99(pooled_s):.2f}",
                         f"{p99(pooled_l):.2f}"])
    print(table("submit, one task at a time on the probe site, the two controllers in turn, "
                "ms: median [min-max] of 3 runs' p50", ["point", "figure", f"p50 at {SMALL:,}",
                                                          f"p50 at {n:,}", "ratio",
                                                          f"p99 at {SMALL:,}", f"p99 at {n:,}"],
                rows))
    failed = sum(p.small.failed + p.large.failed for p in points)
    if failed:
        print(f"WARNING: {failed} probe tasks did not finish")


def main() -> None:
    ap = argparse.ArgumentParser(description="Tidewater with a million tasks in its store.")
    ap.add_argument("-n", type=int, default=1_000_000, help="tasks to fill the store with")
    ap.add_argument("--quick", action="store_true", help="100,000 tasks instead")
    ap.add_argument("--db", default=None,
                    help="an empty PostgreSQL database (postgresql://...) for the large "
                         "controller instead of a SQLite file; it is left filled")
    ap.add_argument("--small-db", default=None,
                    help="another empty PostgreSQL database, for the 1,000-task controller "
                         "(default: a SQLite file); give one with --db to compare submit "
                         "latencies on one backend")
    ap.add_argument("--listing-repeats", type=int, default=30)
    ap.add_argument("--probes", type=int, default=150, help="probe tasks at each point")
    ap.add_argument("--startup-timeout", type=float, default=300.0,
                    help="seconds for a controller (recovery included) and its pilot")
    a = ap.parse_args()
    n = 100_000 if a.quick else a.n
    print(machine_line())
    t = time.monotonic()
    points = anyio.run(run, n, a.db, a.small_db, a.listing_repeats, a.probes,
                       a.startup_timeout)
    print(f"(scale: {time.monotonic() - t:.0f}s in all)", file=sys.stderr)
    print(f"stores: {'PostgreSQL' if a.db else 'SQLite'} with {n:,} tasks, "
          f"{'PostgreSQL' if a.small_db else 'SQLite'} with {SMALL:,}")
    report(points, n, a.listing_repeats)


if __name__ == "__main__":
    main()
