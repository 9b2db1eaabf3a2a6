"""Peers measured on the same machine, the same way, for comparison with Tidewater.

* ``ppe``   -- ``concurrent.futures.ProcessPoolExecutor(2)``: no scheduler, no
  durability; the floor.
* ``dask``  -- ``distributed.LocalCluster(n_workers=2, threads_per_worker=1,
  processes=True)`` and a ``distributed.Client``.
* ``parsl`` -- Parsl ``HighThroughputExecutor`` with 2 workers on a
  ``LocalProvider`` (one block), loopback, unencrypted (as Tidewater on
  loopback), no scaling strategy.

Each is measured on two kinds of task: ``noop`` (a Python function that
returns its argument) and ``true`` (a function that runs
``subprocess.run(["/bin/true"])`` inside the worker, the closest match to a
Tidewater ``/bin/true`` command task).

* latency: one task at a time, submit -> result on the caller, ``k`` tasks
  per run, ``repeats`` runs (after a warm-up);
* throughput: ``n`` tasks submitted at once, tasks/s from the first submit to
  the last result, ``repeats`` runs.

Every peer runs in a child process of its own (``python bench/peers.py
--peer NAME --mode MODE --json``) under a time limit, so a hung peer is
killed (with its whole process group) instead of hanging the benchmark, and
one peer's leftovers cannot slow the next.

Run alone: ``.venv/bin/python bench/peers.py`` (all peers, both modes).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import wait as cf_wait
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS = ("ppe", "dask", "parsl")
INSTALL_HINT = {
    "dask": "pip install 'dask[distributed]'",
    "parsl": "pip install parsl",
}
WARMUP = 20


# --------------------------------------------------------------------------- task bodies


def noop(x: int = 0) -> int:
    return x


def run_true(x: int = 0) -> int:
    import subprocess as sp

    return sp.run(["/bin/true"], check=True).returncode + x


# --------------------------------------------------------------------------- backends
# Each backend offers: one(fn) -> round trip of one task (blocking);
# many(fn, n) -> run n tasks at once, block until every result is back.


class PPE:
    def __init__(self) -> None:
        self.ex = ProcessPoolExecutor(2)

    def one(self, fn: Callable[[int], int], i: int) -> None:
        self.ex.submit(fn, i).result()

    def many(self, fn: Callable[[int], int], n: int) -> None:
        futs = [self.ex.submit(fn, i) for i in range(n)]
        cf_wait(futs)
        for f in futs:
            f.result()

    def close(self) -> None:
        self.ex.shutdown(wait=True, cancel_futures=True)


class Dask:
    def __init__(self) -> None:
        import dask
        from distributed import Client, LocalCluster

        dask.config.set({"distributed.worker.daemon": False,
                         "distributed.admin.tick.limit": "10s"})
        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                    dashboard_address=None, silence_logs=40)
        self.client = Client(self.cluster)
        self.client.wait_for_workers(2, timeout=60)

    def one(self, fn: Callable[[int], int], i: int) -> None:
        self.client.submit(fn, i, pure=False).result()

    def many(self, fn: Callable[[int], int], n: int) -> None:
        futs = self.client.map(fn, range(n), pure=False)
        self.client.gather(futs)

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


class Parsl:
    def __init__(self) -> None:
        import logging

        import parsl
        from parsl.config import Config
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider

        # The child runs in a temporary directory its parent removes, even
        # after killing it: keep Parsl's run files there.
        self.run_dir = os.path.join(os.getcwd(), "runinfo")
        cfg = Config(
            executors=[HighThroughputExecutor(
                label="htex", address="127.0.0.1", max_workers_per_node=2,
                cores_per_worker=1, encrypted=False,
                provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
            )],
            run_dir=self.run_dir, strategy="none", initialize_logging=False,
        )
        logging.getLogger("parsl").setLevel(logging.ERROR)
        self.dfk = parsl.load(cfg)
        self.noop = parsl.python_app(noop, executors=["htex"])
        self.run_true = parsl.python_app(run_true, executors=["htex"])

    def _app(self, fn: Callable[[int], int]) -> Any:
        return self.noop if fn is noop else self.run_true

    def one(self, fn: Callable[[int], int], i: int) -> None:
        self._app(fn)(i).result()

    def many(self, fn: Callable[[int], int], n: int) -> None:
        app = self._app(fn)
        futs = [app(i) for i in range(n)]
        for f in futs:
            f.result()

    def close(self) -> None:
        import parsl

        self.dfk.cleanup()
        parsl.clear()


BACKENDS: dict[str, Callable[[], Any]] = {"ppe": PPE, "dask": Dask, "parsl": Parsl}
FUNCS = {"noop": noop, "true": run_true}


def available(peer: str) -> bool:
    if peer == "ppe":
        return True
    mod = {"dask": "distributed", "parsl": "parsl"}[peer]
    return importlib.util.find_spec(mod) is not None


# --------------------------------------------------------------------------- measuring (child)


def measure(peer: str, mode: str, *, k: int, n: int, repeats: int,
            kinds: Sequence[str]) -> dict[str, Any]:
    """Run in the child process. Returns per-run figures for each kind of task."""
    t0 = time.perf_counter()
    b = BACKENDS[peer]()
    startup = time.perf_counter() - t0
    out: dict[str, Any] = {"peer": peer, "mode": mode, "startup_s": startup}
    try:
        out.update(measure_on(b, mode, k=k, n=n, repeats=repeats, kinds=kinds))
    finally:
        b.close()
    return out


def measure_on(b: Any, mode: str, *, k: int, n: int, repeats: int,
               kinds: Sequence[str]) -> dict[str, list[Any]]:
    """kind -> per-run figures on a started backend ``b`` (a warm-up of WARMUP tasks first):
    each run's round trips in seconds (latency), or its tasks/s (throughput)."""
    out: dict[str, list[Any]] = {}
    for kind in kinds:
        fn = FUNCS[kind]
        for i in range(WARMUP):
            b.one(fn, i)
        runs: list[Any] = []
        for _ in range(repeats):
            if mode == "latency":
                rtts = []
                for i in range(k):
                    t = time.perf_counter()
                    b.one(fn, i)
                    rtts.append(time.perf_counter() - t)
                runs.append(rtts)
            else:
                t = time.perf_counter()
                b.many(fn, n)
                runs.append(n / (time.perf_counter() - t))
        out[kind] = runs
    return out


# --------------------------------------------------------------------------- running (parent)


def run_peer(peer: str, mode: str, *, k: int = 200, n: int = 10_000, repeats: int = 3,
             kinds: Sequence[str] = ("noop", "true"), timeout: float = 120.0
             ) -> dict[str, Any]:
    """Measure one peer in a child process bounded by ``timeout`` seconds.

    Returns the figures, or ``{"error": why}`` (not installed, failed, timed out).
    """
    if not available(peer):
        return {"error": f"not installed ({INSTALL_HINT[peer]})"}
    return run_child([str(Path(__file__).resolve()), "--child", "--peer", peer,
                      "--mode", mode, "-k", str(k), "-n", str(n), "--repeats", str(repeats),
                      "--kinds", ",".join(kinds)], timeout)


def run_child(args: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run ``python ARGS`` in a new session and a temporary working directory, bounded by
    ``timeout`` seconds; the JSON object on the last line of its stdout.

    Returns ``{"error": why}`` if it failed or timed out (then it is killed with
    its whole process group). Whatever it left running in its session is killed
    too.
    """
    argv = [sys.executable, *args]
    # Parsl starts its interchange and worker pool as scripts found on PATH:
    # put this interpreter's bin directory (the venv's) first. Its workers
    # unpickle task functions by module name (``peers.noop``, ``chain.stamp_true``)
    # when the child imported them rather than defined them in ``__main__``.
    bindir = str(Path(sys.executable).parent)
    path = os.pathsep.join(x for x in (str(HERE), os.environ.get("PYTHONPATH")) if x)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
           "PYTHONPATH": path}
    with tempfile.TemporaryDirectory(prefix="peer-") as cwd:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, cwd=cwd, env=env,
                             start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            return {"error": f"timed out after {timeout:g}s (killed)"}
        finally:
            # Workers that outlived their parent (same session) go too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
    lines = out.decode(errors="replace").strip().splitlines()
    if p.returncode != 0 or not lines:
        tail = "\n".join(err.decode(errors="replace").strip().splitlines()[-5:])
        return {"error": f"exit code {p.returncode}: {tail}"}
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def _stats() -> Any:
    sys.path.insert(0, str(HERE))
    import common

    return common


def latency_rows(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Rows (peer, task, p50 ms, p99 ms) as median [min-max] over runs."""
    c = _stats()
    rows = []
    for peer, r in results.items():
        if "error" in r:
            continue
        for kind in ("noop", "true"):
            if kind not in r:
                continue
            runs = [c.ms(x) for x in r[kind]]
            rows.append([peer, kind, c.Spread.of([c.median(x) for x in runs]).fmt(3),
                         c.Spread.of([c.p99(x) for x in runs]).fmt(3)])
    return rows


def throughput_rows(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Rows (peer, task, tasks/s) as median [min-max] over runs."""
    c = _stats()
    rows = []
    for peer, r in results.items():
        if "error" in r:
            continue
        for kind in ("noop", "true"):
            if kind in r:
                rows.append([peer, kind, c.Spread.of(r[kind]).fmt(0)])
    return rows


def latency_summary(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """peer -> kind -> (median over runs of p50, of p99), in ms."""
    c = _stats()
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for peer, r in results.items():
        if "error" in r:
            continue
        for kind in ("noop", "true"):
            if kind in r:
                runs = [c.ms(x) for x in r[kind]]
                out.setdefault(peer, {})[kind] = (c.median([c.median(x) for x in runs]),
                                                  c.median([c.p99(x) for x in runs]))
    return out


def throughput_summary(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """peer -> kind -> median tasks/s over runs."""
    c = _stats()
    return {peer: {kind: c.median(r[kind]) for kind in ("noop", "true") if kind in r}
            for peer, r in results.items() if "error" not in r}


def run_all(mode: str, *, peers: Sequence[str] = PEERS, **kw: Any) -> dict[str, dict[str, Any]]:
    results = {}
    for peer in peers:
        t = time.monotonic()
        results[peer] = run_peer(peer, mode, **kw)
        print(f"  {peer}: {time.monotonic() - t:.1f}s", file=sys.stderr, flush=True)
    return results


def print_latency(results: dict[str, dict[str, Any]], k: int) -> None:
    c = _stats()
    print(c.table(f"peers: round trip, one task at a time ({k} per run), ms, "
                  "median [min-max] over runs",
                  ["peer", "task", "p50", "p99"], latency_rows(results)))
    print_errors(results)


def print_throughput(results: dict[str, dict[str, Any]], n: int) -> None:
    c = _stats()
    print(c.table(f"peers: throughput, {n} tasks at once, tasks/s, median [min-max] over runs",
                  ["peer", "task", "tasks/s"], throughput_rows(results)))
    print_errors(results)


def print_errors(results: dict[str, dict[str, Any]]) -> None:
    for peer, r in results.items():
        if "error" in r:
            print(f"{peer}: {r['error']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peer", choices=PEERS, action="append")
    ap.add_argument("--mode", choices=("latency", "throughput", "both"), default="both")
    ap.add_argument("-k", type=int, default=200, help="tasks per latency run")
    ap.add_argument("-n", type=int, default=10_000, help="tasks per throughput run")
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs per peer and task kind (default: 5 for latency, 1 for "
                         "throughput, as latency.py and throughput.py do)")
    ap.add_argument("--kinds", default="noop,true")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per peer and mode")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    kinds = [x for x in a.kinds.split(",") if x]
    if a.child:
        (peer,) = a.peer
        r = measure(peer, a.mode, k=a.k, n=a.n, repeats=a.repeats or 1, kinds=kinds)
        sys.stdout.write(json.dumps(r) + "\n")
        return
    peers = a.peer or list(PEERS)
    c = _stats()
    print(c.machine_line())
    if a.mode in ("latency", "both"):
        res = run_all("latency", peers=peers, k=a.k, repeats=a.repeats or 5, kinds=kinds,
                      timeout=a.timeout)
        print_latency(res, a.k)
        print()
    if a.mode in ("throughput", "both"):
        res = run_all("throughput", peers=peers, n=a.n, repeats=a.repeats or 1, kinds=kinds,
                      timeout=a.timeout)
        print_throughput(res, a.n)


if __name__ == "__main__":
    main()
