"""Python function tasks (warm workers) beside the peers' no-op functions, in one run.

    .venv/bin/python bench/functions.py [--repeats 5] [-k 200] [-n 5000] [--no-peers]

A controller process (SQLite store) and pilots whose function app ``noop``
is ``tidewater.examples.functions:noop``, run in each pilot's warm worker
processes (arguments and result as msgpack):

* latency    -- 1 pilot × 1 core; ``k`` tasks submitted one at a time, each
  awaited (``submit`` then ``value()``) before the next; p50 and p99 of the
  round trip on the client's clock;
* throughput -- 2 pilots × 1 core; ``n`` tasks submitted at once
  (``submit_many``), tasks/s from the first submit to the last result.

The peers run the same no-op function, each in a child process under a
time limit (``bench/peers.py``): ProcessPoolExecutor(2), Dask LocalCluster
(2 workers) and Parsl HTEX (2 workers).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anyio  # noqa: E402
import peers as peer_mod  # noqa: E402
from common import Spread, cluster, machine_line, median, ms, p99, table  # noqa: E402

from tidewater import TaskSpec, codec  # noqa: E402

FN = "tidewater.examples.functions:noop"


async def add_noop(c: Any) -> None:  # c: common.Cluster
    """Register the function app ``noop`` on the cluster's site."""
    await c.client.add_app(c.site, "noop", function=FN)


async def latency_run(c: Any, k: int) -> list[float]:
    """``k`` no-op function tasks one at a time, each awaited; their round trips (s)."""
    rtt = []
    for i in range(k):
        t0 = time.perf_counter()
        value = await (await c.client.submit("noop", site=c.site, args=(i,))).value()
        rtt.append(time.perf_counter() - t0)
        assert value == i
    return rtt


async def throughput_run(c: Any, n: int) -> float:
    """``n`` no-op function tasks submitted at once, every result awaited; tasks/s."""
    blob = codec.encode_call((1,), {})
    specs = [TaskSpec(app="noop", site=c.site, args=blob) for _ in range(n)]
    t0 = time.perf_counter()
    tasks = await c.client.submit_many(specs)
    infos = await c.client.wait(tasks)
    rate = n / (time.perf_counter() - t0)
    bad = [i for i in infos if i.state != "JOB_FINISHED"]
    assert not bad, bad[:3]
    return rate


async def latency(k: int, repeats: int) -> tuple[list[float], list[float]]:
    p50s, p99s = [], []
    async with cluster(pilots=1, cores=1, apps={}) as c:
        await add_noop(c)
        await latency_run(c, 20)  # warm the worker
        for _ in range(repeats):
            rtt = ms(await latency_run(c, k))
            p50s.append(median(rtt))
            p99s.append(p99(rtt))
    return p50s, p99s


async def throughput(n: int, repeats: int) -> list[float]:
    async with cluster(pilots=2, cores=1, apps={}) as c:
        await add_noop(c)
        await throughput_run(c, 200)  # warm-up
        rates = [await throughput_run(c, n) for _ in range(repeats)]
    return rates


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", "-r", type=int, default=5)
    ap.add_argument("-k", type=int, default=200, help="tasks per latency run")
    ap.add_argument("-n", type=int, default=5000, help="tasks per throughput run")
    ap.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--peer-timeout", type=float, default=150.0)
    args = ap.parse_args()
    print(machine_line(), flush=True)
    p50s, p99s = await latency(args.k, args.repeats)
    rates = await throughput(args.n, args.repeats)
    rows = [["tidewater", "function (warm worker)", Spread.of(p50s).fmt(3),
             Spread.of(p99s).fmt(3), Spread.of(rates).fmt(0)]]
    if args.peers:
        for peer in peer_mod.PEERS:
            lat = peer_mod.run_peer(peer, "latency", k=args.k, repeats=args.repeats,
                                    kinds=("noop",), timeout=args.peer_timeout)
            thr = peer_mod.run_peer(peer, "throughput", n=args.n, repeats=args.repeats,
                                    kinds=("noop",), timeout=args.peer_timeout)
            if "error" in lat or "error" in thr:
                rows.append([peer, "noop", lat.get("error", ""), "", thr.get("error", "")])
                continue
            runs = [ms(x) for x in lat["noop"]]
            rows.append([peer, "noop", Spread.of([median(x) for x in runs]).fmt(3),
                         Spread.of([p99(x) for x in runs]).fmt(3),
                         Spread.of(thr["noop"]).fmt(0)])
    print(table(f"no-op Python function tasks, {args.repeats} runs (median [min-max]); "
                f"latency: {args.k} one at a time, 1 worker; throughput: {args.n} at once, "
                "2 workers",
                ["system", "task", "round trip p50 (ms)", "p99 (ms)", "tasks/s"], rows))
    print("targets (ratios to Parsl HTEX, same run): round trip p50 <= 0.75x, p99 <= 1x; "
          "throughput >= 3x (bench/compare.py judges them)")


if __name__ == "__main__":
    anyio.run(main)
