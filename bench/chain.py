"""A chain of dependent tasks, each the parent of the next, beside the peers.

    .venv/bin/python bench/chain.py [--repeats 5] [-n 200] [--no-peers]

DESIGN target: a link in a chain of dependent tasks costs <= 3 ms.

Tidewater: a controller process (SQLite store), one pilot process with one
core, app ``true`` = ``/bin/true``. After a warm-up chain, each of
``repeats`` runs submits ``n`` tasks one after another, each with
``parents=[previous]`` (all submitted up front; the head may start while the
tail is still being submitted), waits for the last one, then reads every
task's ``TaskInfo``. Per link:

* gap  -- ``child.started_at - parent.finished_at``: the parent's exit seen by
  the pilot -> the child's process started on the pilot (report, commit that
  makes the child READY, dispatch, work directory, process start). Both
  stamps come from the pilot's wall clock;
* run  -- ``finished_at - started_at`` of each task (the ``/bin/true``
  process as the pilot saw it);
* wall/n -- first ``submit()`` called -> last task's result on the client,
  divided by ``n`` (client's monotonic clock).

A link whose child was stored only after its parent had finished (the chain
outran the submissions) is "late": its gap then measures the submission, not
the dependency release, and is left out of the gap figures and counted.
Links whose parent finished while submissions were still arriving share the
controller with those Submits; the pooled line also gives the gaps of the
links after the last task was stored. The gap includes the pilot creating
the child's work directory and its two output files, so it moves with the
disk under it (``--pilot-root /dev/shm`` puts them on tmpfs).

Peers, each in a child process of its own under a time limit (killed with
its process group when over), set up exactly as in ``bench/peers.py``:
Dask ``LocalCluster`` (2 workers x 1 thread, processes) with
``client.submit(f, previous_future)``, and Parsl HTEX (2 workers,
``LocalProvider``) with a ``python_app`` called with the previous app's
future. Peers have no start/finish stamps of their own, so each task stamps
``time.time()`` itself and returns the stamps, which the next task takes as
its argument:

* ``noop`` -- stamps at entry and at return: gap = the framework's whole
  dependency-release and dispatch overhead between two Python calls;
* ``true`` -- starts ``/bin/true`` with ``subprocess.Popen``, stamps once the
  process exists and again once it has been reaped: the same two points a
  Tidewater pilot stamps, so its gap compares like for like (process start
  is inside the gap, as it is for Tidewater).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers as peer_mod  # noqa: E402
from common import (  # noqa: E402
    Spread,
    cluster,
    machine_line,
    median,
    ms,
    p99,
    table,
    warn_incomplete,
)

PEERS = ("dask", "parsl")
KINDS = ("noop", "true")


@dataclass
class Run:
    """One chain: wall time per link, and per-link gaps and run times (seconds)."""

    wall_per_link: float = 0.0
    gaps: list[float] = field(default_factory=list)
    runs: list[float] = field(default_factory=list)
    late: int = 0
    failed: int = 0
    # Tidewater only: gaps of the links whose parent finished after the last
    # task was stored (no Submit competing with the chain for the controller).
    gaps_after_submits: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"wall_per_link": self.wall_per_link, "gaps": self.gaps, "runs": self.runs,
                "late": self.late}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Run:
        return cls(wall_per_link=d["wall_per_link"], gaps=d["gaps"], runs=d["runs"],
                   late=d.get("late", 0))


def links(stamps: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """(gaps, run times) of a chain from each task's (start, end) stamps, in chain order."""
    gaps = [stamps[i + 1][0] - stamps[i][1] for i in range(len(stamps) - 1)]
    runs = [end - start for start, end in stamps]
    return gaps, runs


# --------------------------------------------------------------------------- tidewater


async def one_chain(c: Any, n: int, app: str = "true", args: tuple[Any, ...] = ()
                    ) -> Run:  # c: common.Cluster
    """A chain of ``n`` tasks of ``app`` (``args`` for a function app), each the parent of
    the next, submitted one after another; waits for the last one."""
    client = c.client
    t0 = time.perf_counter()
    tasks = []
    prev = None
    for _ in range(n):
        prev = await client.submit(app, site=c.site, parents=[] if prev is None else [prev],
                                   args=args)
        tasks.append(prev)
    assert prev is not None
    await client.wait([prev], timeout=60)
    wall = time.perf_counter() - t0
    infos = await client.wait(tasks, timeout=60)
    run = Run(wall_per_link=wall / n)
    bad = [i for i in infos if i.state != "JOB_FINISHED" or i.started_at is None
           or i.finished_at is None]
    if bad:
        run.failed = len(bad)
        return run
    submitted = infos[-1].created_at
    for parent, child in zip(infos, infos[1:], strict=False):
        assert parent.finished_at is not None and child.started_at is not None
        if child.created_at >= parent.finished_at:
            run.late += 1
            continue
        gap = child.started_at - parent.finished_at
        run.gaps.append(gap)
        if parent.finished_at > submitted:
            run.gaps_after_submits.append(gap)
    run.runs = [i.finished_at - i.started_at for i in infos
                if i.finished_at is not None and i.started_at is not None]
    return run


async def measure(repeats: int, n: int, warmup: int, pilot_root: str | None) -> list[Run]:
    runs: list[Run] = []
    async with cluster(pilots=1, cores=1, pilot_root=pilot_root) as c:
        if warmup:
            await one_chain(c, warmup)
        for _ in range(repeats):
            runs.append(await one_chain(c, n))
    return runs


# --------------------------------------------------------------------------- peers (child)


def stamp_noop(prev: Any = None) -> tuple[float, float]:
    import time as t

    start = t.time()
    return start, t.time()


def stamp_true(prev: Any = None) -> tuple[float, float]:
    import subprocess as sp
    import time as t

    p = sp.Popen(["/bin/true"])
    start = t.time()  # the process exists: where a Tidewater pilot stamps "started"
    if p.wait() != 0:
        raise RuntimeError("/bin/true failed")
    return start, t.time()


FUNCS: dict[str, Callable[[Any], tuple[float, float]]] = {"noop": stamp_noop,
                                                          "true": stamp_true}


class DaskChain:
    def __init__(self) -> None:
        self.b = peer_mod.Dask()  # the same LocalCluster as bench/peers.py

    def chain(self, kind: str, n: int) -> tuple[float, list[tuple[float, float]]]:
        client, fn = self.b.client, FUNCS[kind]
        t0 = time.perf_counter()
        futs = []
        prev = None
        for _ in range(n):
            prev = client.submit(fn, prev, pure=False)
            futs.append(prev)
        assert prev is not None
        prev.result()
        wall = time.perf_counter() - t0
        return wall, [tuple(x) for x in client.gather(futs)]  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self.b.close()


class ParslChain:
    def __init__(self) -> None:
        import parsl

        self.b = peer_mod.Parsl()  # the same HTEX config as bench/peers.py
        self.apps = {k: parsl.python_app(f, executors=["htex"]) for k, f in FUNCS.items()}

    def chain(self, kind: str, n: int) -> tuple[float, list[tuple[float, float]]]:
        app = self.apps[kind]
        t0 = time.perf_counter()
        futs = []
        prev = None
        for _ in range(n):
            prev = app(prev)
            futs.append(prev)
        assert prev is not None
        prev.result()
        wall = time.perf_counter() - t0
        return wall, [tuple(f.result()) for f in futs]

    def close(self) -> None:
        self.b.close()


CHAINS: dict[str, Callable[[], Any]] = {"dask": DaskChain, "parsl": ParslChain}


def measure_peer(peer: str, *, n: int, repeats: int, warmup: int,
                 kinds: Sequence[str]) -> dict[str, Any]:
    """Run in the child process: a warm-up chain, then ``repeats`` chains, per kind."""
    t0 = time.perf_counter()
    b = CHAINS[peer]()
    out: dict[str, Any] = {"peer": peer, "startup_s": time.perf_counter() - t0}
    try:
        out.update(chains_on(b, n=n, repeats=repeats, warmup=warmup, kinds=kinds))
    finally:
        b.close()
    return out


def chains_on(b: Any, *, n: int, repeats: int, warmup: int, kinds: Sequence[str]
              ) -> dict[str, list[dict[str, Any]]]:
    """kind -> each chain's :class:`Run` as JSON, on a started ``DaskChain``/``ParslChain``."""
    out = {}
    for kind in kinds:
        if warmup:
            b.chain(kind, warmup)
        runs = []
        for _ in range(repeats):
            wall, stamps = b.chain(kind, n)
            gaps, run_times = links(stamps)
            runs.append(Run(wall_per_link=wall / n, gaps=gaps, runs=run_times).to_json())
        out[kind] = runs
    return out


# --------------------------------------------------------------------------- peers (parent)


def run_peer(peer: str, *, n: int, repeats: int, warmup: int, kinds: Sequence[str],
             timeout: float) -> dict[str, Any]:
    """One peer in a child process bounded by ``timeout`` seconds, as bench/peers.py does.

    Returns the figures, or ``{"error": why}`` (not installed, failed, timed out).
    """
    if not peer_mod.available(peer):
        return {"error": f"not installed ({peer_mod.INSTALL_HINT[peer]})"}
    return peer_mod.run_child([str(Path(__file__).resolve()), "--child", peer, "-n", str(n),
                               "--repeats", str(repeats), "--warmup", str(warmup),
                               "--kinds", ",".join(kinds)], timeout)


# --------------------------------------------------------------------------- report


def row(name: str, kind: str, runs: list[Run]) -> list[str]:
    def sp(vals: list[float], digits: int = 2) -> str:
        return Spread.of(vals).fmt(digits)

    ok = [r for r in runs if not r.failed]
    return [name, kind,
            sp([1000 * r.wall_per_link for r in ok]),
            sp([median(ms(r.gaps)) for r in ok]),
            sp([p99(ms(r.gaps)) for r in ok]),
            sp([median(ms(r.runs)) for r in ok]),
            str(sum(r.late for r in ok))]


def report(tw: list[Run] | None, peers: dict[str, dict[str, Any]], n: int) -> None:
    rows = []
    if tw is not None:
        rows.append(row("tidewater", "/bin/true", tw))
    for peer, r in peers.items():
        if "error" in r:
            continue
        for kind in KINDS:
            if kind in r:
                rows.append(row(peer, kind, [Run.from_json(x) for x in r[kind]]))
    print(table(f"chain of {n} dependent tasks, each the parent of the next (ms per link; "
                "median [min-max] over runs)",
                ["system", "task", "wall/n", "gap p50", "gap p99", "run p50", "late"], rows))
    if tw is not None:
        ok = [r for r in tw if not r.failed]
        pooled = ms(g for r in ok for g in r.gaps)
        after = ms(g for r in ok for g in r.gaps_after_submits)
        print()
        print(f"tidewater gap, all {len(pooled)} links of {len(ok)} runs pooled: "
              f"p50 {median(pooled):.2f} ms, p99 {p99(pooled):.2f} ms, "
              f"max {max(pooled, default=float('nan')):.2f} ms (target: a link <= 3 ms)")
        print(f"  of which the {len(after)} links after the last task was stored: "
              f"p50 {median(after):.2f} ms, p99 {p99(after):.2f} ms")
        warn_incomplete(sum(r.failed for r in tw), 0)
    for peer, r in peers.items():
        if "error" in r:
            print(f"{peer}: {r['error']}")
    print()
    print("gap = next task's start - previous task's end (Tidewater: the pilot's started_at\n"
          "  and finished_at; peers: time.time() stamped in the function); run = end - start;\n"
          "  wall/n = first submit -> last result on the caller, / n; late = links left out\n"
          "  of the gaps because the child was stored after its parent had finished.")


# --------------------------------------------------------------------------- main


def main() -> None:
    import anyio

    ap = argparse.ArgumentParser(description="A chain of dependent tasks, beside the peers.")
    ap.add_argument("--repeats", "-r", type=int, default=5)
    ap.add_argument("-n", type=int, default=200, help="tasks per chain")
    ap.add_argument("--warmup", type=int, default=20, help="tasks in the warm-up chain")
    ap.add_argument("--pilot-root", default=None, metavar="DIR",
                    help="put the pilots' per-task work directories under DIR (e.g. /dev/shm)")
    ap.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure Dask and Parsl (default on)")
    ap.add_argument("--peer-timeout", type=float, default=90.0, help="seconds allowed per peer")
    ap.add_argument("--kinds", default=",".join(KINDS), help=argparse.SUPPRESS)
    ap.add_argument("--child", choices=PEERS, help=argparse.SUPPRESS)
    a = ap.parse_args()
    kinds = [k for k in a.kinds.split(",") if k]
    if a.child:
        r = measure_peer(a.child, n=a.n, repeats=a.repeats, warmup=a.warmup, kinds=kinds)
        sys.stdout.write(json.dumps(r) + "\n")
        return
    print(machine_line())
    t = time.monotonic()
    tw = anyio.run(measure, a.repeats, a.n, a.warmup, a.pilot_root)
    print(f"  tidewater: {time.monotonic() - t:.1f}s including start-up", file=sys.stderr,
          flush=True)
    peers: dict[str, dict[str, Any]] = {}
    if a.peers:
        for peer in PEERS:
            t = time.monotonic()
            peers[peer] = run_peer(peer, n=a.n, repeats=a.repeats, warmup=a.warmup,
                                   kinds=kinds, timeout=a.peer_timeout)
            print(f"  {peer}: {time.monotonic() - t:.1f}s", file=sys.stderr, flush=True)
    report(tw, peers, a.n)


if __name__ == "__main__":
    main()
