"""Tidewater against its peers on every workload, in one invocation: one table.

    .venv/bin/python bench/compare.py [--quick] [--repeats 3] [--pg URL | --no-pg]
                                      [--json FILE]

Installs nothing: the peers come from the optional extra
(``pip install -e '.[bench]'``); a peer that is not installed is reported
and skipped, one that runs over ``--peer-timeout`` is killed and reported.

Systems, each on 2 cores' worth of workers:

* Tidewater on its SQLite store, and on PostgreSQL when ``--pg URL`` (or
  ``$TIDEWATER_BENCH_PG``) names a server or the project's local one
  (``scripts/services.sh``, 127.0.0.1:55432) answers: a controller process,
  2 pilots × 1 core, apps ``true`` = ``/bin/true`` and ``noop`` =
  ``tidewater.examples.functions:noop`` (warm workers); a new controller,
  store and pilots every round (``bench/common.py``'s ``cluster``);
* ProcessPoolExecutor(2) (the floor: no scheduler, no durability), Dask
  ``LocalCluster`` (2 workers) and Parsl HTEX (2 workers), set up as in
  ``bench/peers.py``, each in child processes under a time limit.

Workloads, all from the other scripts in ``bench/`` (imported, not copied):

* round trip, one task at a time, p50 and p99 of ``-k`` tasks: no-op
  function (``functions.py``) and ``/bin/true`` (``latency.py``; the peers
  run ``subprocess.run(["/bin/true"])`` in their worker);
* throughput: ``-n`` tasks at once, every result gathered, tasks/s
  (``functions.py``, ``throughput.py``, ``peers.py``);
* chain: ``--chain`` tasks each the parent of the next, wall time from the
  first submit to the last result ÷ the length (``chain.py``; no
  ProcessPool: it has no dependencies);
* CPU per task of the controller and of the busier pilot during the
  throughput runs, from ``/proc`` (their own user + system time, not the
  tasks' processes), as ``throughput.py`` measures it.

Rounds are interleaved: each round runs every system once, in an order
rotated from round to round, so that drift of a shared machine hits all
systems alike. The table (Markdown, on stdout) gives each figure's median
over rounds with [min-max], Tidewater ÷ each peer, PostgreSQL ÷ SQLite, the
targets of the [performance] issue and whether each is met
(``bench/comparison.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anyio  # noqa: E402
import chain  # noqa: E402
import comparison  # noqa: E402
import functions  # noqa: E402
import latency  # noqa: E402
import peers  # noqa: E402
import throughput  # noqa: E402
from common import (  # noqa: E402
    LOCAL_PG_URL,
    PG_ENV,
    cluster,
    cpu_times,
    machine_line,
    median,
    ms,
    p99,
    pg_ping,
)


@dataclass(frozen=True)
class Config:
    repeats: int = 3
    k: int = 200  # tasks per round-trip run
    n: int = 5000  # tasks per throughput run
    chain: int = 200  # tasks per chain
    warmup: int = 20
    peer_timeout: float = 180.0


QUICK = Config(repeats=2, k=50, n=1000, chain=50, warmup=10, peer_timeout=60.0)

Round = dict[str, float]  # figure -> value, one round of one system


# --------------------------------------------------------------------------- Tidewater


async def _cpu_ms_per_task(c: Any, n: int, run: Callable[[], Coroutine[Any, Any, Any]]
                           ) -> tuple[Any, float, float]:
    """Run ``run()``; return its result and the CPU ms per task (own user + system time)
    of the controller and of the busier pilot meanwhile."""
    pids = [c.server.pid, *(p.pid for p in c.pilots)]
    before = [cpu_times(pid) for pid in pids]
    result = await run()
    after = [cpu_times(pid) for pid in pids]
    used = [(a[0] + a[1] - b[0] - b[1]) * 1000.0 / n if a and b else float("nan")
            for a, b in zip(after, before, strict=True)]
    return result, used[0], max(used[1:])


async def tidewater_round(cfg: Config, db: str | None) -> Round:
    """Every workload once on a new controller (store ``db``, None = SQLite) and 2 pilots."""
    out: Round = {}
    async with cluster(pilots=2, cores=1, db=db) as c:
        await functions.add_noop(c)
        await functions.latency_run(c, cfg.warmup)
        for _ in range(cfg.warmup):
            await latency.one_task(c, None)
        await functions.throughput_run(c, 200)
        await throughput.one_run(c, 200)

        rtt = ms(await functions.latency_run(c, cfg.k))
        out["noop_rtt_p50"], out["noop_rtt_p99"] = median(rtt), p99(rtt)
        lat = latency.Run()
        for _ in range(cfg.k):
            await latency.one_task(c, lat)
        if lat.failed or lat.lost:
            raise RuntimeError(f"/bin/true round trips: {lat.failed} failed, {lat.lost} lost")
        out["true_rtt_p50"], out["true_rtt_p99"] = median(ms(lat.rtt)), p99(ms(lat.rtt))

        out["noop_tput"], out["cpu_ctl_noop"], out["cpu_pilot_noop"] = await _cpu_ms_per_task(
            c, cfg.n, lambda: functions.throughput_run(c, cfg.n))
        run, out["cpu_ctl_true"], out["cpu_pilot_true"] = await _cpu_ms_per_task(
            c, cfg.n, lambda: throughput.one_run(c, cfg.n))
        if run.failed or run.lost:
            raise RuntimeError(f"/bin/true throughput: {run.failed} failed, {run.lost} lost")
        out["true_tput"] = run.rate

        for key, app, args in (("chain_noop", "noop", (0,)), ("chain_true", "true", ())):
            ch = await chain.one_chain(c, cfg.chain, app, args)
            if ch.failed:
                raise RuntimeError(f"chain of {app}: {ch.failed} tasks did not finish")
            out[key] = 1000.0 * ch.wall_per_link
    return out


# --------------------------------------------------------------------------- peers


KINDS = ("noop", "true")


class PeerFailed(Exception):
    """A peer's child process failed or timed out; the message says which and why."""


def peer_child(peer: str, cfg: Config) -> dict[str, Any]:
    """In the child process: every workload once on one started peer (one start-up)."""
    if peer in chain.CHAINS:
        ch = chain.CHAINS[peer]()  # wraps the backend of bench/peers.py (``.b``)
        b = ch.b
    else:
        ch, b = None, peers.BACKENDS[peer]()
    try:
        out: dict[str, Any] = {
            "latency": peers.measure_on(b, "latency", k=cfg.k, n=cfg.n, repeats=1,
                                        kinds=KINDS),
            "throughput": peers.measure_on(b, "throughput", k=cfg.k, n=cfg.n, repeats=1,
                                           kinds=KINDS),
        }
        if ch is not None:
            out["chain"] = chain.chains_on(ch, n=cfg.chain, repeats=1, warmup=cfg.warmup,
                                           kinds=KINDS)
    finally:
        (ch or b).close()
    return out


def peer_round(cfg: Config, peer: str) -> Round:
    """Every workload once for one peer, in a child process under ``cfg.peer_timeout``."""
    got = peers.run_child([str(Path(__file__).resolve()), "--peer-child", peer,
                           "--config", json.dumps(asdict(cfg))], cfg.peer_timeout)
    if "error" in got:
        raise PeerFailed(got["error"])
    out: Round = {}
    for kind in KINDS:
        rtt = ms(got["latency"][kind][0])
        out[f"{kind}_rtt_p50"], out[f"{kind}_rtt_p99"] = median(rtt), p99(rtt)
        out[f"{kind}_tput"] = got["throughput"][kind][0]
        if "chain" in got:
            out[f"chain_{kind}"] = 1000.0 * got["chain"][kind][0]["wall_per_link"]
    return out


# --------------------------------------------------------------------------- driver


def pick_pg(arg: str | None, enabled: bool) -> tuple[str | None, str]:
    """The PostgreSQL server to measure on, if any, and a sentence saying why (not)."""
    if not enabled:
        return None, "PostgreSQL store: not measured (--no-pg)"
    url = arg or os.environ.get(PG_ENV)
    where = "--pg" if arg else f"${PG_ENV}" if url else "the local service"
    url = url or LOCAL_PG_URL
    why = anyio.run(pg_ping, url)
    if why is None:
        return url, f"PostgreSQL store: a new database per round on {url} ({where})"
    return None, f"PostgreSQL store: not measured, {url} ({where}) did not answer: {why}"


def run(cfg: Config, systems: list[str], pg: str | None) -> tuple[
        dict[str, dict[str, list[float]]], dict[str, list[str]]]:
    """``cfg.repeats`` rounds, each running every system once (order rotated per round)."""
    figures: dict[str, dict[str, list[float]]] = {s: {} for s in systems}
    errors: dict[str, list[str]] = {s: [] for s in systems}
    for r in range(cfg.repeats):
        order = systems[r % len(systems):] + systems[:r % len(systems)]
        for system in order:
            t = time.monotonic()
            try:
                if system in (comparison.TW, comparison.TW_PG):
                    db = pg if system == comparison.TW_PG else None
                    got = anyio.run(tidewater_round, cfg, db)
                else:
                    got = peer_round(cfg, system)
                errs = []
            except PeerFailed as exc:
                got, errs = {}, [str(exc)]
            except Exception as exc:  # one failed round is reported, the others still run
                got, errs = {}, [f"{type(exc).__name__}: {exc}"]
            for key, value in got.items():
                figures[system].setdefault(key, []).append(value)
            errors[system] += [f"round {r + 1}: {e}" for e in errs]
            print(f"round {r + 1}/{cfg.repeats}: {comparison.LABELS[system]} "
                  f"{time.monotonic() - t:.1f}s" + (f" ({'; '.join(errs)})" if errs else ""),
                  file=sys.stderr, flush=True)
    return figures, errors


def load_line() -> str:
    """The load average and, where the kernel has it, the CPU pressure (the share of time
    some runnable task waited for a CPU): how shared the machine was."""
    line = "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()
        fields = dict(f.split("=") for f in some[1:])
        line += (f"; CPU pressure (some runnable task waiting) {fields['avg10']} % over 10 s, "
                 f"{fields['avg60']} % over 60 s, {fields['avg300']} % over 300 s")
    except (OSError, IndexError, KeyError, ValueError):
        pass
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"a short run: {QUICK.repeats} rounds, -k {QUICK.k}, -n {QUICK.n}, "
                         f"--chain {QUICK.chain}")
    ap.add_argument("--repeats", "-r", type=int, help="rounds (default 3; quick 2)")
    ap.add_argument("-k", type=int, help="tasks per round-trip run (default 200)")
    ap.add_argument("-n", type=int, help="tasks per throughput run (default 5000)")
    ap.add_argument("--chain", type=int, help="tasks per chain (default 200)")
    ap.add_argument("--peer-timeout", type=float,
                    help="seconds per peer child process (default 180; quick 60)")
    ap.add_argument("--pg", metavar="URL",
                    help="PostgreSQL server for the second store (any database on it; a new "
                         f"one is made per round). Default: ${PG_ENV}, else {LOCAL_PG_URL} "
                         "if it answers")
    ap.add_argument("--no-pg", dest="use_pg", action="store_false",
                    help="measure the SQLite store only")
    ap.add_argument("--peers", default=",".join(comparison.PEERS),
                    help="peers to measure, comma-separated (default: all)")
    ap.add_argument("--json", metavar="FILE", help="also write the raw figures to FILE")
    ap.add_argument("--peer-child", choices=comparison.PEERS, help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.peer_child:
        r = peer_child(a.peer_child, Config(**json.loads(a.config)))
        sys.stdout.write(json.dumps(r) + "\n")
        return
    base = QUICK if a.quick else Config()
    cfg = Config(repeats=a.repeats or base.repeats, k=a.k or base.k, n=a.n or base.n,
                 chain=a.chain or base.chain, warmup=base.warmup,
                 peer_timeout=a.peer_timeout or base.peer_timeout)
    print(machine_line())
    load_start = load_line()
    print(f"at the start: {load_start}")
    pg, pg_note = pick_pg(a.pg, a.use_pg)
    print(pg_note)
    systems = [comparison.TW] + ([comparison.TW_PG] if pg else [])
    skipped = []
    for peer in [p for p in a.peers.split(",") if p]:
        if peer not in comparison.PEERS:
            ap.error(f"unknown peer {peer!r} (one of {', '.join(comparison.PEERS)})")
        if peers.available(peer):
            systems.append(peer)
        else:
            skipped.append(f"{peer}: not installed ({peers.INSTALL_HINT[peer]}), skipped")
    for line in skipped:
        print(line)
    t0 = time.monotonic()
    figures, errors = run(cfg, systems, pg)
    wall = time.monotonic() - t0
    header, body = comparison.rows(figures)
    print()
    print(f"{cfg.repeats} rounds interleaved; round trips {cfg.k} tasks one at a time, "
          f"throughput {cfg.n} tasks at once, chains of {cfg.chain}; 2 workers / pilots "
          f"× 1 core each; {wall / 60:.1f} min in all")
    load_end = load_line()
    print(f"at the end: {load_end}")
    print()
    print(comparison.markdown(header, body))
    print()
    print(comparison.note(figures))
    for system, errs in errors.items():
        for e in errs:
            print(f"{comparison.LABELS[system]}: {e}")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "machine": machine_line(), "load": [load_start, load_end],
            "config": asdict(cfg), "pg": pg, "wall_s": wall,
            "skipped": skipped, "figures": figures, "errors": errors,
            "table": {"header": header, "rows": body}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
